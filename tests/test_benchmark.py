"""`trocr-tune benchmark` end to end on a tiny model and a few lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from trocr_tune.config import load_config
from trocr_tune.optimize.run import optimize_model
from trocr_tune.runtime import cpu_has_native_bf16

from conftest import run_cli


def test_benchmark_cli_writes_four_files_with_every_column_filled(
    tiny_run: Path, words: Path, tmp_path: Path
) -> None:
    finetune = load_config(
        None, ["data.layout=manifest", f"data.root={words}", "train.max_steps=4", "train.num_workers=0"]
    )
    optimize_model(str(tiny_run / "model"), "prune-l1", tmp_path / "pruned", load_config(), finetune)
    variants = ["int8-dynamic", "onnx", f"prune-l1={tmp_path / 'pruned'}", "fp16"]
    if cpu_has_native_bf16():
        variants.insert(1, "bf16")
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
    assert len(rows) == len(variants)  # fp16 is skipped on CPU, fp32 added first
    for row in rows:
        for column, value in row.items():
            assert value not in ("", "None", "nan"), (row["variant"], column)
        assert (
            float(row["lines_per_second"]) > 0 and float(row["peak_rss_mb"]) > 0 and float(row["size_mb"]) > 0
        )
    assert float(rows[0]["lines_per_second_ratio"]) == 1.0
    report = json.loads((out / "benchmark.json").read_text())
    assert report["environment"]["timed_runs"] == 2 and report["environment"]["lines"] == 4
    assert report["skipped"] == {"fp16": "runs on cuda, this table is cpu"}
    assert all(len(run["times"]) == 2 and len(run["latency_ms"]) == 2 for run in report["runs"])
    md = (out / "benchmark.md").read_text()
    assert "| fp32 |" in md and "Skipped fp16" in md and "median of 2 timed runs" in md
    assert md in proc.stdout


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
    bad = run_cli(
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
