"""`generate`: the fp32 model decoded by Transformers' plain `generate`, without trocr-tune's engine.

The reference for the engine's speed: its row beside fp32's in a benchmark table is what the
engine (decoding/search.py, the shared cross-attention, channels-last pixels) gains on that model.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import EvalConfig, OptimizeConfig
from ..decoding.runners import TorchRunner, on_device
from ..model.loading import ModelBundle


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> TorchRunner:
    return TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device, engine=False)


def cannot_decode(cfg: EvalConfig) -> str | None:
    """Transformers' beam search cannot carry the CTC prefix state of joint decoding."""
    if cfg.ctc_joint > 0:
        return "plain generate cannot score CTC prefixes; compare with eval.ctc_joint=0"
    return None


def why_not(facts: dict[str, Any]) -> str:
    return "it is the reference: Transformers' own generate, which the fp32 row's engine replaces"
