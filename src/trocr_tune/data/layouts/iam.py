"""IAM Handwriting Database, line level: lines.txt + lines/<a01>/<a01-000u>/<id>.png."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...config import DataConfig
from ...errors import UserError
from ..records import DropLog, LineSample
from .common import decoded_lines, find_partition_dir, read_partitions

BAD_LINE = "lines.txt line with fewer than 9 fields"
NOT_IN_PARTITION = "id not listed in any partition file"


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / "ascii" / name):
        if candidate.is_file():
            return candidate
    return None


def _writers(path: Path | None, encoding: str, log: DropLog) -> dict[str, str]:
    """form id -> writer id from forms.txt (optional)."""
    if path is None:
        return {}
    out = {}
    for _, line in decoded_lines(path, encoding, log):
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("#"):
            out[fields[0]] = fields[1]
    return out


def read_iam(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """IAM lines: '|' separates words; writer ids come from forms.txt when it is present."""
    lines = _find(root, "lines.txt")
    if lines is None:
        raise UserError(f"{root}: lines.txt (or ascii/lines.txt) not found (layout iam)")
    writers = _writers(_find(root, "forms.txt"), cfg.encoding, log)
    folder = find_partition_dir(root, cfg.partition_dir)
    partitions = read_partitions(folder, cfg.encoding, log) if folder else {}
    errors = 0
    for number, line in decoded_lines(lines, cfg.encoding, log):
        if not line.strip() or line.startswith("#"):
            continue
        source = f"{lines.name}:{number}"
        fields = line.split(" ")
        if len(fields) < 9:
            log.drop(BAD_LINE, source)
            continue
        line_id, status = fields[0], fields[1]
        text = " ".join(fields[8:]).replace("|", " ")
        form = line_id.rsplit("-", 1)[0]
        split = partitions.get(line_id) or partitions.get(form)
        if partitions and split is None and not cfg.resplit:
            log.drop(NOT_IN_PARTITION, source)
            continue
        errors += status == "err"
        meta = {"page": form, "segmentation": status}
        if form in writers:
            meta["writer"] = writers[form]
        image = root / "lines" / form.split("-")[0] / form / f"{line_id}.png"
        yield LineSample(str(image), text, split, line_id, source, meta=meta)
    if errors:
        log.note(f"{errors} IAM lines have segmentation status 'err' (kept; see meta.segmentation)")
