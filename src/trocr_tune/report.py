"""The demo report: report.md with the curves, a grid of test predictions and the benchmark."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from .config import Config, EvalConfig


def prediction_grid(predictions_csv: Path, out: Path, count: int = 16, seed: int = 0) -> Path:
    """Test images with ground truth and prediction (green when exact, red otherwise)."""
    import random

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    with predictions_csv.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    cols = 2
    nrows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 1.25 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, picked, strict=False):
        with Image.open(row["image"]) as im:
            ax.imshow(im.convert("RGB"))
        ok = row["prediction"] == row["reference"]
        ax.set_title(
            f"truth: {row['reference']}\npred:  {row['prediction']}",
            fontsize=8,
            loc="left",
            color="darkgreen" if ok else "firebrick",
            family="monospace",
        )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _rescoring_words(ev: EvalConfig) -> str:
    """' with ... rescored with ...': the language model in the search and every term that picks
    among the beams (empty without any)."""
    words = ""
    if ev.lm_fusion:
        words += (
            ", the training transcripts' character n-gram model fused into the search "
            f"(weight {ev.lm_fusion:g})"
        )
    if ev.ctc_joint:
        words += f", the encoder's CTC prefix scores in the search (joint decoding, weight {ev.ctc_joint:g})"
    terms = []
    if ev.ctc_rescore:
        terms.append(f"the encoder's CTC (weight {ev.ctc_rescore:g})")
    if ev.lm_weight:
        terms.append(f"that character n-gram model (weight {ev.lm_weight:g})")
    if not terms or ev.num_beams < 2:
        return words
    extras = [f"length bonus {ev.rescore_length_bonus:g}"] if ev.rescore_length_bonus else []
    extras += [f"views {', '.join(ev.rescore_views)}"] if ev.rescore_views else []
    return words + ", rescored with " + " and ".join(terms) + (f" ({', '.join(extras)})" if extras else "")


def write_demo_report(out: Path, state: Any, cfg: Config) -> dict[str, Any]:
    """Write out/report.md from the finished stages; returns the summary figures."""
    done = state.done
    data, train, test, prune, bench = (
        done.get(k, {}) for k in ("data", "train", "evaluate", "prune-l1", "benchmark")
    )
    real = "hands" in data
    grid = prediction_grid(out / "test" / "predictions.csv", out / "predictions.png", seed=cfg.train.seed)
    m = test.get("metrics", {})
    t = train.get("metrics", {})
    seconds = dict(state.seconds)
    total = sum(seconds.values())
    summary = {
        "test_cer": m.get("cer"),
        "test_wer": m.get("wer"),
        "test_exact_match": m.get("exact_match"),
        "test_lines": test.get("lines"),
        "train_steps": t.get("optimizer_steps"),
        "train_epochs": t.get("epochs"),
        "train_seconds": seconds.get("train"),
        "total_seconds": total,
        "seed": cfg.train.seed,
        "data": "real" if real else "synthetic",
        "table": bench.get("table", "(benchmark not run)"),
    }
    counts = data.get("counts", {})
    nan = float("nan")
    base = test.get("base_metrics")
    if base:
        summary["base_test_cer"] = base.get("cer")
    if real:
        hands = data.get("hands", {})
        intro = (
            f"The shipped base (`{cfg.model.name_or_path}`) fine-tuned on real handwritten lines, on "
            f"this machine's CPU, offline. Seed {cfg.train.seed}; total time {total / 60:.1f} min."
        )
        data_lines = [
            f"- {sum(counts.values())} real lines of French soldiers' wills, 1898-1918 (Testaments de "
            "Poilus, CC-BY 4.0, see `data/README.md`): " + ", ".join(f"{k} {v}" for k, v in counts.items()),
            f"- training hands: {len(hands.get('train', []))}; "
            f"validation hands: {len(hands.get('validation', []))}",
            "- **held-out test hands** (never seen by the base or in training): "
            + ", ".join(hands.get("test", [])),
        ]
    else:
        fonts = data.get("fonts", {})
        intro = (
            f"A compact TrOCR (`{cfg.model.preset}` preset, {cfg.model.image_height}x{cfg.model.image_width} "
            f"`{cfg.model.geometry}` geometry, character tokenizer) trained from scratch on synthetic "
            f"handwriting, on this machine's CPU, offline. Seed {cfg.train.seed}; total time "
            f"{total / 60:.1f} min."
        )
        data_lines = [
            f"- {sum(counts.values())} synthetic lines ({data.get('lines_per_second', 0):.0f} lines/s): "
            + ", ".join(f"{k} {v}" for k, v in counts.items()),
            f"- training fonts: {', '.join(fonts.get('train', []))}",
            f"- **held-out test fonts** (never seen in training): {', '.join(fonts.get('test', []))}",
        ]
    held = "hands" if real else "fonts"
    lines = [
        "# trocr-tune demo report",
        "",
        intro,
        "",
        "## Data",
        "",
        *data_lines,
        "",
        "## Training",
        "",
        f"- {t.get('optimizer_steps')} optimizer steps ({t.get('epochs', 0):.2f} epochs) in "
        f"{seconds.get('train', 0) / 60:.1f} min, {t.get('precision')} precision, "
        f"learning rate {t.get('learning_rate')}, auxiliary CTC weight {cfg.train.ctc_weight}",
        "",
        "![training curves](run/curves.png)",
        "",
        f"## Test (held-out {held})",
        "",
        f"{test.get('lines')} lines, beam search with {cfg.eval.num_beams} beam(s)"
        + _rescoring_words(cfg.eval)
        + ": "
        f"**CER {m.get('cer', nan):.4f}**, WER {m.get('wer', nan):.4f}, "
        f"mean similarity {m.get('mean_similarity', nan):.4f}, exact match {m.get('exact_match', nan):.3f}, "
        f"{m.get('lines_per_second', 0):.0f} lines/s. Full per-line results: `test/predictions.csv`, "
        "worst lines: `test/worst.csv`, character confusions: `test/confusions.csv`.",
        "",
        *(
            [
                "The base before fine-tuning, decoded the same way on the same lines: "
                f"CER {base.get('cer', nan):.4f}, WER {base.get('wer', nan):.4f} (`test-base/`).",
                "",
            ]
            if base
            else []
        ),
        f"![test predictions]({grid.name})",
        "",
        "## Optimized variants (CPU)",
        "",
        f"prune-l1: {prune.get('sparsity', 0):.1%} of the Linear weights zeroed, masks kept through a short "
        f"fine-tune ({prune.get('seconds_per_epoch', 0):.1f} s/epoch).",
        "",
        "The benchmark decodes every variant greedily (1 beam"
        + (", with the CTC prefix scores" if cfg.eval.ctc_joint else "")
        + ") on its share of the test lines, so its CER can differ from the test CER above.",
        "",
        bench.get("table", "(benchmark not run)"),
        # Variants the demo itself left out (e.g. compile-default when its budget ran short).
        *(
            f"\nNot in the table: {label}: {reason}."
            for label, reason in bench.get("skipped", {}).items()
            if f"Skipped {label}:" not in bench.get("table", "")
        ),
        "![accuracy vs speed](benchmark/benchmark.png)",
        "",
        "## Stage times",
        "",
        "| stage | seconds |",
        "|---|---|",
        *(f"| {name} | {secs:.0f} |" for name, secs in seconds.items()),
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
