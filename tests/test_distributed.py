"""predict and transcribe under torchrun: each rank reads its slice, rank 0 writes the merged output."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from test_pages import ALTO, _page_image
from trocr_tune.config import EvalConfig, load_config
from trocr_tune.data.records import DropLog
from trocr_tune.distributed import Ranks
from trocr_tune.pages import JSONL_NAME, TranscribeOptions, transcribe_pages
from trocr_tune.predict import predict_images

MODEL = "trocr-tune/base-htr"
LINES = Path(str(resources.files("trocr_tune").joinpath("resources/demo-lines/poilus/images")))
TORCHRUN = Path(sys.executable).parent / "torchrun"
needs_torchrun = pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun missing")


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_slices_cover_the_input_in_order(n: int, world: int) -> None:
    items = list(range(n))
    parts = [Ranks(rank, world).part(items) for rank in range(world)]
    assert [x for part in parts for x in part] == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_drop_logs_merge_counts_and_examples() -> None:
    a, b = DropLog(examples_per_reason=2), DropLog(examples_per_reason=2)
    a.drop("missing", "a1")
    b.drop("missing", "b1")
    b.drop("missing", "b2")
    b.drop("broken", "b3", split="test")
    b.note("a remark")
    a.merge(b)
    assert a.by_reason() == {"missing": 3, "broken": 1}
    assert a.examples["missing"] == ["a1", "b1"]
    assert a.split_examples["test"]["broken"] == ["b3"]
    assert a.notes == ["a remark"]


def _torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [str(TORCHRUN), "--nproc_per_node=2", "-m", "trocr_tune", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@needs_torchrun
def test_predict_on_two_gloo_processes_equals_one(tmp_path: Path) -> None:
    shipped = sorted(LINES.glob("*.jpg"))[:7]
    folder = tmp_path / "lines"
    folder.mkdir()
    for image in shipped:
        shutil.copy(image, folder / image.name)
    (folder / "00003.jpg").write_bytes(b"not an image")  # a skip in rank 0's half
    images = sorted(str(p) for p in folder.glob("*.jpg"))
    cfg = EvalConfig(batch_size=1)  # one line per call: the same arithmetic in every process
    alone = predict_images(MODEL, images, cfg, device="cpu")

    out = tmp_path / "readings.csv"
    proc = _torchrun("predict", MODEL, str(folder), "--out", str(out), "--batch-size", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    # Input order, nothing lost or doubled, the same readings as one process.
    assert [r["image"] for r in rows] == alone.images == [p for p in images if not p.endswith("00003.jpg")]
    assert [r["text"] for r in rows] == [p.text for p in alone.predictions]
    assert [float(r["confidence"]) for r in rows] == pytest.approx(
        [p.confidence for p in alone.predictions], abs=1e-5
    )
    assert proc.stderr.count("skipped ") == 1 and "00003.jpg" in proc.stderr
    assert proc.stderr.count("wrote 6 predictions") == 1  # only rank 0 writes and reports


@needs_torchrun
def test_transcribe_on_two_gloo_processes_equals_one(tmp_path: Path) -> None:
    pages = tmp_path / "pages"
    for name in ("p1", "p2", "p3"):
        _page_image(pages / f"{name}.png")
        (pages / f"{name}.xml").write_text(ALTO.format(image=f"{name}.png"), encoding="utf-8")
    (pages / "p4.xml").write_text(ALTO.format(image="lost.png"), encoding="utf-8")
    cfg = load_config(None, [f"data.cache_dir={tmp_path / 'cache'}", "eval.batch_size=1"])
    alone = tmp_path / "alone"
    transcribe_pages(MODEL, [pages], cfg, TranscribeOptions(out=alone, fmt="jsonl"), "cpu")
    # One run (JSONL: the output rank 0 merges); documents are written by each rank through the
    # same code as in one process, from the same slices this run checks.
    out = tmp_path / "two"
    proc = _torchrun(
        "transcribe", MODEL, str(pages), "--out", str(out), "--format", "jsonl", "--batch-size", "1",
        "--device", "cpu", f"data.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One merged report, counting both ranks' pages and the page without its image.
    assert proc.stdout.count("3 pages of 4 ALTO/PAGE files, 9 lines read") == 1, proc.stdout
    assert proc.stdout.count("page image not found") == 1
    two, one = (
        [json.loads(line) for line in (d / JSONL_NAME).read_text().splitlines()] for d in (out, alone)
    )
    # The same lines in the same order with the same texts; confidences up to float noise (the
    # processes run with other thread counts than this one).
    assert [{**r, "confidence": None} for r in two] == [{**r, "confidence": None} for r in one]
    assert [r["confidence"] for r in two] == pytest.approx([r["confidence"] for r in one], abs=1e-5)
    assert [r["page"] for r in two] == sorted(r["page"] for r in two) and len(two) == 9  # input order
