"""Runners: what turns a batch of pixel values into predictions, for every variant alike.

Evaluation, prediction and the benchmark call `generate_batch` and nothing else, so every
variant is decoded with the same settings and scored by the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from transformers.modeling_outputs import BaseModelOutput

from ..predict import Prediction, decode_predictions, sequence_end


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
        rescoring = rescore > 0 and beams > 1
        if rescoring:
            kwargs["num_return_sequences"] = beams
        with torch.inference_mode(), self._precision():
            if rescoring:
                # The encoder runs once: generate decodes from its output and the CTC reads it.
                states = self.model.encoder(pixel_values=pixel_values.to(self.device)).last_hidden_state
                inputs: dict[str, Any] = {"encoder_outputs": BaseModelOutput(last_hidden_state=states)}
            else:
                inputs = {"pixel_values": pixel_values.to(self.device)}
            out = self.model.generate(
                **inputs,
                output_scores=True,
                return_dict_in_generate=True,
                **kwargs,
            )
            scores = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
            )
            generated = out.sequences[:, -scores.shape[1] :].tolist()
            logprobs = scores.float().cpu()
            if rescoring:
                generated, logprobs = self._ctc_rescore(states, generated, logprobs, beams, rescore)
        return decode_predictions(self.tokenizer, generated, logprobs)

    def _ctc_rescore(
        self,
        states: torch.Tensor,
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
            n_text, n_scored = sequence_end(ids, eos, pad)
            tokens.append(ids[:n_text])
            decoder_logp.append(float(logp[:n_scored].sum()))
        ctc = ctc_log_likelihood(self.model, states, tokens, pad, rows_per_image=beams)
        joint = (1 - weight) * torch.tensor(decoder_logp) + weight * ctc
        best = [
            g * beams + int(joint[g * beams : (g + 1) * beams].argmax()) for g in range(len(rows) // beams)
        ]
        return [rows[i] for i in best], logprobs[best]
