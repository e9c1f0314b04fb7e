"""Manifest layout: CSV / TSV / JSONL rows of image path + text (optional split, id, meta)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from ...config import SPLITS, DataConfig
from ...errors import UserError
from ..crops import default_cache_dir
from ..records import DropLog, LineSample
from .common import PARTITION_NAMES, canonical_split, csv_rows, decoded_lines, placeholder_label

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
DELIMITERS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
GROUP_KEYS = ("page", "manuscript", "writer")
BAD_JSON = "invalid JSON line"
NO_IMAGE_FIELD = "row without an image path"
UNKNOWN_SPLIT = "unknown split value"
OUTSIDE_ROOT = "image path outside the dataset folder (data.allow_outside_root=true allows it)"


def inside(folder: str, path: str) -> bool:
    """Whether `path` (absolute, normalised) lies within `folder` (absolute)."""
    return os.path.commonpath([folder, path]) == folder


def written_roots(manifest: Path) -> list[str]:
    """Folders a manifest written by `data check --manifest` may point into: its dataset and crop cache.

    They come from the `NAME.config.yaml` that command writes beside `NAME.jsonl`; a filesystem root
    or the home folder itself is never taken from it.
    """
    sidecar = manifest.with_name(manifest.stem + ".config.yaml")
    if not sidecar.is_file():
        return []
    try:
        data = (yaml.safe_load(sidecar.read_text(encoding="utf-8")) or {}).get("data") or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return []
    if not isinstance(data, dict):
        return []
    roots = []
    if isinstance(data.get("root"), str):
        root = Path(data["root"]).expanduser()
        if not root.is_absolute():
            root = sidecar.parent / root
        roots.append(root.parent if root.is_file() else root)
    cache = data.get("cache_dir")
    roots.append(Path(cache).expanduser() if isinstance(cache, str) else default_cache_dir())
    refused = {os.path.abspath(os.sep), os.path.abspath(os.path.expanduser("~"))}
    return [r for r in (os.path.abspath(r) for r in roots) if r not in refused]


def manifest_files(root: Path) -> list[tuple[Path, str | None]]:
    """The manifest file(s) under `root`, with the split implied by a per-split file name."""
    if root.is_file():
        return [(root, None)]
    for suffix in (*JSON_SUFFIXES, ".csv", ".tsv"):
        single = root / f"manifest{suffix}"
        if single.is_file():
            return [(single, None)]
    per_split: list[tuple[Path, str | None]] = []
    for split, names in PARTITION_NAMES.items():
        for name in names:
            for suffix in (*JSON_SUFFIXES, ".csv", ".tsv"):
                if (root / f"{name}{suffix}").is_file():
                    per_split.append((root / f"{name}{suffix}", split))
    if not per_split:
        raise UserError(
            f"{root}: no manifest found (looked for manifest.jsonl/.csv/.tsv and "
            f"{{{','.join(SPLITS)}}}.jsonl/.csv/.tsv); or set data.root to the manifest file"
        )
    return per_split


def _json_rows(path: Path, cfg: DataConfig, log: DropLog) -> Iterator[tuple[int, dict]]:
    for number, line in decoded_lines(path, cfg.encoding, log):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.drop(BAD_JSON, f"{path.name}:{number}")
            continue
        if not isinstance(row, dict):
            log.drop(BAD_JSON, f"{path.name}:{number}")
            continue
        yield number, row


def _delimited_rows(path: Path, cfg: DataConfig, log: DropLog) -> Iterator[tuple[int, dict]]:
    rows = csv_rows(path, cfg.encoding, log, delimiter=DELIMITERS.get(path.suffix.lower(), ","))
    header = next(rows, None)
    if header is None:
        return
    columns = [c.strip() for c in header[1]]
    for key in (cfg.image_column, cfg.text_column):
        if key not in columns:
            name = "data.image_column" if key == cfg.image_column else "data.text_column"
            raise UserError(f"{path}:1: no column '{key}' ({name}); columns are: {', '.join(columns)}")
    for number, fields in rows:
        if not any(f.strip() for f in fields):
            continue
        yield number, dict(zip(columns, fields, strict=False))


def read_manifest(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """Rows of the manifest(s); relative image paths resolve against the manifest's folder.

    Image paths must stay inside the dataset folder (data.root, or the folder of a manifest file
    given as data.root), or the dataset and crop cache of a manifest written by `data check
    --manifest` (written_roots), unless data.allow_outside_root: a downloaded manifest must not
    make trocr-tune read ../../etc/passwd or any other file of the machine.
    """
    base = os.path.abspath(root if root.is_dir() else root.parent)
    for path, file_split in manifest_files(root):
        folder = os.path.abspath(path.parent)
        allowed = [base, *written_roots(path)]
        is_json = path.suffix.lower() in JSON_SUFFIXES
        rows = _json_rows(path, cfg, log) if is_json else _delimited_rows(path, cfg, log)
        first = True
        for number, row in rows:
            source = f"{path.name}:{number}"
            if first and is_json and cfg.image_column not in row:
                raise UserError(
                    f"{source}: no key '{cfg.image_column}' (data.image_column); keys are: {', '.join(row)}"
                )
            first = False
            image = row.get(cfg.image_column)
            if not isinstance(image, str) or not image.strip():
                log.drop(NO_IMAGE_FIELD, source, file_split)
                continue
            text = row.get(cfg.text_column)
            if text is not None and str(text).strip() and (reason := placeholder_label(text)):
                log.drop(reason, source, file_split)
                continue
            image_path = os.path.normpath(os.path.join(folder, os.path.expanduser(image.strip())))
            if not cfg.allow_outside_root and not any(inside(a, image_path) for a in allowed):
                log.drop(OUTSIDE_ROOT, source, file_split)
                continue
            split = file_split
            raw_split = row.get(cfg.split_column)
            if raw_split not in (None, ""):
                split = canonical_split(str(raw_split))
                if split is None:
                    log.drop(UNKNOWN_SPLIT, source, file_split)
                    continue
            raw_id = row.get(cfg.id_column)
            extra = row.get("meta") if is_json else None
            meta = {k: str(v) for k, v in extra.items()} if isinstance(extra, dict) else {}
            meta.update({k: str(row[k]) for k in GROUP_KEYS if row.get(k) not in (None, "")})
            yield LineSample(
                image=image_path,
                text=text if isinstance(text, str) else ("" if text is None else str(text)),
                split=split,
                id=str(raw_id) if raw_id not in (None, "") else image.strip(),
                source=source,
                meta=meta,
            )
