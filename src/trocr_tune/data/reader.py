"""The common reading pipeline: layout reader -> text rules -> image checks -> splits."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SPLITS, DataConfig
from ..errors import UserError
from .images import MISSING_IMAGE, ImageProblem, decoded, open_image
from .images import UNREADABLE_IMAGE as UNREADABLE_IMAGE
from .layouts import LAYOUTS
from .records import DropLog, LineSample
from .splits import assign_splits
from .text import TextNormalizer

SMALL_IMAGE = "image smaller than data.min_image_side"
NARROW_IMAGE = "image narrower than its text (a vertical or broken line box)"
DUPLICATE_ID = "duplicate id"
OVER_LIMIT = "beyond data.limit"


@dataclass
class ReadResult:
    """The cleaned samples of a dataset and the log of what was dropped and why."""

    samples: list[LineSample]
    log: DropLog = field(default_factory=DropLog)

    def split(self, name: str) -> list[LineSample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> Counter[str]:
        return Counter(s.split or "unassigned" for s in self.samples)


def resolve_root(cfg: DataConfig) -> Path:
    """`data.root` as an existing path (hf may also name a hub dataset id)."""
    if not cfg.root:
        layout = LAYOUTS[cfg.layout]
        raise UserError(f"data.root is not set (the {cfg.layout} dataset location), e.g. {layout.example}")
    root = Path(os.path.abspath(os.path.expanduser(cfg.root)))
    if not root.exists() and cfg.layout != "hf":
        raise UserError(f"data.root does not exist: {root}")
    return root


def too_narrow(size: tuple[int, int], text: str) -> bool:
    """A horizontal line of N characters is at least ~N/4 of its height wide (N capped at 4): a
    64 px high, 2 px wide crop labelled with a sentence is a vertical line or a broken box."""
    width, height = size
    return width < 0.25 * height * min(len(text), 4)


def image_size(path: str, mode: str) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) for a readable image, or (None, drop reason). `mode`: header or decode."""
    try:
        with open_image(path) as im:
            if mode == "decode":
                decoded(im)
            return im.size, None
    except ImageProblem as problem:
        return None, problem.reason


def clean(samples: Iterator[LineSample], cfg: DataConfig, log: DropLog) -> Iterator[LineSample]:
    """Apply text rules and image checks to a stream of raw samples, counting every drop."""
    normalize = TextNormalizer.from_config(cfg)
    seen: set[str] = set()
    for s in samples:
        text, reason = normalize(s.text)
        if reason is not None:
            log.drop(reason, s.source, s.split)
            continue
        if s.id in seen:
            log.drop(DUPLICATE_ID, s.source, s.split)
            continue
        size = s.size
        if size is None and cfg.check_images != "none":
            size, reason = image_size(s.image, cfg.check_images)
            if reason is not None:
                log.drop(reason, s.source, s.split)
                continue
        elif cfg.check_images == "none" and not os.path.exists(s.image):
            log.drop(MISSING_IMAGE, s.source, s.split)
            continue
        if size is not None and min(size) < cfg.min_image_side:
            log.drop(SMALL_IMAGE, s.source, s.split)
            continue
        if size is not None and text is not None and too_narrow(size, text):
            log.drop(NARROW_IMAGE, s.source, s.split)
            continue
        seen.add(s.id)
        yield s.with_(text=text, size=size)


def decode_check(result: ReadResult, splits: tuple[str, ...]) -> str | None:
    """Fully decode the images of `splits` and drop (counted) those that fail, e.g. truncated files.

    The header check of `read_dataset` cannot see a file cut short; training would then stop
    mid-epoch on it. Pillow decodes outside the GIL, so threads share the work. Returns the note
    added to the log when images were skipped.
    """
    chosen = [s for s in result.samples if s.split in splits]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(lambda s: image_size(s.image, "decode")[1], chosen))
    bad = {id(s): reason for s, reason in zip(chosen, reasons, strict=True) if reason is not None}
    skipped = DropLog()
    for s in chosen:
        if id(s) in bad:
            result.log.drop(bad[id(s)], s.source, s.split)
            skipped.drop(bad[id(s)], f"{s.image} ({s.source})", s.split)
    result.samples = [s for s in result.samples if id(s) not in bad]
    if not bad:
        return None
    note = f"{len(bad)} images do not decode and were skipped: {skipped.describe()}"
    result.log.note(note)
    return note


def read_dataset(cfg: DataConfig, log: DropLog | None = None) -> ReadResult:
    """Read, clean and split a dataset as configured; nothing is decoded beyond image headers."""
    log = log if log is not None else DropLog()
    root = resolve_root(cfg)
    layout = LAYOUTS[cfg.layout]
    if cfg.group_by and cfg.group_by not in layout.groups:  # before a read that may take minutes
        gives = f"gives {', '.join(layout.groups)}" if layout.groups else "gives no group key"
        raise UserError(f"data.group_by={cfg.group_by}: the {cfg.layout} layout {gives}")
    reader = layout.reader()
    samples = list(clean(reader(cfg, root, log), cfg, log))
    if not samples:
        raise UserError(f"no usable samples in {root} (layout {cfg.layout}); dropped: {_dropped(log)}")
    samples = assign_splits(samples, cfg, log)
    if cfg.limit is not None:
        kept: list[LineSample] = []
        per_split: Counter[str | None] = Counter()
        for s in samples:
            per_split[s.split] += 1
            if per_split[s.split] <= cfg.limit:
                kept.append(s)
            else:
                log.drop(OVER_LIMIT, s.source, s.split)
        samples = kept
    order = {name: i for i, name in enumerate(SPLITS)}
    samples.sort(key=lambda s: order.get(s.split or "", 3))  # stable: keeps reading order per split
    return ReadResult(samples, log)


def _dropped(log: DropLog) -> str:
    return log.describe() or "nothing"
