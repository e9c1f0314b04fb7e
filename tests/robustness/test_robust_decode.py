"""Issue 18, evaluate and predict: every line not scored is reported, bad images are skipped, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trocr_tune.config import EvalConfig
from trocr_tune.data.records import LineSample
from trocr_tune.evaluate import evaluate_bundle
from trocr_tune.model.loading import load_bundle

from builders import build_char_checkpoint, png_claiming_size, truncated_image
from conftest import line_image, run_main

LETTERS = "abcdefghijklmnopqrstuvwxyz "


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny preset (64 decoder positions) whose tokenizer knows a-z and space."""
    return build_char_checkpoint(tmp_path_factory.mktemp("ckpt") / "model", [LETTERS], height=16, width=64)


def manifest_with_a_truncated_image(root: Path, missing: bool = False) -> Path:
    """A manifest of 3 readable test lines, (with `missing`) one whose image is gone, and one whose
    image is truncated: its header reads fine, so only decoding finds it."""
    rows = []
    for i in range(3):
        line_image(root / f"{i}.png", "abc", size=(48, 16))
        rows.append({"image": f"{i}.png", "text": "abc", "split": "test"})
    if missing:
        rows.append({"image": "gone.png", "text": "missing", "split": "test"})
    truncated_image(root / "cut.png")
    rows.append({"image": "cut.png", "text": "cut", "split": "test"})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return root


def test_row04_evaluate_reports_every_line_it_could_not_score(checkpoint: Path, tmp_path: Path) -> None:
    root = manifest_with_a_truncated_image(tmp_path / "data", missing=True)
    report = tmp_path / "report"
    proc = run_main(
        "evaluate", str(checkpoint), "data.layout=manifest", f"data.root={root}", "--out", str(report)
    )
    assert proc.returncode == 0, proc.stderr
    assert "3 lines" in proc.stdout and "not scored: 2 lines of the split" in proc.stdout
    assert "image file missing" in proc.stdout and "truncated image file" in proc.stdout
    metrics = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["n"] == 3 and metrics["unscored"] == 2
    assert metrics["unscored_by_reason"] == {"image file missing": 1, "truncated image file": 1}


def test_row08_references_longer_than_the_decoder_are_capped_and_reported(
    checkpoint: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(checkpoint)
    assert bundle.model.config.decoder.max_position_embeddings == 64
    long_text = ("abcdefghij " * 9).strip()  # 98 characters: over the 64 positions
    image = line_image(tmp_path / "long.png", "long", size=(120, 16))
    short = line_image(tmp_path / "short.png", "short", size=(48, 16))
    samples = [
        LineSample(str(image), long_text, "test", "long", "long"),
        LineSample(str(short), "abc", "test", "short", "short"),
    ]
    report = evaluate_bundle(bundle, samples, EvalConfig(batch_size=2))  # was IndexError
    assert report.metrics.n == 2
    assert report.notes == [
        "1 references are longer than the model can emit (62 tokens): their predictions stop there"
    ]
    assert report.summary()["notes"] == report.notes


def test_row11_predict_skips_bad_images_and_answers_for_the_rest(checkpoint: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    good = line_image(folder / "good.png", "abc", size=(48, 16))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image", encoding="utf-8")
    truncated_image(folder / "cut.png")
    png_claiming_size(folder / "bomb.png", 20000, 20000)
    line_image(folder / "dot.png", "", size=(1, 1))
    line_image(folder / "flat.png", "", size=(60, 3))
    proc = run_main("predict", str(checkpoint), str(folder))
    assert proc.returncode == 0, proc.stderr
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == [str(good)]
    reasons = {
        "empty.png": "unreadable or corrupt image",
        "text.png": "unreadable or corrupt image",
        "cut.png": "truncated image file",
        "bomb.png": "decompression-bomb",
        "dot.png": "smaller than 4 px",
        "flat.png": "smaller than 4 px",
    }
    for name, reason in reasons.items():
        line = next(x for x in proc.stderr.splitlines() if x.startswith(f"skipped {folder / name}:"))
        assert reason in line, line
    assert "1 predictions; 6 images skipped" in proc.stderr and "Traceback" not in proc.stderr
    written = tmp_path / "out.csv"
    proc = run_main("predict", str(checkpoint), str(folder), "--out", str(written))
    assert proc.returncode == 0 and "wrote 1 predictions" in proc.stderr and "6 images skipped" in proc.stderr
    assert written.read_text(encoding="utf-8").splitlines()[1].startswith(str(good))
    good.unlink()
    proc = run_main("predict", str(checkpoint), str(folder))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "error: none of the 6 images is readable" in proc.stderr


def test_row19_evaluate_notes_references_the_tokenizer_cannot_encode(
    checkpoint: Path, tmp_path: Path
) -> None:
    image = line_image(tmp_path / "l.png", "x", size=(48, 16))
    samples = [LineSample(str(image), "ABC é", "test", "a", "a")]
    report = evaluate_bundle(load_bundle(checkpoint), samples, EvalConfig())
    assert len(report.notes) == 1
    note = report.notes[0]
    assert note.startswith("the tokenizer cannot encode 4 characters in 1/1 labels: ")
    assert all(repr(c) in note for c in "ABCé") and note.endswith("they always count as errors")


def test_row06_predict_on_a_manifest_reports_rows_outside_its_folder(
    checkpoint: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    inside = line_image(root / "in.png", "abc", size=(48, 16))
    line_image(tmp_path / "out.png", "abc", size=(48, 16))
    rows = [{"image": "in.png", "text": "a"}, {"image": "../out.png", "text": "b"}]
    (root / "lines.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    proc = run_main("predict", str(checkpoint), str(root / "lines.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == [str(inside)]
    assert "rows skipped: 1 image path outside the dataset folder" in proc.stderr
    assert "lines.jsonl:2" in proc.stderr


def test_row09_benchmark_leaves_out_lines_whose_images_do_not_decode(
    checkpoint: Path, tmp_path: Path
) -> None:
    from trocr_tune.benchmark import Settings, benchmark
    from trocr_tune.config import load_config

    root = manifest_with_a_truncated_image(tmp_path / "data")
    cfg = load_config(None, ["data.layout=manifest", f"data.root={root}", "data.split=test"])
    settings = Settings(batch_size=2, runs=1, latency_lines=1, device="cpu")
    result = benchmark(str(checkpoint), cfg, [], tmp_path / "bench", settings, isolate=False)
    assert result.n == 3
    assert list(result.environment["left_out"]) == [str(root / "cut.png")]
    md = (tmp_path / "bench" / "benchmark.md").read_text()
    assert "1 lines of the split left out: their images do not decode" in md and "truncated image file" in md
