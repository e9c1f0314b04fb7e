"""Lines of real handwritten digits (scikit-learn's 1,797 8x8 images) with pen-drawn separators."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from ..errors import UserError
from .ink import DIGITS_FONT, finish_line, paste_glyph
from .synth_text import group_thousands

# Fixed, not the user's seed: a digit image stays on the same side of the split in every dataset.
_PARTITION_SEED = 1797
_PARTITION = (("train", 0.7), ("validation", 0.1), ("test", 0.2))
DIGIT_KINDS = ("number", "date", "amount")


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise UserError(
            "real-digit lines need scikit-learn: pip install 'trocr-tune[synth]' "
            "(or scikit-learn), or set digits_fraction=0"
        ) from exc
    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target.astype(np.int64)


@lru_cache(maxsize=1)
def digit_partition() -> dict[str, dict[int, np.ndarray]]:
    """split -> digit -> sorted indices into load_digits(); disjoint and stratified by digit."""
    _, labels = _load()
    rng = np.random.default_rng(_PARTITION_SEED)
    parts: dict[str, dict[int, np.ndarray]] = {name: {} for name, _ in _PARTITION}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for i, (name, frac) in enumerate(_PARTITION):
            stop = len(idx) if i == len(_PARTITION) - 1 else start + round(frac * len(idx))
            parts[name][digit] = np.sort(idx[start:stop])
            start = stop
    return parts


def sample_digit_text(rng: np.random.Generator) -> tuple[str, str]:
    """(kind, text) using only digits and the separators / . , - that can be pen-drawn."""
    kind = DIGIT_KINDS[int(rng.integers(len(DIGIT_KINDS)))]
    if kind == "number":
        n = int(np.exp(rng.uniform(0, np.log(10_000_000))))
        sep = "." if rng.random() < 0.5 else ","
        return kind, group_thousands(n, sep) if rng.random() < 0.3 else str(n)
    if kind == "date":
        d, m, y = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1850, 2031))
        sep = "/.-"[int(rng.integers(3))]
        pad = rng.random() < 0.6
        year = f"{y % 100:02d}" if rng.random() < 0.25 else str(y)
        return kind, f"{d:02d}{sep}{m:02d}{sep}{year}" if pad else f"{d}{sep}{m}{sep}{year}"
    units, cents = int(np.exp(rng.uniform(0, np.log(100_000)))), int(rng.integers(100))
    thousands, decimal = (".", ",") if rng.random() < 0.5 else (",", ".")
    grouped = group_thousands(units, thousands) if rng.random() < 0.6 else str(units)
    return kind, f"{grouped}{decimal}{cents:02d}"


def _digit_bitmap(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Upscale one 8x8 digit smoothly, then steepen the edges so it reads as a pen stroke."""
    padded = np.pad(image, 1)  # a blank border keeps the cubic kernel from smearing the edges
    big = cv2.resize(padded, (w * 10 // 8, h * 10 // 8), interpolation=cv2.INTER_CUBIC)
    t = np.clip((big - 0.2) / 0.45, 0, 1)
    return np.rint(t * t * (3 - 2 * t) * 255).astype(np.uint8)


def _line(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], t: int) -> None:
    # shift=4: 1/16-pixel fixed-point end points so short strokes keep their sub-pixel placement.
    a = (round(p0[0] * 16), round(p0[1] * 16))
    b = (round(p1[0] * 16), round(p1[1] * 16))
    cv2.line(canvas, a, b, 255, t, cv2.LINE_AA, shift=4)


def layout_digit_line(
    text: str,
    split: str,
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[int]]:
    """Ink coverage of `text` from `split`'s digit images, and the image indices used."""
    images, _ = _load()
    pool = digit_partition()[split]
    gh = 0.8 * size
    gw = gh * rng.uniform(0.7, 0.95)
    pad = size
    # Width per character: bitmap (1.25 gw) x largest scale (1.2) + gap, with room to spare.
    canvas = np.zeros((int(2 * size + 2 * pad), int(len(text) * gh * 1.8) + 2 * pad), np.uint8)
    baseline = pad + 1.3 * size
    thick = max(1, round(gh * rng.uniform(0.1, 0.18)))
    gap_mean, x = rng.uniform(0.04, 0.18) * gh, float(pad)
    ids: list[int] = []
    for ch in text:
        gap = max(0.0, rng.normal(gap_mean, 0.04 * gh))
        if ch.isdigit():
            idx = int(rng.choice(pool[int(ch)]))
            ids.append(idx)
            scale = min(max(rng.normal(1, 0.07), 0.8), 1.2)
            bmp = _digit_bitmap(images[idx], max(4, round(gh)), max(4, round(gw)))
            cols, rows = np.flatnonzero(bmp.max(axis=0)), np.flatnonzero(bmp.max(axis=1))
            ink_w = (cols[-1] - cols[0] + 1) if cols.size else gw / 2
            top = baseline - (rows[-1] + 1 if rows.size else bmp.shape[0])
            left = x - (cols[0] if cols.size else 0) - (scale - 1) * bmp.shape[1] / 2
            angle = min(max(rng.normal(0, 4), -10), 10)
            paste_glyph(canvas, bmp, left, top + rng.normal(0, 0.04 * gh), angle, scale)
            x += ink_w * scale + gap
        elif ch == "/":
            w = gh * rng.uniform(0.35, 0.55)
            _line(canvas, (x, baseline + 0.05 * gh), (x + w, baseline - 1.05 * gh), thick)
            x += w + gap + thick
        elif ch == "-":
            w, y = gh * rng.uniform(0.3, 0.5), baseline - gh * rng.uniform(0.4, 0.55)
            _line(canvas, (x, y), (x + w, y - rng.normal(0, 0.04) * gh), thick)
            x += w + gap + thick
        elif ch == ".":
            r = thick * 0.5 + 0.5
            _line(canvas, (x + r, baseline - r), (x + r + 0.5, baseline - r - 0.3), thick + 1)
            x += 2 * r + gap + thick
        elif ch == ",":
            _line(canvas, (x + 0.12 * gh, baseline - 0.05 * gh), (x, baseline + 0.25 * gh), thick)
            x += 0.15 * gh + gap + thick
        else:  # a space
            x += 0.35 * gh
    return canvas, ids


def render_digit_line(
    rng: np.random.Generator,
    split: str,
    height: int = 64,
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """(image, text, meta) of one line of real handwritten digits from `split`'s partition."""
    kind, text = sample_digit_text(rng)
    size = max(12, 4 * round(height * rng.uniform(0.8, 1.5) / 4))
    canvas, ids = layout_digit_line(text, split, size, rng)
    meta = {"font": DIGITS_FONT, "kind": f"digits_{kind}", "digit_ids": ",".join(map(str, ids))}
    return finish_line(canvas, size, rng, height), text, meta


def digit_split_of(index: int) -> str:
    """The split whose partition holds load_digits() image `index`."""
    for name, per_digit in digit_partition().items():
        for idx in per_digit.values():
            pos = int(np.searchsorted(idx, index))
            if pos < len(idx) and idx[pos] == index:
                return name
    raise KeyError(index)
