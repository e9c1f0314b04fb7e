"""`trocr-tune demo`: the embedded default end to end in a CI budget, Ctrl-C, and resume."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from trocr_tune.config import load_config
from trocr_tune.demo import recipe_text

from conftest import run_cli, trocr_tune_bin

REPO = Path(__file__).resolve().parents[1]

REPORT_FILES = [
    "report.md",
    "summary.json",
    "predictions.png",
    "config.yaml",
    "data/manifest.jsonl",
    "data/README.md",
    "run/curves.png",
    "run/metrics.json",
    "run/model/config.json",
    "run/model/model.safetensors",
    "test/metrics.json",
    "test/predictions.csv",
    "variants/prune-l1/config.json",
    "variants/prune-l1/optimize.json",
    "benchmark/benchmark.md",
    "benchmark/benchmark.csv",
    "benchmark/benchmark.json",
    "benchmark/benchmark.png",
]


def test_embedded_recipes_are_the_configs_and_validate() -> None:
    assert recipe_text() == (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8")
    assert recipe_text("synthetic") == (REPO / "configs" / "demo-synthetic.yaml").read_text(encoding="utf-8")
    real = load_config(REPO / "configs" / "demo.yaml", ["data.root=x.jsonl"])
    assert real.model.name_or_path == "trocr-tune/base-htr" and real.model.new_characters == "union"
    synthetic = load_config(REPO / "configs" / "demo-synthetic.yaml", ["data.root=x.jsonl"])
    assert synthetic.model.preset and synthetic.train.ctc_weight > 0 and synthetic.train.max_minutes
    for data in ("real", "synthetic"):
        assert yaml.safe_load(recipe_text(data))["data"]["layout"] == "manifest"


def test_embedded_real_lines_split_by_hand() -> None:
    import tempfile

    from trocr_tune.demo import copy_real_lines

    with tempfile.TemporaryDirectory() as tmp:
        info = copy_real_lines(Path(tmp))
        assert (Path(tmp) / "README.md").is_file()  # licence and attribution travel with the lines
    assert info["counts"] == {"train": 533, "validation": 62, "test": 75}
    hands = info["hands"]
    assert len(hands["test"]) == 2 and not set(hands["test"]) & (
        set(hands["train"]) | set(hands["validation"])
    )


@pytest.mark.slow
def test_demo_one_minute_interrupt_resume_and_every_report_file(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # 24 lines per split keep the CI run short; every stage still runs on real lines.
    args = ["demo", "--minutes", "1", "--out", str(out), "data.limit=24"]
    # Ctrl-C during training leaves a resumable run ...
    proc = subprocess.Popen(
        [trocr_tune_bin(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("[train] step"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen)
    rest, _ = proc.communicate(timeout=300)
    text = "".join(seen) + rest
    assert proc.returncode != 0, text
    assert "run the same command to continue" in text
    state = json.loads((out / "demo-state.json").read_text())
    assert "data" in state["done"] and "train" not in state["done"]
    assert list((out / "run" / "checkpoints").glob("checkpoint-*"))

    # ... and the same command finishes it without re-rendering the data; counted from 12 s ago (as
    # `make demo` counts from its own start), the set-up comes out of the budget and into the report.
    result = run_cli(*args, "--started", str(time.time() - 12), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    took = re.search(
        r"set-up took (0\.\d) min: the demo keeps to the (0\.\d) of 1 minutes left", result.stderr
    )
    assert took and float(took[1]) >= 0.2 and float(took[2]) <= 0.8, result.stderr
    assert "[stage 1/6] data" not in result.stderr
    assert "(resuming)" in result.stderr
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    # The last lines printed are the benchmark table and the report path.
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("held-out-hand test CER") and str(out / "report.md") in lines[-1]
    assert "(the base before fine-tuning: " in lines[-1]
    assert any(line.startswith("| fp32") for line in lines[-40:])
    # Below the table, each variant's verdict: it pays, or why not.
    verdicts = [line for line in lines[-25:] if line.startswith("- ") and "pay" in line]
    assert any(line.startswith("Does it pay?") for line in lines[-25:]) and verdicts, "\n".join(lines[-40:])
    bench = json.loads((out / "benchmark" / "benchmark.json").read_text())
    names = [row["variant"] for row in bench["rows"]]
    assert names[0] == "fp32" and "int8-dynamic" in names and any(n.startswith("prune-l1") for n in names)
    report = (out / "report.md").read_text()
    row = re.search(r"\| set-up \| (\d+) \|", report)
    assert row and 12 <= int(row[1]) < 60, report
    for image in ("run/curves.png", "predictions.png", "benchmark/benchmark.png"):
        assert f"]({image})" in report
    # A one-minute budget has no time to compile: the report says so instead of dropping the row.
    assert "compile-default" not in names and "Not in the table: compile-default: not run" in report
    # The test stage names how it decoded, and the report shows the base on the same held-out hands.
    assert "the encoder's CTC prefix scores in the search (joint decoding, weight 0.7)" in report
    assert "held-out test hands" in report and "The base before fine-tuning" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_cer"] >= 0 and summary["seed"] == 0 and summary["train_steps"] > 0
    assert summary["data"] == "real" and summary["base_test_cer"] >= 0
    assert (out / "test-base" / "predictions.csv").is_file()
