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
        kwargs = dict(kwargs)
        rescore = float(kwargs.pop("ctc_rescore", 0.0))
        beams = int(kwargs.get("num_beams", 1))
        if rescore > 0 and beams > 1:
            kwargs["num_return_sequences"] = beams
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
            generated = out.sequences[:, -scores.shape[1] :].tolist()
            logprobs = scores.float().cpu()
            if rescore > 0 and beams > 1:
                generated, logprobs = self._ctc_rescore(pixel_values, generated, logprobs, beams, rescore)
        return decode_predictions(self.tokenizer, generated, logprobs)

    def _ctc_rescore(
        self,
        pixel_values: torch.Tensor,
        rows: list[list[int]],
        logprobs: torch.Tensor,
        beams: int,
        weight: float,
    ) -> tuple[list[list[int]], torch.Tensor]:
        """Of each image's `beams` hypotheses, the best by (1 - w) log p_decoder + w log p_CTC."""
        from ..model.ctc import ctc_log_likelihood

        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        tokens, decoder_logp = [], []
        for ids, logp in zip(rows, logprobs, strict=True):
            n = next((i for i, t in enumerate(ids) if t in (eos, pad)), len(ids))
            tokens.append(ids[:n])
            # the decoder's log-probability includes its eos (when it ended the sequence)
            decoder_logp.append(float(logp[: n + (n < len(ids) and ids[n] == eos)].sum()))
        states = self.model.encoder(pixel_values=pixel_values.to(self.device)).last_hidden_state
        ctc = ctc_log_likelihood(self.model, states.repeat_interleave(beams, dim=0), tokens, pad)
        joint = (1 - weight) * torch.tensor(decoder_logp) + weight * ctc
        best = [
            g * beams + int(joint[g * beams : (g + 1) * beams].argmax()) for g in range(len(rows) // beams)
        ]
        return [rows[i] for i in best], logprobs[best]
