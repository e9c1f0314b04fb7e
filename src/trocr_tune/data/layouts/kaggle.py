"""Kaggle "handwriting-recognition" (handwritten names): CSV per split + image folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ...config import SPLITS, DataConfig
from ...errors import UserError
from ..records import DropLog, LineSample
from .common import csv_rows, placeholder_label

SHORT_ROW = "row without FILENAME/IDENTITY fields"


def _image_dir(root: Path, split: str) -> Path:
    """Kaggle unpacks to {split}_v2/{split}/; some mirrors flatten to {split}_v2/."""
    nested = root / f"{split}_v2" / split
    return nested if nested.is_dir() else root / f"{split}_v2"


def read_kaggle_names(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """Rows of written_name_{split}_v2.csv; labels and images are joined by FILENAME, never by position."""
    csvs = {split: root / f"written_name_{split}_v2.csv" for split in SPLITS}
    if not any(p.is_file() for p in csvs.values()):
        raise UserError(
            f"{root}: no written_name_{{train,validation,test}}_v2.csv found (layout kaggle-names)"
        )
    for split, path in csvs.items():
        if not path.is_file():
            log.note(f"{path.name} not found: no {split} samples from the CSVs")
            continue
        images_dir = str(_image_dir(root, split))
        rows = csv_rows(path, cfg.encoding, log, split=split)
        header = next(rows, None)
        if header is None:
            continue
        columns = [c.strip().upper() for c in header[1]]
        if "FILENAME" not in columns or "IDENTITY" not in columns:
            raise UserError(f"{path}:1: expected columns FILENAME,IDENTITY, found {','.join(header[1])}")
        i_file, i_text = columns.index("FILENAME"), columns.index("IDENTITY")
        for number, fields in rows:
            source = f"{path.name}:{number}"
            if len(fields) <= max(i_file, i_text) or not fields[i_file].strip():
                if any(f.strip() for f in fields):
                    log.drop(SHORT_ROW, source, split)
                continue
            filename, text = fields[i_file].strip(), fields[i_text]
            reason = placeholder_label(text)
            if reason is not None:
                log.drop(reason, source, split)
                continue
            yield LineSample(
                image=os.path.join(images_dir, filename),
                text=text,
                split=split,
                id=f"{split}/{filename}",
                source=source,
            )
