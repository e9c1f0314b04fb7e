"""Batched transcription with a confidence per line (mean token log-probability)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EvalConfig
from .data.dataset import LineDataset, collate
from .data.images import image_problem
from .distributed import Ranks
from .errors import UserError
from .files import atomic_open
from .model.charlm import CHAR_LM_FILE
from .model.loading import ModelBundle

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass(frozen=True)
class Prediction:
    text: str
    confidence: float  # mean log-probability of the generated tokens (eos included), <= 0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1 ...)") from None


def generation_kwargs(
    bundle: ModelBundle, cfg: EvalConfig, max_new_tokens: int | None = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        # decoder start token + the new tokens (see model.loading.set_generation_budget)
        "max_length": 1 + (max_new_tokens or bundle.info.max_new_tokens),
        "num_beams": cfg.num_beams,
        "do_sample": False,
    }
    uses_lm = (cfg.lm_weight > 0 and cfg.num_beams > 1) or cfg.lm_fusion > 0
    if uses_lm and bundle.char_lm is None:
        raise UserError(
            "eval.lm_weight and eval.lm_fusion need a character language model beside the checkpoint "
            f"({CHAR_LM_FILE}): train with train.char_lm_order > 0, or build one with `trocr-tune lm`"
        )
    if cfg.lm_fusion > 0:  # read by the runner (a logits processor), not by generate
        kwargs["lm_fusion"] = (cfg.lm_fusion, bundle.char_lm)
    if cfg.num_beams > 1:
        kwargs["length_penalty"] = cfg.length_penalty
        kwargs["early_stopping"] = True
        if cfg.lm_weight > 0:
            kwargs["rescore_lm"] = (cfg.lm_weight, bundle.char_lm)
        if cfg.ctc_rescore > 0 or cfg.lm_weight > 0:  # read by the runner, not by generate
            kwargs["ctc_rescore"] = cfg.ctc_rescore
            if cfg.rescore_length_bonus:
                kwargs["rescore_length_bonus"] = cfg.rescore_length_bonus
            if cfg.rescore_views:
                kwargs["rescore_views"] = tuple(cfg.rescore_views)
                if cfg.rescore_views_margin is not None:
                    kwargs["rescore_views_margin"] = cfg.rescore_views_margin
    if cfg.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size
    return kwargs


def sequence_end(ids: Sequence[int], eos: int, pad: int) -> tuple[int, int]:
    """(text tokens, scored tokens) of generated ids: both stop at the first eos or pad, and the
    scored ones include that eos (generate pads a finished sequence; the padding is not its own)."""
    for i, token in enumerate(ids):
        if token in (eos, pad):
            return i, i + 1 if token == eos else i
    return len(ids), len(ids)


def decode_predictions(
    tokenizer: Any, generated: list[list[int]], logprobs: torch.Tensor
) -> list[Prediction]:
    """Texts and confidences from generated ids (after the start token) and their log-probs.

    The confidence averages the tokens up to and including the first eos; what generate
    appends after a sequence finished (padding) does not count.
    """
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    results = []
    for ids, logp in zip(generated, logprobs, strict=True):
        _, n = sequence_end(ids, eos, pad)
        confidence = float(logp[:n].mean()) if n else 0.0
        text = tokenizer.decode(ids, skip_special_tokens=True)
        results.append(Prediction(text.strip(), confidence))
    return results


def transcribe(
    bundle: ModelBundle,
    images: Sequence[str],
    cfg: EvalConfig,
    device: torch.device | None = None,
    num_workers: int = 0,
    max_new_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    runner: Any = None,
) -> tuple[list[Prediction], float]:
    """Transcribe `images` in batches; returns predictions in input order and seconds spent.

    `runner` (see optimize.runners) decodes the batches; by default the bundle's model with
    `generate`. Every variant goes through this same loop.
    """
    from .data.records import LineSample
    from .optimize.runners import TorchRunner, on_device

    if runner is None:
        device = device or pick_device()
        runner = TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device)
    samples = [LineSample(p, "", None, p, p) for p in images]
    dataset = LineDataset(samples, bundle.image_processor, bundle.tokenizer, with_labels=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    kwargs = generation_kwargs(bundle, cfg, max_new_tokens)
    predictions: list[Prediction] = []
    start = time.perf_counter()
    for batch in loader:
        predictions.extend(runner.generate_batch(batch["pixel_values"], kwargs))
        if progress:
            progress(len(predictions), len(samples))
    return predictions, time.perf_counter() - start


@dataclass
class PredictResult:
    """What `predict_images` read: the images in input order with their predictions, and the skips."""

    images: list[str]
    predictions: list[Prediction]
    skipped: list[tuple[str, str]]  # (image, reason), in input order


def predict_images(
    model: str | Path,
    images: Sequence[str],
    cfg: EvalConfig,
    device: str = "auto",
    num_workers: int = 0,
    ranks: Ranks | None = None,
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
    if good:
        bundle, runner = load_runner(model, pick_device(ranks.device(device)))
        predictions, _ = transcribe(bundle, good, cfg, num_workers=num_workers, runner=runner)
    result = PredictResult([], [], [])
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
