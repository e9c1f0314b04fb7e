"""`generate`: the fp32 model decoded by Transformers' plain `generate`, without trocr-tune's engine.

The reference for the engine's speed: its row beside fp32's in a benchmark table is what the
engine (decoding/search.py, the shared cross-attention, channels-last pixels) gains on that model.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner, on_device
from ..model.loading import ModelBundle


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> TorchRunner:
    return TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device, engine=False)


def why_not(facts: dict[str, Any]) -> str:
    return "it is the reference: Transformers' own generate, which the fp32 row's engine replaces"
