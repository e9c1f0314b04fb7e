"""Small helpers shared by layout readers: tolerant text-file reading and split names."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from ...errors import UserError
from ..records import DropLog

BAD_QUOTE = "row with an unclosed or stray quote"
WRONG_FIELD_COUNT = "row whose number of fields differs from the header"

EMPTY_LABEL = "empty or NaN label"
# Labels annotators and spreadsheet exports use to mean "no transcription", not a text.
NO_TEXT_LABELS = {"UNREADABLE": "label UNREADABLE", "EMPTY": "label EMPTY"}


def placeholder_label(label: object) -> str | None:
    """The drop reason when a label means "no transcription" (empty, NaN, UNREADABLE...), else None.

    Spreadsheets and pandas write a missing cell as NaN (JSON NaN parses as a float).
    """
    text = "" if label is None else str(label).strip()
    if not text or text.lower() == "nan":
        return EMPTY_LABEL
    return NO_TEXT_LABELS.get(text.upper())


# Split names users' files use, mapped to ours.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def canonical_split(name: str | None) -> str | None:
    """Our split name for a user's (train/valid/val/dev/test...), None for empty."""
    if name is None or not str(name).strip():
        return None
    return SPLIT_ALIASES.get(str(name).strip().lower())


def decoded_lines(
    path: Path, encoding: str, log: DropLog, split: str | None = None
) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line; lines that do not decode are counted and skipped.

    Decoding line by line (not the whole file) keeps one bad byte from losing the whole file
    and never shifts a label onto another row.
    """
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError:
                log.drop(
                    f"line not decodable as {encoding} (see data.encoding)",
                    f"{path.name}:{number}",
                    split,
                )
                continue
            except LookupError:
                raise UserError(f"data.encoding={encoding!r} is not a known text encoding") from None
            if number == 1:
                text = text.lstrip("\ufeff")
            yield number, text.rstrip("\r\n")


def csv_rows(
    path: Path, encoding: str, log: DropLog, delimiter: str = ",", split: str | None = None
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of a delimited file whose first row is its header.

    Each line is parsed on its own: a line transcription never spans lines, and an unclosed
    quote must not swallow the rows after it into one label. A row with a stray quote, or with
    more or fewer fields than the header, is dropped and counted; blank lines are passed on.
    """
    width: int | None = None
    for number, text in decoded_lines(path, encoding, log, split):
        try:
            fields = next(csv.reader([text], delimiter=delimiter, strict=True), [])
        except csv.Error:
            literal = text.split(delimiter)
            # A TSV line of the right width whose text starts with a quote ('"Yes," he said'):
            # tab-separated exports often leave quotes unescaped, so read them as written.
            if delimiter != "\t" or len(literal) != width:
                log.drop(BAD_QUOTE, f"{path.name}:{number}", split)
                continue
            fields = literal
        if width is None:
            width = len(fields)
        elif len(fields) != width and any(f.strip() for f in fields):
            log.drop(WRONG_FIELD_COUNT, f"{path.name}:{number}", split)
            continue
        yield number, fields


PARTITION_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
IN_TWO_PARTITIONS = "id listed in two partition files"


def find_partition_dir(root: Path, configured: str | None) -> Path | None:
    """`data.partition_dir` (relative to root) or root/partitions when it exists."""
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            raise UserError(f"data.partition_dir does not exist: {path}")
        return path
    default = root / "partitions"
    return default if default.is_dir() else None


def read_partitions(folder: Path, encoding: str, log: DropLog) -> dict[str, str]:
    """id -> split from {train,validation,test}.txt (one id per line; aliases like val.txt accepted)."""
    out: dict[str, str] = {}
    for split, names in PARTITION_NAMES.items():
        for name in names:
            path = folder / f"{name}.txt"
            if not path.is_file():
                continue
            for number, line in decoded_lines(path, encoding, log, split):
                item = line.strip().split()[0] if line.strip() else ""
                if not item:
                    continue
                if item in out and out[item] != split:
                    log.drop(IN_TWO_PARTITIONS, f"{path.name}:{number}", split)
                    continue
                out[item] = split
    if not out:
        raise UserError(f"{folder}: no partition files train.txt / validation.txt / test.txt with ids")
    return out


def index_images(
    folder: Path,
    extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"),
) -> dict[str, Path]:
    """stem -> path of the image files directly in `folder` (one directory listing, not a glob per id)."""
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions}
