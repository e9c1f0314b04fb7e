"""Evaluation's progress reporting for long reads."""

from __future__ import annotations

from pathlib import Path

from trocr_tune.evaluate import evaluate_model


def test_progress_printer_reports_rate_and_eta_at_intervals() -> None:
    """Long reads print `LABEL: done / total lines, rate, ETA` every `every` seconds (the rate from the
    first batch on) and a last line; a short read prints nothing."""
    import io

    from trocr_tune.decoding.engine import ProgressPrinter

    now = [100.0]
    stream = io.StringIO()
    progress = ProgressPrinter("evaluate", stream, every=10.0, clock=lambda: now[0])
    for done in range(32, 2049, 32):  # one batch of 32 every 2 s after a first batch
        progress(done, 2048)
        now[0] += 2.0
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 + (2048 - 32) // 32 // 5  # every 10 s, then the last line
    assert lines[0] == "evaluate: 192 / 2,048 lines, 16.0 lines/s, ETA 2 min"
    assert lines[-1] == "evaluate: 2,048 / 2,048 lines, 16.0 lines/s"
    quiet = io.StringIO()
    short = ProgressPrinter("evaluate", quiet, every=10.0, clock=lambda: now[0])
    short(32, 64)
    now[0] += 1.0
    short(64, 64)
    assert quiet.getvalue() == ""


def test_evaluate_reports_progress_per_batch(tiny_run: Path, words: Path) -> None:
    from trocr_tune.config import load_config

    calls: list[tuple[int, int]] = []
    cfg = load_config(None, ["data.layout=manifest", f"data.root={words}", "eval.batch_size=3"])
    report = evaluate_model(
        str(tiny_run / "model"), cfg, progress=lambda done, total: calls.append((done, total))
    )
    assert report.metrics.n == 4 and calls == [(3, 4), (4, 4)]
