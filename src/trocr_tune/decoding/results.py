"""What decoding returns: a text and its confidence per line, read off generated token ids."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Prediction:
    text: str
    confidence: float  # mean log-probability of the generated tokens (eos included), <= 0


def sequence_end(ids: Sequence[int], eos: int, pad: int) -> tuple[int, int]:
    """(text tokens, scored tokens) of generated ids: both stop at the first eos or pad, and the
    scored ones include that eos (generate pads a finished sequence; the padding is not its own)."""
    for i, token in enumerate(ids):
        if token in (eos, pad):
            return i, i + 1 if token == eos else i
    return len(ids), len(ids)


def written_end(ids: torch.Tensor, pad: int) -> int:
    """Columns of a (lines, steps) id batch up to the last token any line wrote (the rest is padding)."""
    written = (ids != pad) * torch.arange(1, ids.shape[-1] + 1, device=ids.device)
    return max(1, int(written.max())) if len(ids) else 1


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
