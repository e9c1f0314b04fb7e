"""Folder of line images with `.gt.txt` sidecars (the kraken / calamari convention)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ...config import DataConfig
from ..records import DropLog, LineSample

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
NO_SIDECAR = "image without .gt.txt"
NO_IMAGE = "sidecar .gt.txt without image"
NOT_DECODABLE = "sidecar not decodable with data.encoding"


def read_folder(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """Each `NAME.<ext>` with a `NAME.gt.txt` beside it, searched recursively in sorted order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        folder = Path(dirpath)
        rel = folder.relative_to(root)
        names = set(filenames)
        sidecars = {n[: -len(".gt.txt")] for n in names if n.endswith(".gt.txt")}
        matched: set[str] = set()
        for name in sorted(filenames):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS or stem.endswith(".bin") or stem.endswith(".nrm"):
                continue  # kraken writes .bin.png / .nrm.png beside the original
            source = str(rel / name)
            if stem not in sidecars:
                log.drop(NO_SIDECAR, source)
                continue
            matched.add(stem)
            gt = folder / f"{stem}.gt.txt"
            try:
                text = gt.read_bytes().decode(cfg.encoding).lstrip("\ufeff")
            except UnicodeDecodeError:
                log.drop(NOT_DECODABLE, str(rel / gt.name))
                continue
            meta = {"page": str(rel) if str(rel) != "." else stem}
            meta["manuscript"] = rel.parts[0] if rel.parts else "."
            yield LineSample(str(folder / name), text, None, str(rel / stem), source, meta=meta)
        for stem in sorted(sidecars - matched):
            log.drop(NO_IMAGE, str(rel / f"{stem}.gt.txt"))
