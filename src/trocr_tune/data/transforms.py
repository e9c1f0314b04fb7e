"""Custom Albumentations transforms for handwriting lines (imported only when augmenting)."""

from __future__ import annotations

from typing import Any

import albumentations as A
import cv2
import numpy as np


class Underline(A.ImageOnlyTransform):
    """Draw a pen line under (or through the bottom of) the text, as in the TrOCR paper."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        rng = self.random_generator
        h, w = img.shape[:2]
        out = img.copy()
        y = int(h * rng.uniform(0.75, 0.95))
        x0, x1 = int(w * rng.uniform(0.0, 0.2)), int(w * rng.uniform(0.8, 1.0))
        ink = int(np.percentile(img, 5))  # the darkest ink already on the line
        thickness = max(1, round(h * rng.uniform(0.02, 0.05)))
        cv2.line(out, (x0, y), (x1, y + int(rng.integers(-2, 3))), (ink, ink, ink), thickness, cv2.LINE_AA)
        return out


class PaperTexture(A.ImageOnlyTransform):
    """Multiply the line by a smooth, low-frequency paper tone (stains, uneven light)."""

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        rng = self.random_generator
        h, w = img.shape[:2]
        coarse = rng.uniform(0.8, 1.0, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
        tone = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
        tint = rng.uniform(0.93, 1.0, size=3).astype(np.float32)
        return np.clip(img.astype(np.float32) * tone * tint, 0, 255).astype(np.uint8)


class RescalePad(A.ImageOnlyTransform):
    """Shrink the line by a random factor and pad it back to its size at a random offset."""

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), p: float = 1.0) -> None:
        super().__init__(p=p)
        self.scale = scale

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        rng = self.random_generator
        h, w = img.shape[:2]
        f = rng.uniform(*self.scale)
        nh, nw = max(1, int(h * f)), max(1, int(w * f))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        paper = np.median(img.reshape(-1, img.shape[-1]), axis=0).astype(np.uint8)
        out = np.empty_like(img)
        out[:] = paper
        top, left = int(rng.integers(0, h - nh + 1)), int(rng.integers(0, w - nw + 1))
        out[top : top + nh, left : left + nw] = small
        return out
