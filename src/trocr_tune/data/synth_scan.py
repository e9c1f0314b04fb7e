"""Scan styles for synthetic lines: what real scanned lines have that clean font renders lack.

Each style is a small recipe of effects drawn on a line's ink coverage before it meets the paper:
spaced block capitals with a printed field label and form rules (name fields on forms), cursive on
ruled or blank letter paper with fragments of the neighbouring lines, historical ink on stained,
low-contrast parchment. Every style ends with scanner noise and JPEG compression. A style only
changes how a line looks; its label is always exactly the text that was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import UserError

# Printed labels at the left of form fields (what is seen on the French/Spanish/English forms).
FIELD_LABELS = (
    "NOM :",
    "PRENOM :",
    "PRÉNOM :",
    "Nom :",
    "Prénom :",
    "NOMBRE:",
    "APELLIDOS:",
    "Name:",
    "SURNAME",
    "DATE :",
    "Fecha:",
)


@dataclass(frozen=True)
class Style:
    """How one scan style draws a line (probabilities and ranges; sampled per line)."""

    upper: float  # chance the text is written in block capitals (the label follows the image)
    tracking: tuple[float, float]  # extra space between letters, in font sizes
    label: float  # chance of a printed field label at the left
    rules: float  # chance of form/ruling lines
    neighbours: float  # chance of fragments of the lines above / below
    paper: tuple[float, float]  # paper grey level
    contrast: tuple[float, float]  # ink darkness below the paper, in grey levels
    stains: float  # chance of stains and show-through (old paper)
    jpeg: tuple[int, int]  # JPEG quality range


STYLES: dict[str, Style] = {
    # Name fields on scanned forms: wide-spaced capitals, a printed label, the field's rules.
    "form": Style(0.9, (0.15, 0.9), 0.5, 0.7, 0.5, (185, 250), (90, 200), 0.05, (30, 85)),
    # Letters and wills: cursive on white or ruled paper, the neighbouring lines' ascenders.
    "letter": Style(0.03, (-0.02, 0.08), 0.0, 0.35, 0.7, (170, 245), (80, 190), 0.2, (40, 92)),
    # Archives: ink on darker, stained parchment with uneven tone and faded strokes.
    "parchment": Style(0.02, (-0.02, 0.1), 0.0, 0.1, 0.7, (120, 215), (45, 140), 0.8, (45, 92)),
}


def parse_styles(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """'form=2,letter=1' (or a mapping) -> {style: weight}; 'plain' is the clean font render."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, weight = part.partition("=")
            try:
                pairs[name.strip()] = float(weight) if weight else 1.0
            except ValueError:
                raise UserError(f"style weight {part!r} is not 'name=number'") from None
        spec = pairs
    valid = ("plain", *STYLES)
    for name, w in spec.items():
        if name not in valid:
            raise UserError(f"unknown scan style {name!r}; valid styles: {', '.join(valid)}")
        if w < 0:
            raise UserError(f"scan style {name!r} has a negative weight")
    if spec and sum(spec.values()) <= 0:
        raise UserError("scan style weights must not all be 0")
    return dict(spec)


def pick_style(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = sorted(weights)
    p = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _stack(top: np.ndarray, body: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """The three parts one above the other, each cut or zero-padded to the body's width."""
    width = body.shape[1]
    parts = []
    for a in (top, body, bottom):
        if a.shape[0]:
            part = np.zeros((a.shape[0], width), np.uint8)
            part[:, : min(width, a.shape[1])] = a[:, :width]
            parts.append(part)
    return np.vstack(parts)


def add_neighbours(
    alpha: np.ndarray, other: Callable[[], np.ndarray], rng: np.random.Generator
) -> np.ndarray:
    """Fragments of the lines above and below (their descenders / ascenders) cut by the crop."""
    h = alpha.shape[0]
    top = np.zeros((0, alpha.shape[1]), np.uint8)
    bottom = np.zeros((0, alpha.shape[1]), np.uint8)
    if rng.random() < 0.7:
        above = other()
        keep = max(1, int(above.shape[0] * rng.uniform(0.1, 0.35)))
        top = _shift(above[-keep:], rng, alpha.shape[1])
    if rng.random() < 0.6:
        below = other()
        keep = max(1, int(below.shape[0] * rng.uniform(0.1, 0.3)))
        bottom = _shift(below[:keep], rng, alpha.shape[1])
    out = _stack(top, alpha, bottom)
    return (
        out
        if out.shape[0] <= 2 * h
        else cv2.resize(out, (alpha.shape[1], 2 * h), interpolation=cv2.INTER_AREA)
    )


def _shift(part: np.ndarray, rng: np.random.Generator, width: int) -> np.ndarray:
    """A neighbour fragment moved sideways by up to a third of the line and cut to `width`."""
    dx = int(rng.uniform(-0.3, 0.3) * width)
    out = np.zeros((part.shape[0], width), np.uint8)
    src = part[:, max(-dx, 0) : max(-dx, 0) + width - max(dx, 0)]
    out[:, max(dx, 0) : max(dx, 0) + src.shape[1]] = src
    return out


def add_label(alpha: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A printed field label (its own coverage) at the left, vertically near the writing's base."""
    h = alpha.shape[0]
    scale = rng.uniform(0.35, 0.6) * h / max(label.shape[0], 1)
    lw, lh = max(1, round(label.shape[1] * scale)), max(1, round(label.shape[0] * scale))
    label = cv2.resize(label, (lw, lh), interpolation=cv2.INTER_AREA)
    gap = int(rng.uniform(0.1, 1.5) * h)
    canvas = np.zeros((h, lw + gap + alpha.shape[1]), np.uint8)
    y = int(rng.uniform(0.35, 1.0) * (h - lh))
    canvas[y : y + lh, :lw] = label
    canvas[:, lw + gap :] = alpha
    return canvas


def add_rules(alpha: np.ndarray, rng: np.random.Generator, dotted: bool) -> np.ndarray:
    """Form or ruling lines: one near the writing's base, sometimes one above, maybe dotted."""
    h, w = alpha.shape
    out = alpha.copy()
    ys = [int(rng.uniform(0.72, 0.98) * (h - 1))]
    if rng.random() < 0.3:
        ys.append(int(rng.uniform(0.0, 0.12) * (h - 1)))
    strength = int(rng.uniform(70, 200))
    thick = 1 if h < 48 or rng.random() < 0.6 else 2
    x0, x1 = int(rng.uniform(0, 0.15) * w), w - int(rng.uniform(0, 0.1) * w)
    for y in ys:
        tilt = int(rng.normal(0, 0.004) * w)
        line = np.zeros_like(out)
        cv2.line(line, (x0, y), (x1, y + tilt), strength, thick)
        if dotted:
            period = max(3, int(rng.uniform(0.08, 0.2) * h))
            line[:, (np.arange(w) // period) % 2 == 1] = 0
        np.maximum(out, line, out=out)
    return out


def paper_and_ink(alpha: np.ndarray, style: Style, rng: np.random.Generator) -> np.ndarray:
    """Paper tone with uneven light and stains, ink of the style's contrast, noise and blur."""
    h, w = alpha.shape
    tone = rng.uniform(*style.paper)
    paper = np.full((h, w), tone, np.float32)
    # Uneven light: a smooth gradient across the line plus a low-frequency field.
    angle, amp = rng.uniform(0, 2 * np.pi), rng.uniform(5, 45)
    gx = np.linspace(-0.5, 0.5, w, dtype=np.float32) * (amp * math.cos(angle))
    gy = np.linspace(-0.5, 0.5, h, dtype=np.float32) * (amp * math.sin(angle))
    paper += gx[None, :] + gy[:, None]
    coarse = rng.standard_normal((max(2, h // 6), max(2, w // 6)), dtype=np.float32)
    paper += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(2, 10)
    if rng.random() < style.stains:
        for _ in range(int(rng.integers(1, 4))):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.3, 2.0) * h
            yy, xx = np.ogrid[:h, :w]
            blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))).astype(np.float32)
            paper -= blob * rng.uniform(10, 45)
    contrast = min(rng.uniform(*style.contrast), tone - 15)
    a = alpha.astype(np.float32) / 255.0
    if rng.random() < 0.5:  # faded or uneven ink along the stroke
        flow = rng.uniform(0.45, 1.0, (max(2, h // 10), max(2, w // 10))).astype(np.float32)
        a *= cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
    img: np.ndarray = paper - contrast * a
    if rng.random() < style.stains:  # show-through: the other side's writing, mirrored and faint
        ghost = cv2.flip(cv2.GaussianBlur(alpha, (0, 0), 1.5), 1).astype(np.float32) / 255.0
        img -= ghost * rng.uniform(8, 30)
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.0))
    img += rng.standard_normal((h, w), dtype=np.float32) * rng.uniform(1, 9)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jpeg(img: np.ndarray, rng: np.random.Generator, quality: tuple[int, int]) -> np.ndarray:
    """Round trip through JPEG at a random quality: the block and ringing artefacts of scans."""
    ok, buf = cv2.imencode(
        ".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(quality[0], quality[1] + 1))]
    )
    if not ok:
        return img
    decoded = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return decoded if decoded is not None else img
