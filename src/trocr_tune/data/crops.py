"""Crop line/region images out of page images into an on-disk cache.

Each page gets a cache folder keyed by the page image's path, size and mtime and by every box,
polygon and crop setting; its `index.json` is written last, so a complete folder means the
page needs no decoding on the next read (re-reading never re-crops an unchanged page).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import UserError
from .images import ImageProblem, decoded, open_image, to_rgb

OUTSIDE_PAGE = "line box outside the page image"
NOT_FINITE = "line box with NaN or infinite coordinates"
ZERO_SIZE = "line box of zero width or height"
PAGE_IMAGE_UNREADABLE = "page image unreadable"

Point = tuple[float, float]


@dataclass(frozen=True)
class Region:
    """A line (or region) of a page: axis-aligned box (x0, y0, x1, y1) and optional polygon."""

    key: str
    box: tuple[float, float, float, float]
    polygon: tuple[Point, ...] | None = None


@dataclass(frozen=True)
class Crop:
    path: str
    size: tuple[int, int]
    clamped: bool = False  # the box reached past the page and was cut to it


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trocr-tune"


def box_from_polygon(points: Sequence[Point]) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def parse_points(text: str) -> tuple[Point, ...]:
    """'x,y x,y ...' (PAGE) or 'x y x y ...' (ALTO) -> ((x, y), ...)."""
    numbers = [float(v) for v in text.replace(",", " ").split()]
    if len(numbers) % 2:
        raise ValueError(f"odd number of coordinates in {text[:40]!r}")
    return tuple(zip(numbers[0::2], numbers[1::2], strict=True))


class CropCache:
    """Crops regions of page images with padding and an optional polygon mask, cached on disk."""

    VERSION = 2  # bump when the cropping code changes what it writes

    def __init__(self, cache_dir: str | Path | None, padding: int, polygon_mask: bool) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.root = self.root / "crops"
        self.padding = padding
        self.polygon_mask = polygon_mask
        self.pages_cropped = 0
        self.pages_cached = 0

    def _key(self, image: Path, regions: Sequence[Region]) -> str:
        stat = image.stat()
        h = hashlib.sha1()
        h.update(f"{self.VERSION}|{os.path.abspath(image)}|{stat.st_size}|{stat.st_mtime_ns}|".encode())
        h.update(f"{self.padding}|{self.polygon_mask}|".encode())
        for r in regions:
            h.update(f"{r.key}|{r.box}|{r.polygon}\n".encode())
        return h.hexdigest()

    def crops(self, image: Path, regions: Sequence[Region]) -> dict[str, Crop | str]:
        """region key -> Crop, or -> drop reason for regions that cannot be cropped."""
        folder = self.root / (key := self._key(image, regions))[:2] / key
        index = folder / "index.json"
        if index.is_file():
            self.pages_cached += 1
            cached = json.loads(index.read_text(encoding="utf-8"))
            return {
                k: (Crop(str(folder / v[0]), (v[1], v[2]), bool(v[3])) if isinstance(v, list) else v)
                for k, v in cached.items()
            }
        try:
            with open_image(image) as opened:
                decoded(opened)
                page = opened.copy() if opened.mode in ("L", "RGB") else to_rgb(opened)
        except ImageProblem as problem:
            return {r.key: f"{PAGE_IMAGE_UNREADABLE} ({problem.reason})" for r in regions}
        self.pages_cropped += 1
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot write the crop cache {folder}: {exc.strerror} (set data.cache_dir)"
            ) from None
        out: dict[str, Crop | str] = {}
        stored: dict[str, object] = {}
        for i, region in enumerate(regions):
            result = self._crop(page, region)
            if isinstance(result, str):
                out[region.key] = stored[region.key] = result
                continue
            name = f"{i:05d}.png"
            crop, clamped = result
            crop.save(folder / name, compress_level=1)  # speed over size: a cache, not an archive
            out[region.key] = Crop(str(folder / name), crop.size, clamped)
            stored[region.key] = [name, crop.size[0], crop.size[1], clamped]
        tmp = folder / "index.json.tmp"
        tmp.write_text(json.dumps(stored, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, index)
        return out

    def _crop(self, page: Image.Image, region: Region) -> tuple[Image.Image, bool] | str:
        """(crop, whether the box was clamped to the page) or the reason the region is dropped."""
        points = [*region.box, *(v for point in region.polygon or () for v in point)]
        if not all(math.isfinite(v) for v in points):
            return NOT_FINITE
        x0, y0, x1, y1 = region.box
        if x1 <= x0 or y1 <= y0:  # padding would turn it into a crop of blank margin
            return ZERO_SIZE
        clamped = x0 < 0 or y0 < 0 or x1 > page.width or y1 > page.height
        p = self.padding
        left, top = max(0, int(np.floor(x0)) - p), max(0, int(np.floor(y0)) - p)
        right, bottom = (
            min(page.width, int(np.ceil(x1)) + p),
            min(page.height, int(np.ceil(y1)) + p),
        )
        if right - left < 1 or bottom - top < 1:
            return OUTSIDE_PAGE
        crop = page.crop((left, top, right, bottom))
        if self.polygon_mask and region.polygon and len(region.polygon) >= 3:
            mask = Image.new("L", crop.size, 0)
            shifted = [(x - left, y - top) for x, y in region.polygon]
            ImageDraw.Draw(mask).polygon(shifted, fill=255)
            if p:  # keep the padding around the polygon too, as the box crop does
                mask = mask.filter(ImageFilter.MaxFilter(2 * p + 1))
            # Fill outside the polygon with the paper colour (the crop's median), not white,
            # so aged paper does not get an artificial bright frame.
            pixels = np.asarray(crop)
            paper = np.median(pixels.reshape(-1, pixels.shape[-1] if pixels.ndim == 3 else 1), axis=0)
            fill = Image.new(
                crop.mode,
                crop.size,
                tuple(int(v) for v in paper) if pixels.ndim == 3 else int(paper[0]),
            )
            crop = Image.composite(crop, fill, mask)
        return crop, clamped
