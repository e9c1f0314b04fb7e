"""The registry of optimized variants: each entry owns how it is built, saved, loaded and sized.

Each variant is a small module with `apply(bundle, cfg, device) -> Runner`, and its entry says how
its artifact is stored (`stored`):
- `reapplied`: int8 dynamic quantization, compilation and autocast cannot live in a plain
  checkpoint, so the fp32 checkpoint is saved with a note in `trocr_tune.json` and the variant
  is re-applied deterministically at load;
- `checkpoint`: pruning changes the weights (its module's `prepare`, then optionally a
  fine-tune), and the result is a plain (sparse or smaller) checkpoint;
- `graphs`: the ONNX variants save their graphs beside the checkpoint (module `save`/`load`).
Nothing outside this registry branches on a variant's name.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:  # the registry itself stays import-light (CLI help, config validation)
    import torch

    from ..config import EvalConfig, OptimizeConfig
    from ..decoding.runners import Runner
    from ..model.loading import ModelBundle

BASELINE = "fp32"


@dataclass(frozen=True)
class Variant:
    name: str
    module: str  # module in this package exposing apply(bundle, cfg, device, **options)
    options: tuple[tuple[str, Any], ...]
    devices: tuple[str, ...]
    storage: str  # what `optimize --out` writes, in words
    summary: str
    stored: str = "reapplied"  # reapplied | checkpoint | graphs (see the module docstring)
    # A Python module the variant needs, and the trocr-tune extra that installs it.
    requires: tuple[str, str] | None = None

    def _module(self) -> Any:
        return importlib.import_module(f"{__name__}.{self.module}")

    def unavailable(self, device: torch.device) -> str | None:
        """Why the variant cannot run here (device, missing package), or None."""
        if device.type not in self.devices:
            return f"runs on {'/'.join(self.devices)}, this table is {device.type}"
        if self.requires and importlib.util.find_spec(self.requires[0]) is None:
            return f"{self.requires[0]} not installed (pip install 'trocr-tune[{self.requires[1]}]')"
        own = getattr(self._module(), "unavailable", None)  # e.g. bf16 on a CPU without native bf16
        return own(device, **dict(self.options)) if own else None

    def cannot_decode(self, cfg: EvalConfig) -> str | None:
        """Why the variant cannot decode with these settings, or None (its module's `cannot_decode`)."""
        own = getattr(self._module(), "cannot_decode", None)
        return own(cfg) if own else None

    def why_not(self, facts: dict[str, Any]) -> str:
        """Why this variant does not beat fp32 here, from the baseline's measured `facts` (its
        module's `why_not`, e.g. the share of time its change touches)."""
        own = getattr(self._module(), "why_not", None)
        return str(own(facts, **dict(self.options))) if own else ""

    def apply(self, bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> Runner:
        if device.type not in self.devices:
            raise UserError(f"variant {self.name} runs on {' / '.join(self.devices)}, not {device.type}")
        runner: Runner = self._module().apply(bundle, cfg, device, **dict(self.options))
        return runner

    @property
    def changes_weights(self) -> bool:
        """Pruning: the weights themselves change (so `optimize --finetune` applies)."""
        return self.stored == "checkpoint"

    def prepare(self, bundle: ModelBundle, cfg: OptimizeConfig) -> tuple[dict[str, Any], list[str]]:
        """Change the weights in place before saving: (report, modules whose zeros a fine-tune keeps)."""
        prepared: tuple[dict[str, Any], list[str]] = self._module().prepare(bundle.model, cfg)
        return prepared

    def describe(self, bundle: ModelBundle, cfg: OptimizeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """What the saved weights look like (e.g. sparsity): (for the report, for the artifact's note)."""
        describe = getattr(self._module(), "describe", None)
        return describe(bundle.model, cfg) if describe else ({}, {})

    def save(self, bundle: ModelBundle, out: Path, cfg: OptimizeConfig) -> None:
        """Write what the artifact holds beyond the checkpoint (the ONNX graphs)."""
        if self.stored == "graphs":
            self._module().save(bundle, out, cfg, **dict(self.options))

    def load(self, path: Path, bundle: ModelBundle, device: torch.device, cfg: OptimizeConfig) -> Runner:
        """A runner over a saved artifact of this variant."""
        from ..decoding.runners import TorchRunner, on_device

        if self.stored == "checkpoint":
            return TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device)
        if self.stored == "graphs":
            runner: Runner = self._module().load(path, bundle, device, **dict(self.options))
            return runner
        return self.apply(bundle, cfg, device)

    def saved_bytes(self, runner: Any, model_path: str) -> int:
        """Bytes the variant's weights take once saved, measured on the runner built in memory."""
        import tempfile

        own = getattr(self._module(), "saved_bytes", None)  # e.g. int8: its quantized state dict
        if own is not None:
            return int(own(runner))
        if self.stored == "graphs":
            return artifact_size(runner.folder)
        if self.stored == "checkpoint":  # dense: unstructured zeros are stored as zeros
            with tempfile.TemporaryDirectory() as tmp:
                runner.model.save_pretrained(tmp)
                return artifact_size(Path(tmp))
        return artifact_size(Path(model_path))  # weights unchanged (compile, autocast)


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
        "generate",
        "reference",
        (),
        ("cpu", "cuda"),
        "checkpoint",
        "fp32 decoded by Transformers' plain generate: the reference the fp32 engine is measured against",
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
        stored="checkpoint",
    ),
    Variant(
        "prune-structured",
        "structured",
        (),
        ("cpu", "cuda"),
        "smaller checkpoint",
        "removes encoder attention heads and FFN channels by importance (optimize.structured_amount)",
        stored="checkpoint",
    ),
    Variant(
        "compile-default",
        "compile",
        (("mode", "default"),),
        ("cpu", "cuda"),
        "fp32 checkpoint, compiled at load",
        "torch.compile of the encoder (and of a decoder the engine's own loop does not decode)",
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
        "ONNX export (decoder with past key/values), decoded in ONNX Runtime (extra [onnx])",
        stored="graphs",
        requires=("onnxruntime", "onnx"),
    ),
    Variant(
        "onnx-int8",
        "onnx",
        (("int8", True),),
        ("cpu",),
        "int8 encoder.onnx + decoder.onnx",
        "the ONNX graphs with ONNX Runtime dynamic int8 quantization",
        stored="graphs",
        requires=("onnxruntime", "onnx"),
    ),
    Variant(
        "openvino",
        "onnx",
        (("int8", False), ("runtime", "openvino")),
        ("cpu",),
        "encoder.onnx + decoder.onnx",
        "the ONNX graphs, the encoder compiled by OpenVINO (bf16 where the CPU has it) (extra [openvino])",
        stored="graphs",
        requires=("openvino", "openvino"),
    ),
]


def at_most(share: float) -> float:
    """The most a change can speed up a whole that it makes free in `share` of its time (Amdahl)."""
    return float("inf") if share >= 1 else 1 / (1 - share)


def artifact_size(folder: Path) -> int:
    """Bytes of the weights/graphs directly in `folder` (safetensors, onnx, pt), not sub-folders."""
    return sum(
        p.stat().st_size for p in folder.glob("*") if p.suffix in (".safetensors", ".onnx", ".pt", ".data")
    )


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
    if name == BASELINE:
        return bundle, TorchRunner(on_device(bundle.model, device), bundle.tokenizer, device)
    return bundle, get_variant(name).load(Path(path), bundle, device, cfg or OptimizeConfig())
