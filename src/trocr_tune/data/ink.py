"""From ink coverage to a line image that looks scanned: glyph compositing, slant, stroke width,
crop, height, paper and ink. Shared by the font lines (synth.py) and the digit lines
(synth_digits.py)."""

from __future__ import annotations

import math

import cv2
import numpy as np

# The `font` of lines drawn from scikit-learn's real handwritten digits.
DIGITS_FONT = "sklearn-digits"


def paste_glyph(
    canvas: np.ndarray,
    bmp: np.ndarray,
    x: float,
    y: float,
    angle: float,
    scale: float,
) -> None:
    """Max-composite `bmp` rotated (degrees) and scaled about its centre, top-left at (x, y)."""
    h, w = bmp.shape
    if h == 0 or w == 0:
        return
    pad = int(0.3 * max(h, w) * max(scale, 1.0)) + 2
    fx, fy = x - math.floor(x), y - math.floor(y)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    # Sub-pixel pen position goes into the warp instead of being lost to rounding.
    m[:, 2] += np.array([pad + fx, pad + fy])
    patch = cv2.warpAffine(bmp, m, (w + 2 * pad, h + 2 * pad), flags=cv2.INTER_LINEAR)
    top, left = math.floor(y) - pad, math.floor(x) - pad
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + patch.shape[0], canvas.shape[0]), min(left + patch.shape[1], canvas.shape[1])
    if y1 > y0 and x1 > x0:
        region = canvas[y0:y1, x0:x1]
        np.maximum(region, patch[y0 - top : y1 - top, x0 - left : x1 - left], out=region)


def _slant_and_tilt(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shear (handwriting slant) and rotate the whole line in one warp sized to fit the result."""
    shear = min(max(rng.normal(0.05, 0.15), -0.35), 0.45)
    tilt = math.radians(min(max(rng.normal(0, 1.0), -3), 3))
    h, w = alpha.shape
    c, s = math.cos(tilt), math.sin(tilt)
    m = np.array([[c, s], [-s, c]]) @ np.array([[1.0, -shear], [0.0, 1.0]])
    corners = m @ np.array([[0, w, 0, w], [0, 0, h, h]], dtype=np.float64)
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    affine = np.hstack([m, -lo[:, None]])
    size = (math.ceil(hi[0] - lo[0]) + 1, math.ceil(hi[1] - lo[1]) + 1)
    return cv2.warpAffine(alpha, affine, size, flags=cv2.INTER_LINEAR)


def _crop(alpha: np.ndarray, rng: np.random.Generator, min_height: float) -> np.ndarray:
    """Tight crop to the ink plus a small random margin (zero-padded beyond the canvas)."""
    x, y, w, h = cv2.boundingRect((alpha > 24).view(np.uint8))
    if w == 0 or h == 0:
        return alpha[:1, :1]
    if h < min_height:  # a short lowercase or '-'-only line must not be blown up to full height
        y, h = int(y + h / 2 - min_height / 2), int(min_height)
    t, b = (int(rng.uniform(0.03, 0.15) * h) for _ in range(2))
    left, right = (int(rng.uniform(0.02, 0.25) * h) for _ in range(2))
    y0, y1, x0, x1 = y - t, y + h + b, x - left, x + w + right
    crop = alpha[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)]
    borders = (max(-y0, 0), max(y1 - alpha.shape[0], 0), max(-x0, 0), max(x1 - alpha.shape[1], 0))
    return cv2.copyMakeBorder(crop, *borders, cv2.BORDER_CONSTANT, value=0)


def to_height(alpha: np.ndarray, height: int) -> np.ndarray:
    h, w = alpha.shape
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if h > height else cv2.INTER_LINEAR
    return cv2.resize(alpha, (width, height), interpolation=interp)


def _paper_and_ink(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Grey paper (tone, gradient, texture), ink colour and opacity, then blur and noise."""
    h, w = alpha.shape
    tone = rng.uniform(175, 252)
    paper = np.full((h, w), tone, np.float32)
    if rng.random() < 0.6:
        angle, amp = rng.uniform(0, 2 * np.pi), rng.uniform(5, 35)
        gx = np.linspace(-0.5, 0.5, w, dtype=np.float32) * (amp * math.cos(angle))
        gy = np.linspace(-0.5, 0.5, h, dtype=np.float32) * (amp * math.sin(angle) * h / max(w, 1))
        paper += gx[None, :] + gy[:, None]
    if rng.random() < 0.7:
        coarse = rng.standard_normal((max(2, h // 8), max(2, w // 8)), dtype=np.float32)
        paper += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(2, 8)
    a = alpha.astype(np.float32) * (rng.uniform(0.7, 1.0) / 255.0)
    if rng.random() < 0.4:  # uneven ink flow along the stroke
        flow = rng.uniform(0.6, 1.0, (max(2, h // 16), max(2, w // 16))).astype(np.float32)
        a *= cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    ink = np.float32(rng.uniform(0, min(110, tone - 100)))  # >= 70 grey levels of contrast
    img: np.ndarray = paper + (ink - paper) * a
    if rng.random() < 0.5:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.1))
    img += rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(0, 8)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def finish_line(
    alpha: np.ndarray,
    size: int,
    rng: np.random.Generator,
    height: int = 64,
) -> np.ndarray:
    """Slant, stroke width, crop, height normalisation, paper and ink: ink coverage -> image."""
    return _paper_and_ink(shape_line(alpha, size, rng, height), rng)


def shape_line(alpha: np.ndarray, size: int, rng: np.random.Generator, height: int) -> np.ndarray:
    """Slant, stroke width, crop and height normalisation of a line's ink coverage."""
    x, y, w, h = cv2.boundingRect((alpha > 0).view(np.uint8))
    m = size // 2  # keep room for the stroke filter but skip the empty canvas in the warp
    alpha = alpha[max(y - m, 0) : y + h + m, max(x - m, 0) : x + w + m]
    alpha = _slant_and_tilt(alpha, rng)
    stroke = rng.choice(4, p=[0.15, 0.45, 0.25, 0.15])
    if stroke == 0 and size >= 48:
        alpha = cv2.erode(alpha, np.ones((2, 2), np.uint8))
    elif stroke >= 2:
        alpha = cv2.dilate(alpha, np.ones((stroke, stroke), np.uint8))
    alpha = _crop(alpha, rng, min_height=0.5 * size)
    return to_height(alpha, height)
