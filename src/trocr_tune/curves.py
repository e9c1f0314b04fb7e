"""Training curves (train/eval loss, eval CER, learning rate) from the Trainer's log history."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_curves(log_history: Sequence[dict[str, Any]], out: Path) -> Path:
    """Write a three-panel PNG; panels without data say so instead of staying blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> tuple[list[float], list[float]]:
        points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
        return [p[0] for p in points], [p[1] for p in points]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = [
        (axes[0], [("loss", "train loss"), ("eval_loss", "eval loss")], "loss"),
        (axes[1], [("eval_cer", "eval CER"), ("eval_wer", "eval WER")], "error rate"),
        (axes[2], [("learning_rate", "learning rate")], "learning rate"),
    ]
    for ax, keys, ylabel in panels:
        drawn = False
        for key, label in keys:
            xs, ys = series(key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=label)
                drawn = True
        if drawn:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
