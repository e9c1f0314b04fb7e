"""Rodrigo corpus layout: images/, text/transcriptions.txt ('ID text'), partitions/*.txt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...config import DataConfig
from ...errors import UserError
from ..records import DropLog, LineSample
from ..text import EMPTY
from .common import decoded_lines, find_partition_dir, index_images, read_partitions

NO_IMAGE = "image file missing"
NOT_IN_PARTITION = "id not listed in any partition file"
NO_TRANSCRIPTION = "partition id without transcription"
BAD_LINE = "transcription line without 'ID text'"


def read_rodrigo(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """Join transcriptions to images by ID; splits come from the partition files."""
    transcriptions = root / "text" / "transcriptions.txt"
    if not transcriptions.is_file():
        raise UserError(f"{root}: text/transcriptions.txt not found (layout rodrigo)")
    images = index_images(root / "images")
    folder = find_partition_dir(root, cfg.partition_dir)
    partitions = read_partitions(folder, cfg.encoding, log) if folder else {}
    if folder is None:
        log.note("no partitions/ folder: samples are split by data.split_ratios")
    seen: set[str] = set()
    for number, line in decoded_lines(transcriptions, cfg.encoding, log):
        source = f"{transcriptions.name}:{number}"
        sample_id, _, text = line.strip().partition(" ")
        if not sample_id:
            continue
        if not text.strip():
            log.drop(EMPTY if _ else BAD_LINE, source)
            continue
        split = partitions.get(sample_id)
        seen.add(sample_id)
        if partitions and split is None and not cfg.resplit:
            log.drop(NOT_IN_PARTITION, source)
            continue
        image = images.get(sample_id)
        if image is None:
            log.drop(NO_IMAGE, source, split)
            continue
        yield LineSample(
            str(image), text, split, sample_id, source, meta={"page": sample_id.rsplit("_", 1)[0]}
        )
    for sample_id, split in partitions.items():
        if sample_id not in seen:
            log.drop(NO_TRANSCRIPTION, f"partitions/{split}.txt:{sample_id}", split)
