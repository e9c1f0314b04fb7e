"""fp32 (the baseline), bf16 and fp16 autocast inference."""

from __future__ import annotations

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
    if autocast == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        raise UserError("bf16 on this CPU would be emulated (no AVX512-BF16 / AMX): use fp32 or int8-dynamic")
    if autocast == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bf16 support: use fp16")
    model = on_device(bundle.model, device)
    return TorchRunner(model, bundle.tokenizer, device, autocast=autocast)
