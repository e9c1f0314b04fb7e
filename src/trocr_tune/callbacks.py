"""Trainer callbacks: SIGINT/SIGTERM checkpointing, a wall-clock budget with a time schedule, progress,
and an exponential moving average of the weights."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from .files import atomic_write_text

BUDGET_FILE = "time_budget.json"


class GracefulInterrupt(TrainerCallback):
    """On Ctrl-C (SIGINT) or SIGTERM: finish the current step, save a checkpoint, stop.

    `train.resume=true` continues from that checkpoint. A second signal stops at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def signal_name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # second signal: stop now
                raise KeyboardInterrupt
            self.requested = True
            self.signum = signum
            name = signal.Signals(signum).name
            print(
                f"\n{name}: saving a checkpoint after this step (send it again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread
                break

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        for signum, previous in self._previous.items():
            if previous is not None:  # None: a handler not installed from Python
                signal.signal(signum, previous)
        self._previous = {}


class TimeBudget(TrainerCallback):
    """Train for `minutes` of wall-clock time; the learning rate follows warmup + cosine over time.

    `lr_factor` is the multiplier of a LambdaLR scheduler: linear warmup over the first
    `warmup` share of the budget, then cosine to zero when the budget is spent. The time already
    spent is saved beside each checkpoint, so a resumed run continues the same schedule.
    """

    def __init__(self, minutes: float, warmup: float, has_eval: bool) -> None:
        self.budget = minutes * 60.0
        self.warmup = warmup
        self.has_eval = has_eval
        self.offset = 0.0
        self.start: float | None = None

    def resume_from(self, checkpoint: str | None) -> None:
        path = Path(checkpoint or "") / BUDGET_FILE
        if checkpoint and path.is_file():
            self.offset = float(json.loads(path.read_text())["elapsed_seconds"])

    def elapsed(self) -> float:
        return self.offset + (time.perf_counter() - self.start if self.start is not None else 0.0)

    def lr_factor(self, _step: int) -> float:
        f = min(1.0, self.elapsed() / self.budget)
        if f < self.warmup:
            return max(f / self.warmup, 1e-3)
        return 0.5 * (1.0 + math.cos(math.pi * (f - self.warmup) / max(1e-9, 1.0 - self.warmup)))

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.elapsed() >= self.budget:
            control.should_training_stop = True
            control.should_save = True
            control.should_evaluate = self.has_eval
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_text(folder / BUDGET_FILE, json.dumps({"elapsed_seconds": self.elapsed()}))


class WeightAverage(TrainerCallback):
    """An exponential moving average of the trainable weights, updated after every optimizer step.

    The decay ramps up as min(decay, (1 + step) / (10 + step)), so the first steps do not pin the
    average to the starting weights. `swapped(model)` puts the average in the model for a block
    (validation, a checkpoint) and restores the training weights after it.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}

    def _trained(self, model: Any) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # A resumed run starts from its checkpoint, which holds the average (see `swapped`).
        self.shadow = {n: p.detach().clone() for n, p in self._trained(model)}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        decay = min(self.decay, (1 + state.global_step) / (10 + state.global_step))
        with torch.no_grad():
            for name, param in self._trained(model):
                self.shadow[name].lerp_(param.detach(), 1.0 - decay)

    def _write(self, model: Any, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, param in self._trained(model):
                param.copy_(weights[name])

    def copy_to(self, model: Any) -> None:
        """Write the average into the model's weights (for good)."""
        self._write(model, self.shadow)

    @contextmanager
    def swapped(self, model: Any) -> Iterator[None]:
        """The average in the model's weights inside the block, the training weights after it."""
        kept = {n: p.detach().clone() for n, p in self._trained(model)}
        self.copy_to(model)
        try:
            yield
        finally:
            self._write(model, kept)


class ProgressLine(TrainerCallback):
    """One status line per logging step: step, loss, CTC loss, learning rate, elapsed, ETA."""

    def __init__(self, budget: TimeBudget, stream: Any = None) -> None:
        self.budget = budget
        self.stream = stream or sys.stderr

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        logs = logs or {}
        # This session's share of the budget (a resumed run shows what is left of it).
        elapsed = self.budget.elapsed() - self.budget.offset
        total = self.budget.budget - self.budget.offset
        parts = [f"[train] step {state.global_step}"]
        for key, label in (
            ("loss", "loss"),
            ("ctc_loss", "ctc"),
            ("eval_loss", "eval loss"),
            ("eval_cer", "eval CER"),
        ):
            if key in logs:
                parts.append(f"{label} {logs[key]:.4f}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        parts.append(f"{elapsed / 60:.1f}/{total / 60:.1f} min, ETA {max(0.0, total - elapsed) / 60:.1f} min")
        print(" | ".join(parts), file=self.stream, flush=True)
