"""Where code runs: device, native bf16 support, precision choice, process rank."""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX), where bf16
    autocast speeds matrix work up instead of emulating it."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


@lru_cache(maxsize=1)
def cpu_has_int8_dot() -> bool:
    """True on CPUs with int8 dot-product instructions (AVX512-VNNI / AVX-VNNI or AMX), where int8
    matrix products run several times faster than fp32 ones; AVX2 alone emulates them."""
    import torch

    probe = getattr(torch.cpu, "_is_vnni_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool((probe is not None and probe()) or (amx is not None and amx()))


def resolve_precision(requested: str, device: str | None = None) -> str:
    """`auto` -> bf16/fp16 on CUDA, bf16 on CPUs with native bf16, else fp32."""
    import torch

    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if requested != "auto":
        return requested
    if on_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0
