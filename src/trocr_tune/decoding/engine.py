"""The batch loop every command decodes through: images -> pixels -> a runner -> predictions."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..errors import UserError
from .results import Prediction
from .settings import DecodeSettings

if TYPE_CHECKING:
    from ..config import EvalConfig
    from ..model.loading import ModelBundle


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:1 ...)") from None


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

    `runner` (decoding.runners, or a variant's) decodes the batches; by default the bundle's
    model with `generate`. Every command and every variant goes through this same loop.
    """
    from ..data.dataset import LineDataset, collate
    from ..data.records import LineSample
    from .runners import TorchRunner, on_device

    if runner is None:
        device = device or pick_device()
        runner = TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device)
    # Lines of similar shape decode together: a batch runs until its longest reading ends, and a
    # line's width-to-height ratio is the best cheap guess of its length in characters.
    order = sorted(range(len(images)), key=lambda i: _aspect(images[i]))
    samples = [LineSample(images[i], "", None, images[i], images[i]) for i in order]
    dataset = LineDataset(samples, bundle.image_processor, bundle.tokenizer, with_labels=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate
    )
    settings = DecodeSettings.from_eval(bundle, cfg, max_new_tokens)
    decoded: list[Prediction] = []
    start = time.perf_counter()
    for batch in loader:
        decoded.extend(runner.generate_batch(batch["pixel_values"], settings))
        if progress:
            progress(len(decoded), len(samples))
    predictions: list[Prediction] = [decoded[0]] * len(decoded)
    for position, index in enumerate(order):
        predictions[index] = decoded[position]
    return predictions, time.perf_counter() - start


class ProgressPrinter:
    """A `transcribe` progress callback for long reads: `LABEL: 1,024 / 41,370 lines, 19.1 lines/s,
    ETA 35 min` on `stream`, at most every `every` seconds, and a last line when it printed before.

    The rate counts from the first batch on, so model warm-up does not skew the ETA.
    """

    def __init__(
        self, label: str, stream: Any = None, every: float = 15.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.label, self.stream, self.every, self.clock = label, stream, every, clock
        self.first: tuple[int, float] | None = None
        self.last_print: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (done, now)
            self.last_print = now
            return
        finished = done >= total
        if not finished and now - (self.last_print or now) < self.every:
            return
        if finished and self.last_print == self.first[1]:
            return  # a read short enough to need no progress gets no last line either
        self.last_print = now
        rate = (done - self.first[0]) / max(now - self.first[1], 1e-9)
        line = f"{self.label}: {done:,} / {total:,} lines, {rate:.1f} lines/s"
        if not finished and rate > 0:
            line += f", ETA {_duration((total - done) / rate)}"
        print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _aspect(path: str) -> float:
    """Width / height from the image header (0 when unreadable: the loader then names the file)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.width / max(1, im.height)
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0.0
