"""`predict`'s file side: which images to read, which are readable, where the readings go.

The decoding itself is `decoding.transcribe`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import EvalConfig
from .data.images import image_problem
from .decoding import Prediction, pick_device, transcribe
from .decoding.settings import model_decoding
from .distributed import Ranks
from .errors import UserError
from .files import atomic_open

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class PredictResult:
    """What `predict_images` read: the images in input order with their predictions, and the skips."""

    images: list[str]
    predictions: list[Prediction]
    skipped: list[tuple[str, str]]  # (image, reason), in input order
    notes: list[str] = field(default_factory=list)  # e.g. the model's recorded decoding, when used


def predict_images(
    model: str | Path,
    images: Sequence[str],
    cfg: EvalConfig,
    device: str = "auto",
    num_workers: int = 0,
    ranks: Ranks | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PredictResult:
    """Check and transcribe `images` with `model` (a checkpoint or an `optimize` artifact).

    Unreadable images are skipped, not fatal; the model loads only when there is a line to read.
    Under torchrun (`ranks` from distributed.launched) each process reads its contiguous slice
    and every process gets the merged result, in input order.
    """
    from .optimize import load_runner

    ranks = ranks or Ranks()
    good, bad = readable_images(ranks.part(images))
    predictions: list[Prediction] = []
    note = ""
    if good:
        bundle, runner = load_runner(model, pick_device(ranks.device(device)))
        cfg, note = model_decoding(cfg, bundle, runner)
        predictions, _ = transcribe(
            bundle, good, cfg, num_workers=num_workers, progress=progress, runner=runner
        )
    result = PredictResult([], [], [], [note] if note else [])
    for part_good, part_predictions, part_bad in ranks.gather((good, predictions, bad)):
        result.images += part_good
        result.predictions += part_predictions
        result.skipped += part_bad
    return result


def readable_images(images: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(images that decode, [(image, reason)] for the rest): zero-byte, non-image, truncated,
    bomb-sized or tiny files are reported instead of stopping a whole batch."""
    good: list[str] = []
    bad: list[tuple[str, str]] = []
    for path in images:
        reason = image_problem(path)
        if reason is None:
            good.append(path)
        else:
            bad.append((path, reason))
    return good, bad


def collect_images(
    inputs: Sequence[str], manifest_loader: Callable[[Path], list[str]] | None = None
) -> list[str]:
    """Expand IMAGES | DIR | MANIFEST arguments into image paths (directories recursively, sorted)."""
    paths: list[str] = []
    for item in inputs:
        p = Path(os.path.expanduser(item))
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise UserError(f"{p}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
            paths.extend(found)
        elif p.is_file() and p.suffix.lower() in (".jsonl", ".csv", ".tsv", ".ndjson") and manifest_loader:
            paths.extend(manifest_loader(p))
        elif p.is_file():
            paths.append(str(p))
        else:
            raise UserError(f"not found: {p}")
    return paths


def manifest_images(path: Path, warn: Callable[[str], None] = print) -> list[str]:
    """Image paths of a manifest file, every split, via the manifest layout (skips are warned)."""
    from .config import load_config
    from .data.layouts.manifest import read_manifest
    from .data.records import DropLog

    cfg = load_config(None, ["data.layout=manifest", f"data.root={path}"]).data
    log = DropLog()
    images = [s.image for s in read_manifest(cfg, path, log)]
    if log.total():  # e.g. rows whose image lies outside the manifest's folder
        warn(f"{path}: rows skipped: {log.describe()}")
    return images


def shard(items: Sequence[str], spec: str | None) -> list[str]:
    """`i/n`: the i-th of n contiguous, near-equal slices (0-based), for parallel runs."""
    if not spec:
        return list(items)
    try:
        i, n = (int(v) for v in spec.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise UserError(f"--shard {spec}: need 0 <= i < n")
    size = len(items)
    return list(items[size * i // n : size * (i + 1) // n])


def write_predictions(images: Sequence[str], predictions: Sequence[Prediction], out: Path) -> None:
    """CSV (path,text,confidence) or JSONL, chosen by the file extension."""
    import csv
    import json

    with atomic_open(out, newline="") as fh:
        if out.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            for path, p in zip(images, predictions, strict=True):
                fh.write(
                    json.dumps(
                        {"image": path, "text": p.text, "confidence": p.confidence}, ensure_ascii=False
                    )
                    + "\n"
                )
        else:
            writer = csv.writer(fh, delimiter="\t" if out.suffix.lower() == ".tsv" else ",")
            writer.writerow(["image", "text", "confidence"])
            writer.writerows(
                (path, p.text, f"{p.confidence:.6f}") for path, p in zip(images, predictions, strict=True)
            )
