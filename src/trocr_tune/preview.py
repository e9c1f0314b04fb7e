"""`trocr-tune data preview`: a grid of augmented samples as the model sees them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .data.augment import build_policy
from .data.dataset import load_rgb
from .data.reader import read_dataset
from .errors import UserError
from .model.geometry import geometry_image_processor, target_size
from .model.loading import training_config


def preview_processor(cfg: Config) -> Any:
    """The image processor training would use, without loading model weights."""
    height, width = target_size(cfg.model.geometry, cfg.model.image_height, cfg.model.image_width)
    if cfg.model.geometry == "processor" and cfg.model.name_or_path:
        from transformers import TrOCRProcessor

        from .model.loading import resolve_model_name

        try:
            return TrOCRProcessor.from_pretrained(resolve_model_name(cfg.model.name_or_path)).image_processor
        except OSError as exc:
            raise UserError(f"cannot load the processor of {cfg.model.name_or_path!r}: {exc}") from None
    return geometry_image_processor(cfg.model.geometry, height, width)


def to_uint8(pixel_values: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    """Undo normalisation: (3, H, W) floats -> (H, W, 3) uint8."""
    mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    image = (pixel_values * std + mean).clip(0, 1)
    return (image.transpose(1, 2, 0) * 255).round().astype(np.uint8)


def preview(cfg: Config, out: Path, count: int = 16, split: str = "train") -> Path:
    """Draw `count` random samples of `split` after augmentation and geometry, titled by their text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg, _ = training_config(cfg)  # what train would see: the checkpoint's recommended augmentation
    samples = read_dataset(cfg.data).split(split)
    if not samples:
        raise UserError(f"split '{split}' is empty for this dataset")
    picked = random.Random(cfg.train.seed).sample(samples, min(count, len(samples)))
    policy = build_policy(cfg.train.augment, cfg.train.seed)
    processor = preview_processor(cfg)
    cols = 2 if len(picked) > 1 else 1
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(8 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, sample in zip(axes.flat, picked, strict=False):
        image = load_rgb(sample.image)
        if policy is not None:
            image = policy(image=image)["image"]
        pixels = processor(images=image, return_tensors="np")["pixel_values"][0]
        ax.imshow(to_uint8(pixels, processor.image_mean, processor.image_std))
        ax.set_title(sample.text, fontsize=9, loc="left")
    fig.suptitle(f"{split}: augment={cfg.train.augment}, geometry={cfg.model.geometry}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
