"""`trocr-tune benchmark` end to end on a tiny model and a few lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trocr_tune.benchmark import BenchmarkResult, Row, verdicts
from trocr_tune.config import load_config
from trocr_tune.optimize.run import optimize_model
from trocr_tune.runtime import cpu_has_native_bf16

from conftest import run_cli, run_main


def test_benchmark_cli_writes_four_files_with_every_column_filled(
    tiny_run: Path, words: Path, tmp_path: Path
) -> None:
    finetune = load_config(
        None, ["data.layout=manifest", f"data.root={words}", "train.max_steps=4", "train.num_workers=0"]
    )
    optimize_model(str(tiny_run / "model"), "prune-l1", tmp_path / "pruned", load_config(), finetune)
    variants = ["int8-dynamic", "onnx", f"prune-l1={tmp_path / 'pruned'}", "fp16", "bf16"]
    out = tmp_path / "bench"
    proc = run_cli(
        "benchmark",
        str(tiny_run / "model"),
        "data.layout=manifest",
        f"data.root={words}",
        "data.split=test",
        "--variants",
        ",".join(variants),
        "--out",
        str(out),
        "--batch-size",
        "2",
        "--runs",
        "2",
        "--latency-lines",
        "2",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for suffix in ("md", "csv", "json", "png"):
        assert (out / f"benchmark.{suffix}").is_file(), suffix
    with (out / "benchmark.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows][:2] == ["fp32", "int8-dynamic"]
    skipped = {"fp16": "runs on cuda, this table is cpu"}
    if not cpu_has_native_bf16():
        skipped["bf16"] = (
            "this CPU has no native bf16 (AVX512-BF16 or AMX), so autocast would emulate it in software"
        )
    assert len(rows) == len(variants) + 1 - len(skipped)  # fp32 first, skipped variants left out
    for row in rows:
        for column, value in row.items():
            assert value not in ("", "None", "nan"), (row["variant"], column)
        assert (
            float(row["lines_per_second"]) > 0 and float(row["peak_rss_mb"]) > 0 and float(row["size_mb"]) > 0
        )
    assert float(rows[0]["lines_per_second_ratio"]) == 1.0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["environment"]["timed_runs"] == 2 and report["environment"]["lines"] == 4
    assert report["skipped"] == skipped
    assert all(len(run["times"]) == 2 and len(run["latency_ms"]) == 2 for run in report["runs"])
    # Where fp32's time goes, measured in its own process: every share is a fraction.
    facts = report["environment"]["baseline_profile"]
    for key in ("encoder_share", "linear_share", "conv_share", "op_share"):
        assert 0 < facts[key] <= 1, (key, facts)
    assert facts["linear_share"] + facts["conv_share"] <= facts["op_share"] + 1e-9
    # One verdict per measured variant: it pays, or it says why not.
    verdicts = {v["variant"]: v for v in report["verdicts"]}
    assert set(verdicts) == {r["variant"] for r in rows[1:]}
    for name, v in verdicts.items():
        assert v["why"].startswith("pays: " if v["pays"] else "does not pay ("), (name, v)
        if not v["pays"] and "slower than 1.3x" in v["why"]:
            assert v["why"].split("slower than 1.3x", 1)[1].startswith(": "), (name, v)  # a reason follows
    assert (
        "int8 replaces only the Linear layers" in verdicts["int8-dynamic"]["why"]
        or verdicts["int8-dynamic"]["pays"]
    )
    # ONNX greedy output is fp32's: every line reads the same.
    onnx = next(r for r in rows if r["variant"] == "onnx")
    assert float(onnx["same_text"]) == 1.0 and float(rows[0]["same_text"]) == 1.0
    md = (out / "benchmark.md").read_text()
    assert "| fp32 |" in md and "Skipped fp16" in md and "median of 2 timed runs" in md
    assert "Does it pay? (>= 1.3x" in md and "Where fp32's time goes: encoder" in md
    # fp32 is timed once more after the variants, so drift in the machine's speed shows.
    recheck = json.loads((out / "benchmark.json").read_text())["environment"]["baseline_recheck"]
    assert recheck["seconds_before"] > 0 and recheck["seconds_after"] > 0
    assert "fp32 timed again after the variants:" in md
    assert md in proc.stdout


def _result(speeds: dict[str, float], cers: dict[str, float], texts: dict[str, list[str]]) -> BenchmarkResult:
    rows = [
        Row(
            name,
            name,
            {"cer": cers[name], "wer": 0.0, "mean_similarity": 0.0, "exact_match": 0.0},
            [10 / speed],
            [1.0],
            0.0,
            1,
            1,
            None,
            {},
            texts[name],
        )
        for name, speed in speeds.items()
    ]
    facts = {
        "encoder_share": 0.5,
        "linear_share": 0.2,
        "conv_share": 0.2,
        "op_share": 0.75,
        "int8_dot": False,
        "native_bf16": False,
    }
    env = {"baseline_profile": facts, "pays_at": 1.3, "parity_cer": 0.002}
    return BenchmarkResult(rows, 10, env, {}, {})


def test_verdicts_pay_only_at_parity_and_otherwise_give_the_variants_reason() -> None:
    same, other = ["a", "b", "c", "d"], ["a", "b", "x", "d"]
    result = _result(
        {"fp32": 1.0, "onnx": 1.6, "int8-dynamic": 0.9, "onnx-int8": 2.0, "prune-l1": 1.0},
        {"fp32": 0.30, "onnx": 0.30, "int8-dynamic": 0.301, "onnx-int8": 0.31, "prune-l1": 0.30},
        {"fp32": same, "onnx": same, "int8-dynamic": other, "onnx-int8": other, "prune-l1": same},
    )
    got = {name: (pays, text) for name, pays, text in verdicts(result)}
    assert got["onnx"] == (True, "pays: 1.60x lines/s, CER +0.0000, 100% of lines read as fp32 reads them")
    pays, text = got["int8-dynamic"]
    # Slow but at parity: the reason is int8's own, computed from the baseline's shares (1 / 0.8 = 1.25).
    assert not pays and "75% of lines read as fp32" in text and "differs" not in text
    assert "Linear layers, 20% of fp32's time" in text and "at most 1.25x" in text and "no VNNI" in text
    # Fast but off parity: it does not pay, and says so.
    pays, text = got["onnx-int8"]
    assert not pays and "its CER differs from fp32's by more than 0.002" in text and "slower" not in text
    assert "dense matrices" in got["prune-l1"][1]
    # With beams the ONNX reason adds that only the decoder steps run in ONNX Runtime.
    from trocr_tune.optimize import VARIANTS

    facts = {"op_share": 0.8, "linear_share": 0.2, "conv_share": 0.1}
    assert "with beams" not in VARIANTS["onnx"].why_not(facts)
    assert "only the decoder steps run in ONNX Runtime" in VARIANTS["onnx"].why_not({**facts, "beams": 4})


def test_a_verdict_that_fp32_timed_again_would_flip_is_not_settled() -> None:
    """fp32 is timed again after the variants; where that time puts a variant on the other side of
    the pay threshold, its verdict says it is not settled."""
    same = ["a", "b"]
    result = _result(
        {"fp32": 1.0, "onnx": 1.6, "openvino": 1.25},
        {"fp32": 0.3, "onnx": 0.3, "openvino": 0.3},
        {"fp32": same, "onnx": same, "openvino": same},
    )
    result.environment["baseline_recheck"] = {"seconds_before": 10.0, "seconds_after": 7.0}
    got = {name: (pays, text) for name, pays, text in verdicts(result)}
    # onnx: 10 / 6.25 = 1.60x, but 7 / 6.25 = 1.12x against fp32 timed again.
    assert got["onnx"][0] and got["onnx"][1].endswith(
        "(not settled: against fp32 timed again after the variants it reads 1.12x; "
        "the machine's speed moved during the run)"
    )
    # openvino is slower than 1.3x either way (1.25x, then 0.88x): settled.
    assert not got["openvino"][0] and "not settled" not in got["openvino"][1]


def test_benchmark_rejects_an_artifact_as_baseline(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    optimize_model(str(tiny_run / "model"), "int8-dynamic", tmp_path / "int8", load_config())
    proc = run_cli(
        "benchmark",
        str(tmp_path / "int8"),
        "data.layout=manifest",
        f"data.root={words}",
        "--out",
        str(tmp_path / "b"),
    )
    assert proc.returncode == 2 and "MODEL must be the fp32 checkpoint" in proc.stderr
    bad = run_main(
        "benchmark",
        str(tiny_run / "model"),
        "data.layout=manifest",
        f"data.root={words}",
        "--variants",
        "turbo",
        "--out",
        str(tmp_path / "b"),
    )
    assert bad.returncode == 2 and "neither a variant" in bad.stderr


def test_verdicts_on_a_gpu_table_say_the_shares_are_not_profiled() -> None:
    result = _result(
        {"fp32": 1.0, "int8-dynamic": 0.9},
        {"fp32": 0.3, "int8-dynamic": 0.3},
        {"fp32": ["a"], "int8-dynamic": ["a"]},
    )
    result.environment["baseline_profile"] = {"encoder_share": 0.4, "int8_dot": False, "native_bf16": True}
    [(name, pays, text)] = verdicts(result)
    assert name == "int8-dynamic" and not pays
    assert text.endswith("slower than 1.3x: operator time shares are profiled on CPU tables only")


def test_generate_is_skipped_with_joint_ctc_decoding(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    """Transformers' generate cannot score CTC prefixes: with eval.ctc_joint the `generate` row is
    left out and the table says why, while fp32 decodes jointly."""
    from trocr_tune.benchmark import Settings, benchmark

    cfg = load_config(
        None,
        ["data.layout=manifest", f"data.root={words}", "data.split=test", "eval.ctc_joint=0.5"],
    )
    table = benchmark(
        str(tiny_run / "model"),
        cfg,
        ["generate"],
        tmp_path / "b",
        Settings(batch_size=4, runs=1, warmup=0, latency_lines=1),
        isolate=False,
    )
    assert [row.variant for row in table.rows] == ["fp32"]
    assert "cannot score CTC prefixes" in table.skipped["generate"]
