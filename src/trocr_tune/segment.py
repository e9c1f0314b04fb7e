"""Text lines of a bare page scan, for pages that no segmenter has cut into lines.

A classical projection-profile segmenter (no model, no download): the page's light is flattened,
ink is thresholded, ruled and border lines are removed, the page is split into text columns at
gutters where the ink thins out, and in each column the dominant skew is found and the ink's row profile is
cut into lines at its valleys. Each line keeps the parallelogram of its band, cut at wide blank
gaps, as polygon; the lines are then put in reading order (`reading_order`). Measured against
the shared pages' hand-drawn lines in docs/transcribe.md.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from lxml import etree
from PIL import Image

from . import __version__

Point = tuple[float, float]

WORK_SIZE = 1600  # longest side (px) the page is analysed at; lines are mapped back
SKEW_DEGREES = 4.0  # skew searched in [-SKEW, +SKEW] per column
SKEW_STEP = 0.25
RULE_MIN = 100  # px at WORK_SIZE: the shortest ruled line, the tallest letter kept on a short image
GUTTER_SMOOTH = 0.5  # the x profile is smoothed over this many line pitches (sigma)
GUTTER_WIDTH = 0.5  # a gutter is at least this many line pitches wide ...
GUTTER_INK = 0.35  # a column gap holds under this share of a text column's ink (x profile)
PEAK_DISTANCE = 0.55  # two line peaks are at least this many line pitches apart
VALLEY_DEPTH = 0.9  # ... and the profile between them falls under this share of the lower peak
FLAT_HEIGHT = 0.18  # ink lower than this many line pitches ...
FLAT_WIDTH = 1.0  # ... and wider than this many is a stroke, not writing (a will's closing dash)
GAP_PITCHES = 1.5  # a blank wider than this many line pitches splits a line (margin notes, fields)
ONE_LINE = 4.0  # ink rows within this many heights of its writing, with no repeat: an image of one line


@dataclass(frozen=True)
class SegmentedLine:
    """A found line: polygon (page pixels), its box (x0, y0, x1, y1) and baseline."""

    polygon: tuple[Point, ...]
    box: tuple[float, float, float, float]
    baseline: tuple[Point, Point]
    column: int = 0  # text column, left to right


def _ink(gray: np.ndarray) -> np.ndarray:
    """Ink mask (bool) with the light flattened: the page divided by its blurred background."""
    k = max(15, (min(gray.shape) // 40) | 1)
    background = cv2.morphologyEx(gray, cv2.MORPH_CLOSE, np.ones((k, k), np.uint8))
    background = cv2.GaussianBlur(background, (0, 0), k / 2)
    flat = np.clip(gray.astype(np.float32) / np.maximum(background, 1) * 255, 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(flat, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    # Otsu on a near-white page can settle in the paper's noise: ink is clearly darker than paper.
    mask = flat < min(threshold, 200)
    return mask


def _remove_rules(mask: np.ndarray) -> np.ndarray:
    """Ruled lines, form lines and page borders: long thin horizontal or vertical runs."""
    h, w = mask.shape
    m = mask.astype(np.uint8)
    # Longer than any pen stroke of a letter, also on a short image (a snippet of a few lines).
    horizontal = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((1, max(RULE_MIN, w // 12)), np.uint8))
    vertical = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((max(RULE_MIN, h // 12), 1), np.uint8))
    rules = cv2.dilate(np.maximum(horizontal, vertical), np.ones((3, 3), np.uint8))
    return mask & ~rules.astype(bool)


def _writing(mask: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """The ink that is writing, the line pitch measured on it, and whether it is a single line.

    Dropped, in one pass over the connected components: specks, blobs far larger than writing
    (stamps, bleed, dark page edges), ink touching the image's edge; then, once the pitch is
    known, tall thin strokes that no single line holds (vertical writing in the margin, pen
    lines down the page) and long flat ones that are no letter (the dash that closes a line
    against additions, an underline, a flourish under a title). A line image (a crop, a one-line
    snippet) has no repeat in its row profile: its pitch is the line's own height."""
    h, w = mask.shape
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    area, height, width = (
        stats[:, cv2.CC_STAT_AREA],
        stats[:, cv2.CC_STAT_HEIGHT],
        stats[:, cv2.CC_STAT_WIDTH],
    )
    fill = area / np.maximum(height * width, 1)
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    # Ink touching the image's edge is the scan's border or the next page, not writing.
    edge = (left <= 1) | (top <= 1) | (left + width >= w - 1) | (top + height >= h - 1)
    small = area >= max(4, (h * w) // 400_000)
    keep = small & (height < max(h * 0.15, RULE_MIN)) & ~((fill > 0.6) & (area > 400)) & ~edge
    keep[0] = False
    profile = keep[labels].sum(axis=1).astype(np.float32)
    pitch, repeats = _line_pitch(profile)
    one_line = False
    if not repeats and keep.any():
        # Half the writing's ink is in components at most this high (words in cursive, letters in print).
        order = np.argsort(height[keep])
        mass = np.cumsum(area[keep][order])
        writing = float(height[keep][order][np.searchsorted(mass, mass[-1] / 2)])
        extent = _line_height(profile)
        if extent <= ONE_LINE * writing:
            pitch, one_line = extent, True
    keep &= ~((height > 1.2 * pitch) & (height > 1.5 * width))
    keep &= ~((height < FLAT_HEIGHT * pitch) & (width > FLAT_WIDTH * pitch))
    return keep[labels], pitch, one_line


def _smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / max(sigma, 0.5)) ** 2)
    return np.convolve(values, kernel / kernel.sum(), mode="same")


def _line_pitch(profile: np.ndarray, lo: int = 12, hi: int = 200) -> tuple[int, bool]:
    """Distance between text lines: the first strong peak of the row profile's autocorrelation;
    and whether the profile repeats at all (a guess of `lo` or `2 lo` where it does not)."""
    p = profile - profile.mean()
    if len(p) < 2 * lo or not p.any():
        return lo * 2, False
    corr = np.correlate(p, p, mode="full")[len(p) - 1 :]
    corr = corr / max(corr[0], 1e-9)
    hi = min(hi, len(p) // 2)
    if hi <= lo:
        return lo * 2, False
    window = corr[lo:hi]
    peaks = [
        i for i in range(1, len(window) - 1) if window[i] >= window[i - 1] and window[i] >= window[i + 1]
    ]
    if not peaks:
        first = int(np.argmax(window))
        return lo + first, first > 0
    best = max(window[i] for i in peaks)
    if best <= 0:
        return lo * 2, False
    first = next(i for i in peaks if window[i] >= 0.6 * best)
    return lo + first, True


def _line_height(profile: np.ndarray) -> int:
    """Rows holding the ink of one line, its faintest 2% at either end left out."""
    mass = np.cumsum(profile)
    top, bottom = np.searchsorted(mass, [0.02 * mass[-1], 0.98 * mass[-1]])
    return int(bottom - top) + 1


def _columns(mask: np.ndarray, pitch: int) -> list[tuple[int, int]]:
    """The page cut into text columns at gutters: stretches at least GUTTER_WIDTH pitches wide where
    the ink is under GUTTER_INK of a text column's (a margin note there stays its own column)."""
    cols = _smooth(mask.sum(axis=0).astype(np.float32), pitch * GUTTER_SMOOTH)
    inked = cols[cols > 0]
    if not len(inked):
        return [(0, mask.shape[1])]
    low = cols < GUTTER_INK * float(np.percentile(inked, 90))
    cuts, start = [], None
    for x, blank in enumerate(np.append(low, False)):
        if blank and start is None:
            start = x
        elif not blank and start is not None:
            inner = start > 0 and x < len(cols)  # a gutter between columns, not the page's margin
            if inner and x - start >= pitch * GUTTER_WIDTH:
                cuts.append(start + int(np.argmin(cols[start:x])))
            start = None
    edges = [0, *cuts, mask.shape[1]]
    return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def _skew(ys: np.ndarray, xs: np.ndarray, height: int) -> float:
    """Angle (radians) whose sheared row profile is sharpest (sum of squares)."""
    best, best_score = 0.0, -1.0
    for degrees in np.arange(-SKEW_DEGREES, SKEW_DEGREES + 1e-9, SKEW_STEP):
        t = math.tan(math.radians(degrees))
        rows = np.round(ys - xs * t).astype(np.int64)
        rows = rows[(rows >= 0) & (rows < height)]
        hist = np.bincount(rows, minlength=height).astype(np.float64)
        score = float((hist**2).sum())
        if score > best_score:
            best, best_score = math.atan(t), score
    return best


def _bands(profile: np.ndarray, pitch: int) -> list[tuple[int, int, int]]:
    """(top, peak, bottom) rows of each text line in a sheared row profile."""
    smooth = _smooth(profile, max(1.0, pitch / 6))
    if smooth.max() <= 0:
        return []
    floor = smooth.max() * 0.08
    peaks: list[int] = []
    near = max(2, int(pitch * PEAK_DISTANCE))
    for y in range(1, len(smooth) - 1):
        if smooth[y] < floor or smooth[y] < smooth[y - 1] or smooth[y] <= smooth[y + 1]:
            continue
        if peaks:
            last = peaks[-1]
            valley = float(smooth[last:y].min())
            # One line, not two: too close, or no real valley between the two humps.
            if y - last < near or valley > VALLEY_DEPTH * min(smooth[last], smooth[y]):
                if smooth[y] > smooth[last]:
                    peaks[-1] = y
                continue
        peaks.append(y)
    bands = []
    for i, peak in enumerate(peaks):
        top = peaks[i - 1] + int(np.argmin(smooth[peaks[i - 1] : peak])) if i else max(0, peak - pitch)
        bottom = (
            peak + int(np.argmin(smooth[peak : peaks[i + 1]]))
            if i + 1 < len(peaks)
            else min(len(smooth) - 1, peak + pitch)
        )
        # Trim the band's blank margin where it is far from the neighbour line.
        limit = smooth[peak] * 0.05
        while top < peak and smooth[top] < limit:
            top += 1
        while bottom > peak and smooth[bottom] < limit:
            bottom -= 1
        bands.append((top, peak, bottom))
    return bands


def _runs(inked: np.ndarray, gap: int) -> list[tuple[int, int]]:
    """Inked x ranges of a line, split at blank gaps wider than `gap`."""
    xs = np.flatnonzero(inked)
    if not len(xs):
        return []
    splits = np.flatnonzero(np.diff(xs) > gap)
    starts = np.concatenate(([xs[0]], xs[splits + 1]))
    ends = np.concatenate((xs[splits], [xs[-1]])) + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))


def segment_page(image: Image.Image) -> list[SegmentedLine]:
    """Text lines of a page image in reading order (columns left to right, lines top to bottom)."""
    gray_full = np.asarray(image.convert("L"))
    scale = min(1.0, WORK_SIZE / max(gray_full.shape))
    gray = (
        cv2.resize(gray_full, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if scale < 1
        else gray_full
    )
    mask, pitch, one_line = _writing(_remove_rules(_ink(gray)))
    h = mask.shape[0]
    lines: list[SegmentedLine] = []
    # An image of one line has word gaps, not gutters.
    columns = [(0, mask.shape[1])] if one_line else _columns(mask, pitch)
    for index, (x0, x1) in enumerate(columns):
        column = mask[:, x0:x1]
        ys, xs = np.nonzero(column)
        if len(ys) < 20:
            continue
        angle = _skew(ys.astype(np.float64), xs.astype(np.float64), h)
        t = math.tan(angle)
        rows = np.round(ys - xs * t).astype(np.int64)
        offset = int(max(0, -rows.min()))
        rows += offset
        profile = np.bincount(rows, minlength=h + offset + 1).astype(np.float32)
        col_pitch = pitch if one_line else _line_pitch(profile)[0]
        for top, _peak, bottom in _bands(profile, col_pitch):
            inside = (rows >= top) & (rows <= bottom)
            if inside.sum() < col_pitch:  # a few specks, not writing
                continue
            inked = np.zeros(x1 - x0, bool)
            inked[xs[inside]] = True
            # A line image is read whole, as `predict` reads it.
            gap = x1 - x0 if one_line else int(col_pitch * GAP_PITCHES)
            for a, b in _runs(inked, gap=gap):
                if b - a < col_pitch * 0.6:
                    continue
                lines.append(
                    _line(a + x0, b + x0, top - offset, bottom - offset, t, x0, scale, gray_full.shape, index)
                )
    return [lines[i] for i in reading_order([line.box for line in lines])]


def reading_order(boxes: Sequence[tuple[float, float, float, float]]) -> list[int]:
    """Indices of line boxes in reading order: Breuel's partial order (as in OCRopus and kraken).

    A line comes before another below it that it overlaps horizontally, and before one wholly to
    its right unless a third line spans the gap between them at their height (a heading across
    two columns); the order is completed top-down, keeping the given order where it is free. So
    two columns, or a main text and its gloss, are read one after the other even where no gutter
    split the page."""
    n = len(boxes)
    if n < 2:
        return list(range(n))
    b = np.asarray(boxes, dtype=np.float64)
    x0, y0, x1, y1 = (b[:, k] for k in range(4))
    overlap = (x0[:, None] < x1[None, :]) & (x1[:, None] > x0[None, :])
    left_of = x1[:, None] < x0[None, :]
    # separated[u, v]: some w meets the height span of u and v and reaches across the gap from u
    # to v; computed a block of u at a time so that a page of many lines stays in memory.
    separated = np.zeros((n, n), bool)
    step = max(1, 4_000_000 // (n * n))
    for u in range(0, n, step):
        rows = slice(u, u + step)
        top = np.minimum(y0[rows, None], y0[None, :])
        bottom = np.maximum(y1[rows, None], y1[None, :])
        meets = (y1[:, None, None] >= top[None]) & (y0[:, None, None] <= bottom[None])
        spans = (x0[:, None, None] < x1[None, rows, None]) & (x1[:, None, None] > x0[None, None, :])
        separated[rows] = (meets & spans).any(axis=0)
    before = (overlap & (y0[:, None] < y0[None, :])) | (~overlap & left_of & ~separated)
    np.fill_diagonal(before, False)
    indegree = before.sum(axis=0)
    ready = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(ready)
    done = np.zeros(n, bool)
    order: list[int] = []
    while len(order) < n:
        if not ready:  # a cycle (odd geometry): take the earliest line left
            ready = [int(np.flatnonzero(~done)[0])]
        i = heapq.heappop(ready)
        if done[i]:
            continue
        done[i] = True
        order.append(i)
        for j in np.flatnonzero(before[i] & ~done):
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, int(j))
    return order


def _line(
    a: int,
    b: int,
    top: int,
    bottom: int,
    t: float,
    x0: int,
    scale: float,
    shape: tuple[int, ...],
    column: int,
) -> SegmentedLine:
    """The band [top, bottom] (sheared rows) between columns a and b, in page pixels."""
    height, width = shape[0], shape[1]

    def point(x: float, row: float) -> Point:
        y = row + (x - x0) * t
        return (min(max(x / scale, 0.0), width - 1.0), min(max(y / scale, 0.0), height - 1.0))

    polygon = (point(a, top), point(b, top), point(b, bottom), point(a, bottom))
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    base = top + 0.8 * (bottom - top)
    box = (min(xs), min(ys), max(xs), max(ys))
    return SegmentedLine(polygon, box, (point(a, base), point(b, base)), column)


def _points(points: Sequence[Point]) -> str:
    return " ".join(f"{round(x)} {round(y)}" for x, y in points)


def alto_for(image_name: str, size: tuple[int, int], lines: Sequence[SegmentedLine]) -> bytes:
    """An ALTO v4 document of the found lines (a TextBlock per column, empty Strings), naming
    the page image `image_name` as eScriptorium exports do."""
    ns = "http://www.loc.gov/standards/alto/ns-v4#"
    root = etree.Element(f"{{{ns}}}alto", nsmap={None: ns})

    def sub(parent: Any, name: str, **attributes: str) -> Any:
        return etree.SubElement(parent, f"{{{ns}}}{name}", {k: v for k, v in attributes.items()})

    description = sub(root, "Description")
    sub(description, "MeasurementUnit").text = "pixel"
    sub(sub(description, "sourceImageInformation"), "fileName").text = image_name
    step = sub(sub(description, "OCRProcessing", ID="OCR_0"), "ocrProcessingStep")
    software = sub(step, "processingSoftware")
    sub(software, "softwareName").text = "trocr-tune"
    sub(software, "softwareVersion").text = __version__
    width, height = size
    page = sub(
        sub(root, "Layout"), "Page", ID="page_1", PHYSICAL_IMG_NR="1", WIDTH=str(width), HEIGHT=str(height)
    )
    space = sub(page, "PrintSpace", HPOS="0", VPOS="0", WIDTH=str(width), HEIGHT=str(height))
    columns: dict[int, list[SegmentedLine]] = {}
    for line in lines:
        columns.setdefault(line.column, []).append(line)
    number = 0
    for column, members in sorted(columns.items()):
        x0 = min(ln.box[0] for ln in members)
        y0 = min(ln.box[1] for ln in members)
        x1 = max(ln.box[2] for ln in members)
        y1 = max(ln.box[3] for ln in members)
        block = sub(space, "TextBlock", ID=f"block_{column + 1}", **_box(x0, y0, x1, y1))
        for line in members:
            number += 1
            element = sub(
                block, "TextLine", ID=f"line_{number}", BASELINE=_points(line.baseline), **_box(*line.box)
            )
            sub(sub(element, "Shape"), "Polygon", POINTS=_points(line.polygon))
            sub(element, "String", CONTENT="", **_box(*line.box))
    etree.indent(root, space="  ")
    return bytes(etree.tostring(root, encoding="UTF-8", xml_declaration=True)) + b"\n"


def _box(x0: float, y0: float, x1: float, y1: float) -> dict[str, str]:
    left, top = math.floor(x0), math.floor(y0)
    return {
        "HPOS": str(left),
        "VPOS": str(top),
        "WIDTH": str(max(1, math.ceil(x1) - left)),
        "HEIGHT": str(max(1, math.ceil(y1) - top)),
    }
