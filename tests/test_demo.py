"""`trocr-tune demo`: the embedded default end to end in a CI budget, Ctrl-C, and resume."""

from __future__ import annotations

import json
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


def test_embedded_recipe_is_configs_demo_and_validates() -> None:
    assert recipe_text() == (REPO / "configs" / "demo.yaml").read_text(encoding="utf-8")
    cfg = load_config(REPO / "configs" / "demo.yaml", ["data.root=x.jsonl"])
    assert cfg.model.preset and cfg.train.ctc_weight > 0 and cfg.train.max_minutes
    assert yaml.safe_load(recipe_text())["data"]["layout"] == "manifest"


@pytest.mark.slow
def test_demo_one_minute_interrupt_resume_and_every_report_file(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--minutes", "1", "--out", str(out), "--lines", "800"]
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
    assert "synthesize" in state["done"] and "train" not in state["done"]
    assert list((out / "run" / "checkpoints").glob("checkpoint-*"))

    # ... and the same command finishes it without re-rendering the data.
    result = run_cli(*args, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[stage 1/6] synthesize" not in result.stderr
    assert "(resuming)" in result.stderr
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    # The last lines printed are the benchmark table and the report path.
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("held-out-font test CER") and str(out / "report.md") in lines[-1]
    assert any(line.startswith("| fp32") for line in lines[-15:])
    bench = json.loads((out / "benchmark" / "benchmark.json").read_text())
    names = [row["variant"] for row in bench["rows"]]
    assert names[0] == "fp32" and "int8-dynamic" in names and any(n.startswith("prune-l1") for n in names)
    report = (out / "report.md").read_text()
    for image in ("run/curves.png", "predictions.png", "benchmark/benchmark.png"):
        assert f"]({image})" in report
    # A one-minute budget has no time to compile: the report says so instead of dropping the row.
    assert "compile-default" not in names and "Not in the table: compile-default: not run" in report
    # The test stage names how it decoded: the language model in the search and the rescoring terms.
    assert "character n-gram model fused into the search (weight 0.25)" in report
    assert "rescored with the encoder's CTC (weight 0.5) and that character n-gram model" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_cer"] >= 0 and summary["seed"] == 0 and summary["train_steps"] > 0
