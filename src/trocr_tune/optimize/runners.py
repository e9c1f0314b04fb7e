"""Runners: what turns a batch of pixel values into predictions, for every variant alike.

Evaluation, prediction and the benchmark call `generate_batch` and nothing else, so every
variant is decoded with the same settings and scored by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from ..predict import Prediction, decode_predictions


class Runner(Protocol):
    """Anything that can decode a batch (the Protocol of STYLE.md: `prepare(model) -> runnable`)."""

    device: torch.device

    def generate_batch(self, pixel_values: torch.Tensor, kwargs: dict[str, Any]) -> list[Prediction]: ...


def on_device(model: Any, device: torch.device) -> Any:
    """`model` moved to `device` in eval mode (typed loosely: Transformers wraps `.to`)."""
    return model.to(device).eval()


class TorchRunner:
    """A (possibly modified) Transformers model decoded with `generate`, optionally under autocast."""

    def __init__(
        self, model: Any, tokenizer: Any, device: torch.device, autocast: torch.dtype | None = None
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.autocast = autocast

    @contextlib.contextmanager
    def _precision(self) -> Iterator[None]:
        if self.autocast is None:
            yield
            return
        with torch.autocast(device_type=self.device.type, dtype=self.autocast):
            yield

    def generate_batch(self, pixel_values: torch.Tensor, kwargs: dict[str, Any]) -> list[Prediction]:
        with torch.inference_mode(), self._precision():
            out = self.model.generate(
                pixel_values=pixel_values.to(self.device),
                output_scores=True,
                return_dict_in_generate=True,
                **kwargs,
            )
            scores = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
            )
        generated = out.sequences[:, -scores.shape[1] :]
        return decode_predictions(self.tokenizer, generated.tolist(), scores.float().cpu())
