"""Self-training on the hand to be read (`train.self_training_on`).

After fine-tuning, the model reads lines whose transcriptions it is never given (the dataset's
test split, or a folder of line images), its most confident readings join the training lines as
labels, and training goes on from the fine-tuned model for `train.self_training_minutes`. Noisy
labels of the new hand still teach the encoder that hand's strokes (docs/training.md). The
self-trained model is kept unless the validation split reads more than
`train.self_training_tolerance` worse.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import Config
from .data.reader import ReadResult
from .data.records import LineSample
from .decoding.engine import transcribe
from .errors import UserError
from .files import atomic_write_text
from .predict import collect_images, readable_images
from .runtime import is_main_process

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .model.loading import ModelBundle
    from .train import TrainResult

# Splits whose images may be read without their texts: never the ones training learns from or
# picks its checkpoint by.
UNLABELLED_SPLITS = ("test",)
FOLDER = "self-training"


@dataclass
class PseudoLabels:
    """The readings kept as training labels, and what was read to get them."""

    samples: list[LineSample]
    read: int
    unreadable: int
    min_confidence: float | None  # of the least confident reading kept

    def describe(self) -> str:
        floor = (
            f", mean log-probability >= {self.min_confidence:.3f}" if self.min_confidence is not None else ""
        )
        skipped = f"; {self.unreadable} unreadable images skipped" if self.unreadable else ""
        return f"self-training: kept {len(self.samples)} of {self.read} readings as labels{floor}{skipped}"


def unlabelled_images(source: str, result: ReadResult) -> list[str]:
    """The images `train.self_training_on` names: a split of the dataset (its texts unread), or
    line images (a file, a folder searched recursively)."""
    if source in UNLABELLED_SPLITS:
        images = [s.image for s in result.split(source)]
        if not images:
            raise UserError(f"train.self_training_on={source}: the dataset's {source} split is empty")
        return images
    return collect_images([source])


def pseudo_label(bundle: ModelBundle, images: Sequence[str], cfg: Config) -> PseudoLabels:
    """Read `images` as cfg.eval decodes and keep the `train.self_training_keep` most confident
    (mean token log-probability) non-empty readings as training samples."""
    readable, bad = readable_images(images)
    if not readable:
        raise UserError("train.self_training_on: none of its images can be read")
    predictions, _ = transcribe(bundle, readable, cfg.eval, num_workers=0)
    ranked = sorted(
        (pair for pair in zip(readable, predictions, strict=True) if pair[1].text.strip()),
        key=lambda pair: -pair[1].confidence,
    )
    kept = ranked[: round(cfg.train.self_training_keep * len(readable))]
    samples = [
        LineSample(image, p.text.strip(), "train", f"self-training:{image}", f"self-training:{image}")
        for image, p in kept
    ]
    floor = kept[-1][1].confidence if kept else None
    return PseudoLabels(samples, len(readable), len(bad), floor)


def keep_self_trained(before: float | None, after: float | None, tolerance: float) -> bool:
    """Keep the self-trained model unless validation CER rose by more than `tolerance` (without a
    validation split nothing says it reads worse)."""
    return before is None or after is None or after <= before + tolerance


def self_train(
    cfg: Config,
    first: TrainResult,
    bundle: ModelBundle,
    result: ReadResult,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Pseudo-label with the fine-tuned `bundle`, train on, and put the self-trained model in
    `first.model_dir` unless validation rose past the tolerance (the model it replaces goes to
    self-training/start-model)."""
    from .train import train

    assert cfg.train.self_training_on is not None
    labels = pseudo_label(bundle, unlabelled_images(cfg.train.self_training_on, result), cfg)
    print(labels.describe(), flush=True)
    out = first.output_dir / FOLDER
    second_cfg = dataclasses.replace(
        cfg,
        # The fine-tuned model as it was saved: its own geometry, alphabet and layers.
        model=dataclasses.replace(
            cfg.model,
            name_or_path=str(first.model_dir),
            preset=None,
            geometry="processor",
            add_encoder_layers=0,
        ),
        train=dataclasses.replace(
            cfg.train,
            output_dir=str(out),
            max_minutes=cfg.train.self_training_minutes,
            resume=False,
            self_training_on=None,
        ),
    )
    second = train(second_cfg, callbacks, extra_train=labels.samples)
    before = first.metrics.get("eval", {}).get("cer")
    after = second.metrics.get("eval", {}).get("cer")
    summary: dict[str, Any] = {
        "source": cfg.train.self_training_on,
        "read": labels.read,
        "kept": len(labels.samples),
        "unreadable": labels.unreadable,
        "min_confidence": labels.min_confidence,
        "minutes": cfg.train.self_training_minutes,
        "validation_cer_before": before,
        "validation_cer_after": after,
    }
    if second.interrupted is not None:
        # The fine-tuned model stands; the self-training run's checkpoints stay for a look.
        summary["kept_model"] = "before (self-training was interrupted)"
        print("self-training was interrupted: the model from before is kept", file=sys.stderr, flush=True)
        return _finish(first, summary)
    # The validation split is other hands than the one adapted to: its CER guards against a
    # self-training that went wrong, it does not measure the adaptation (docs/training.md).
    tolerance = cfg.train.self_training_tolerance
    better = keep_self_trained(before, after, tolerance)
    summary["tolerance"] = tolerance
    summary["kept_model"] = (
        "self-trained" if better else f"before (validation CER rose by more than {tolerance:g})"
    )
    print(
        f"self-training: validation CER {_cer(before)} -> {_cer(after)}; keeping the "
        f"{'self-trained model' if better else f'model from before (a rise over {tolerance:g})'}",
        flush=True,
    )
    if better and is_main_process() and second.model_dir.is_dir():
        # The run folder's model, report and predictions become the self-trained ones.
        start = out / "start-model"
        if start.exists():
            shutil.rmtree(start)
        shutil.move(str(first.model_dir), str(start))
        shutil.copytree(second.model_dir, first.model_dir)
        for name in ("eval", "predictions.csv"):
            source, target = second.output_dir / name, first.output_dir / name
            if source.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        if "eval" in second.metrics:
            first.metrics["eval"] = second.metrics["eval"]
    return _finish(first, summary)


def _cer(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _finish(first: TrainResult, summary: dict[str, Any]) -> TrainResult:
    first.metrics["self_training"] = summary
    if is_main_process() and first.output_dir.is_dir():
        atomic_write_text(first.output_dir / "metrics.json", json.dumps(first.metrics, indent=2, default=str))
    return first
