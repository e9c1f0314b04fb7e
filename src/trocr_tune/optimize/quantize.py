"""int8-dynamic: dynamic int8 quantization of every Linear layer, for CPU inference.

Dynamic quantization is a deterministic function of the fp32 weights, so the artifact stores
the fp32 checkpoint and this module re-applies it at load (a second or so): quantized modules
have no safetensors form that plain Transformers could load.
"""

from __future__ import annotations

import copy
import platform
import warnings
from typing import Any

import torch

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner
from ..model.loading import ModelBundle


def quantize_int8(model: Any) -> Any:
    """A copy of `model` whose nn.Linear layers run int8 weights with int8 dynamic activations."""
    engines = torch.backends.quantized.supported_engines
    # x86/fbgemm kernels on Intel/AMD, qnnpack on Arm.
    wanted = "qnnpack" if platform.machine().lower() in ("arm64", "aarch64") else "x86"
    if wanted in engines:
        torch.backends.quantized.engine = wanted
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which this project avoids
        # (it slows and pollutes imports); the eager dynamic path still works in torch 2.13.
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8
        )


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> TorchRunner:
    return TorchRunner(quantize_int8(bundle.model.cpu()), bundle.tokenizer, device)


def saved_bytes(runner: TorchRunner) -> int:
    """Bytes of the quantized state dict (what int8 weights take once saved)."""
    import io

    buffer = io.BytesIO()
    torch.save(runner.model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def why_not(facts: dict[str, Any]) -> str:
    """Why int8 does not pay, from the baseline's measured time shares."""
    from . import at_most

    linear, conv = facts["linear_share"], facts["conv_share"]
    parts = [f"int8 replaces only the Linear layers, {linear:.0%} of fp32's time here"]
    if conv >= 0.05:
        parts.append(f"the convolutions ({conv:.0%}) stay fp32")
    parts.append(f"so even free Linear layers would give at most {at_most(linear):.2f}x")
    if not facts.get("int8_dot"):
        parts.append("and this CPU has no VNNI/AMX int8 instructions, so int8 products gain little over fp32")
    return "; ".join(parts)
