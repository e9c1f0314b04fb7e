"""fp32 (the baseline), bf16 and fp16 autocast inference."""

from __future__ import annotations

from typing import Any

import torch

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner, on_device
from ..errors import UserError
from ..model.loading import ModelBundle
from ..runtime import cpu_has_native_bf16


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device, dtype: str | None) -> TorchRunner:
    """The model under autocast to `dtype` ("bfloat16", "float16"; None: plain fp32). Weights stay
    fp32: autocast runs matrix products in low precision, reductions (softmax, norms) in fp32."""
    autocast = getattr(torch, dtype) if dtype else None
    reason = unavailable(device, dtype)
    if reason:
        raise UserError(f"{reason}: use {'fp16' if device.type == 'cuda' else 'fp32 or int8-dynamic'}")
    model = on_device(bundle.model, device)
    return TorchRunner(model, bundle.tokenizer, device, autocast=autocast)


def unavailable(device: torch.device, dtype: str | None) -> str | None:
    """bf16 where the hardware lacks it is refused, and said why (the benchmark then skips it):
    emulated bf16 on a CPU is many times slower than fp32 (docs/benchmark.md)."""
    if dtype != "bfloat16":
        return None
    if device.type == "cpu" and not cpu_has_native_bf16():
        return "this CPU has no native bf16 (AVX512-BF16 or AMX), so autocast would emulate it in software"
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16 support"
    return None


def why_not(facts: dict[str, Any], dtype: str | None) -> str:
    matrix = facts["linear_share"] + facts["conv_share"]
    return (
        f"autocast speeds up only matrix products and convolutions ({matrix:.0%} of fp32's time here) "
        "and casts their weights at every call"
    )
