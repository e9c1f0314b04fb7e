"""Export any layout's cleaned, split lines as a compact manifest dataset (grey line images + JSONL)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..config import DataConfig
from ..errors import UserError
from ..files import atomic_open
from .reader import read_dataset
from .records import LineSample

GROUP_KEYS = ("manuscript", "writer", "page")


def save_line_image(src: str, dst: Path, height: int | None, quality: int = 90) -> None:
    """Grey copy of a line image, scaled down to `height` when taller (JPEG when dst ends in .jpg)."""
    with Image.open(src) as im:
        grey = im.convert("L")
        if height is not None and grey.height > height:
            width = max(1, round(grey.width * height / grey.height))
            grey = grey.resize((width, height), Image.Resampling.LANCZOS)
        if dst.suffix.lower() in (".jpg", ".jpeg"):
            grey.save(dst, quality=quality)
        else:
            grey.save(dst)


def export_samples(
    samples: Iterable[LineSample], out_dir: str | Path, height: int | None = 64, image_format: str = "jpg"
) -> dict[str, int]:
    """Write out_dir/images/* and out_dir/manifest.jsonl (image, text, split, id, group keys)."""
    if image_format not in ("jpg", "png"):
        raise UserError(f"image format must be jpg or png, got {image_format!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with atomic_open(out / "manifest.jsonl") as fh:
        for i, sample in enumerate(samples):
            rel = f"images/{i:05d}.{image_format}"
            save_line_image(sample.image, out / rel, height)
            row = {"image": rel, "text": sample.text, "split": sample.split, "id": sample.id}
            row.update({k: sample.meta[k] for k in GROUP_KEYS if sample.meta.get(k)})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            split = sample.split or "unsplit"
            counts[split] = counts.get(split, 0) + 1
    return counts


def export_dataset(
    cfg: DataConfig, out_dir: str | Path, height: int | None = 64, image_format: str = "jpg"
) -> dict[str, int]:
    """Read `cfg`'s dataset (cleaned and split as configured) and export it with export_samples."""
    return export_samples(read_dataset(cfg).samples, out_dir, height, image_format)
