"""Hugging Face `datasets` layout: a save_to_disk folder, parquet file(s), or a hub dataset id.

Images are never decoded here: embedded image bytes are written once to the cache (keyed by
the dataset fingerprint) so every record has a readable image path like any other layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...config import DataConfig
from ...errors import UserError
from ..crops import default_cache_dir
from ..records import DropLog, LineSample
from .common import canonical_split

UNKNOWN_SPLIT = "row of a split that is not train/validation/test"
NO_IMAGE = "row without image"


def _load(cfg: DataConfig, root: Path) -> Any:
    try:
        import datasets
    except ImportError:
        raise UserError("layout hf needs the 'datasets' package: pip install 'trocr-tune[hf]'") from None
    try:
        if root.is_dir() and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()):
            return datasets.load_from_disk(str(root))
        if root.is_file() and root.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files={"data": str(root)})
        if root.is_dir():
            files = sorted(root.rglob("*.parquet"))
            if not files:
                raise UserError(f"{root}: no save_to_disk dataset or *.parquet files (layout hf)")
            by_split: dict[str, list[str]] = {}
            for f in files:
                split = next(
                    (
                        s
                        for s in ("train", "validation", "valid", "val", "dev", "test")
                        if s in f.stem.split("-")[0].split("_")
                    ),
                    "data",
                )
                by_split.setdefault(split, []).append(str(f))
            return datasets.load_dataset("parquet", data_files=by_split)
        return datasets.load_dataset(str(cfg.root), cfg.hf_config)
    except UserError:
        raise
    except Exception as exc:  # datasets raises many types (hub, schema, IO); report one line
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(
            f"cannot load Hugging Face dataset {cfg.root!r}: {type(exc).__name__}: {first_line}"
        ) from None


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".img"


def read_hf(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """Rows of every split of the dataset; the split comes from the split name or data.split_column."""
    import datasets

    loaded = _load(cfg, root)
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("data", loaded)]
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    base = root if root.exists() else None
    for part_name, ds in parts:
        for key, name in (
            (cfg.image_column, "data.image_column"),
            (cfg.text_column, "data.text_column"),
        ):
            if key not in ds.column_names:
                found = ", ".join(ds.column_names)
                raise UserError(
                    f"dataset split '{part_name}' has no column '{key}' ({name}); columns: {found}"
                )
        if isinstance(ds.features[cfg.image_column], datasets.Image):
            ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
        part_split = canonical_split(part_name)
        folder = cache / "hf" / ds._fingerprint / part_name
        columns = [
            c
            for c in (cfg.image_column, cfg.text_column, cfg.split_column, cfg.id_column)
            if c in ds.column_names
        ]
        for index, row in enumerate(ds.select_columns(columns)):
            source = f"{part_name}[{index}]"
            raw_split = row.get(cfg.split_column)
            if raw_split not in (None, ""):
                split = canonical_split(str(raw_split))
            else:
                split = None if part_name == "data" else part_split
            if split is None and (raw_split not in (None, "") or part_name != "data"):
                log.drop(UNKNOWN_SPLIT, source)
                continue
            image = row[cfg.image_column]
            path = _image_path(image, base, folder, index)
            if path is None:
                log.drop(NO_IMAGE, source, split)
                continue
            raw_id = row.get(cfg.id_column)
            yield LineSample(
                path,
                row[cfg.text_column] or "",
                split,
                f"{part_name}/{raw_id if raw_id not in (None, '') else index}",
                source,
            )


def _image_path(image: Any, base: Path | None, folder: Path, index: int) -> str | None:
    """A readable file for the row's image: its own path when it exists, else its bytes cached."""
    if isinstance(image, str):
        path = Path(image) if os.path.isabs(image) or base is None else base / image
        return str(path)
    if not isinstance(image, dict):
        return None
    if image.get("path") and os.path.isfile(image["path"]):
        return str(image["path"])
    data = image.get("bytes")
    if not data:
        return None
    target = folder / f"{index:07d}{_suffix(data)}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)
