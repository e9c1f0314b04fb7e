"""Self-training on the hand to be read (`train.self_training_on`): which lines, which labels.

After fine-tuning, the model reads lines whose transcriptions it is never given (the dataset's
test split, or a folder of line images), its most confident readings join the training lines as
labels, and training goes on from the fine-tuned model for `train.self_training_minutes`
(train.py runs both trainings). Noisy labels of the new hand still teach the encoder that hand's
strokes (docs/training.md). The self-trained model is kept unless the validation split reads more
than `train.self_training_tolerance` worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import Config
from .data.reader import ReadResult
from .data.records import LineSample
from .decoding.engine import transcribe
from .errors import UserError
from .predict import collect_images, readable_images

if TYPE_CHECKING:
    from .model.loading import ModelBundle

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
