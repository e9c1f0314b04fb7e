"""The registry of optimized variants and how a variant's artifact is loaded back.

Each variant is a small module with `apply(bundle, cfg, device) -> Runner`; variants whose
result cannot live in a plain checkpoint (int8 dynamic quantization, compilation, autocast)
are saved as the fp32 checkpoint plus a note in `trocr_tune.json` and re-applied
deterministically at load; pruned variants save a plain (sparse or smaller) checkpoint; ONNX
variants save the .onnx graphs beside the checkpoint.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:  # the registry itself stays import-light (CLI help, config validation)
    import torch

    from ..config import OptimizeConfig
    from ..decoding.runners import Runner
    from ..model.loading import ModelBundle

BASELINE = "fp32"


@dataclass(frozen=True)
class Variant:
    name: str
    module: str  # module in this package exposing apply(bundle, cfg, device, **options)
    options: tuple[tuple[str, Any], ...]
    devices: tuple[str, ...]
    storage: str  # what `optimize --out` writes
    summary: str

    def apply(self, bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> Runner:
        if device.type not in self.devices:
            raise UserError(f"variant {self.name} runs on {' / '.join(self.devices)}, not {device.type}")
        module = importlib.import_module(f"{__name__}.{self.module}")
        runner: Runner = module.apply(bundle, cfg, device, **dict(self.options))
        return runner


_ALL = [
    Variant(
        BASELINE,
        "precision",
        (("dtype", None),),
        ("cpu", "cuda"),
        "checkpoint",
        "the model as trained: fp32, eager",
    ),
    Variant(
        "int8-dynamic",
        "quantize",
        (),
        ("cpu",),
        "fp32 checkpoint, re-quantized at load",
        "dynamic int8 quantization of every Linear layer (CPU)",
    ),
    Variant(
        "prune-l1",
        "prune",
        (),
        ("cpu", "cuda"),
        "sparse checkpoint",
        "L1 unstructured pruning (optimize.prune_*), masks kept through --finetune",
    ),
    Variant(
        "prune-structured",
        "structured",
        (),
        ("cpu", "cuda"),
        "smaller checkpoint",
        "removes encoder attention heads and FFN channels by importance (optimize.structured_amount)",
    ),
    Variant(
        "compile-default",
        "compile",
        (("mode", "default"),),
        ("cpu", "cuda"),
        "fp32 checkpoint, compiled at load",
        "torch.compile of the encoder and decoder forwards that generate calls",
    ),
    Variant(
        "compile-reduce-overhead",
        "compile",
        (("mode", "reduce-overhead"),),
        ("cpu", "cuda"),
        "fp32 checkpoint, compiled at load",
        "torch.compile mode reduce-overhead (CUDA graphs on GPU)",
    ),
    Variant(
        "compile-max-autotune",
        "compile",
        (("mode", "max-autotune"),),
        ("cpu", "cuda"),
        "fp32 checkpoint, compiled at load",
        "torch.compile mode max-autotune",
    ),
    Variant(
        "bf16",
        "precision",
        (("dtype", "bfloat16"),),
        ("cpu", "cuda"),
        "fp32 checkpoint, autocast at load",
        "bf16 autocast inference (CPUs with native bf16, GPUs)",
    ),
    Variant(
        "fp16",
        "precision",
        (("dtype", "float16"),),
        ("cuda",),
        "fp32 checkpoint, autocast at load",
        "fp16 autocast inference (GPU)",
    ),
    Variant(
        "onnx",
        "onnx",
        (("int8", False),),
        ("cpu",),
        "encoder.onnx + decoder.onnx",
        "ONNX export (decoder with past key/values) + greedy decoding in ONNX Runtime (extra [onnx])",
    ),
    Variant(
        "onnx-int8",
        "onnx",
        (("int8", True),),
        ("cpu",),
        "int8 encoder.onnx + decoder.onnx",
        "the ONNX graphs with ONNX Runtime dynamic int8 quantization",
    ),
]

VARIANTS: dict[str, Variant] = {v.name: v for v in _ALL}


def get_variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; choose from: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def variant_of(bundle: ModelBundle) -> str:
    """The variant an artifact was saved as (fp32 for an ordinary checkpoint)."""
    return str(bundle.info.extra.get("variant", BASELINE))


def load_runner(
    path: str | Path, device: torch.device, cfg: OptimizeConfig | None = None
) -> tuple[ModelBundle, Runner]:
    """Load a checkpoint or a variant artifact written by `trocr-tune optimize`, ready to decode."""
    from ..config import OptimizeConfig
    from ..decoding.runners import TorchRunner, on_device
    from ..model.loading import load_bundle

    bundle = load_bundle(path)
    name = variant_of(bundle)
    if name == BASELINE or bundle.info.extra.get("stored_as") == "checkpoint":
        return bundle, TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device)
    if name in ("onnx", "onnx-int8"):
        from .onnx import load_onnx_runner

        return bundle, load_onnx_runner(Path(path), bundle, device)
    return bundle, get_variant(name).apply(bundle, cfg or OptimizeConfig(), device)
