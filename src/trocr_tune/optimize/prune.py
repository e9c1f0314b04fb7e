"""prune-l1: L1 unstructured pruning whose masks survive fine-tuning.

`torch.nn.utils.prune` picks the weights (global or per layer) and the masks are made
permanent at once, so the checkpoint stays a plain one. During an optional fine-tune the
`MaskKeeper` callback re-derives each mask from the zeros and re-applies it after every
optimizer step: pruned weights cannot grow back (the reference project's masks vanished), and
checkpoints, resume and best-model reloads need nothing special.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.utils.prune as torch_prune
from transformers import TrainerCallback

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner, on_device
from ..model.loading import ModelBundle

OUTPUT_PROJECTION = "decoder.output_projection"


def prunable_linears(model: Any, scope: str, output_projection: bool) -> dict[str, torch.nn.Linear]:
    """The Linear layers generate uses, by scope; the unused ViT pooler is left alone."""
    out = {}
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".pooler." in f".{name}.":
            continue
        part = "decoder" if name.startswith("decoder.") else "encoder"  # enc_to_dec_proj counts as encoder
        if scope != "both" and part != scope:
            continue
        if name == OUTPUT_PROJECTION and not output_projection:
            continue
        out[name] = module
    return out


def untie_output_projection(model: Any) -> None:
    """Give the output projection its own weight so pruning it leaves the embeddings dense."""
    projection = model.decoder.output_projection
    embeddings = model.decoder.get_input_embeddings()
    if projection.weight is embeddings.weight:
        projection.weight = torch.nn.Parameter(embeddings.weight.detach().clone())
    for config in (model.config, model.config.decoder):
        config.tie_word_embeddings = False


def sparsity(modules: dict[str, torch.nn.Linear]) -> dict[str, float]:
    """Share of exactly-zero weights per module, and `overall` across them."""
    report = {name: float((m.weight == 0).float().mean()) for name, m in modules.items()}
    total = sum(m.weight.numel() for m in modules.values())
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    report["overall"] = zeros / total if total else 0.0
    return report


def prune_l1(model: Any, cfg: OptimizeConfig) -> dict[str, float]:
    """Zero the smallest-magnitude weights in place; returns the achieved sparsity per module."""
    if cfg.prune_output_projection and cfg.prune_scope != "encoder":
        untie_output_projection(model)
    modules = prunable_linears(model, cfg.prune_scope, cfg.prune_output_projection)
    params = [(m, "weight") for m in modules.values()]
    if cfg.prune_global:
        torch_prune.global_unstructured(
            params, pruning_method=torch_prune.L1Unstructured, amount=cfg.prune_amount
        )
    else:
        for module, name in params:
            torch_prune.l1_unstructured(module, name, amount=cfg.prune_amount)
    for module, name in params:
        torch_prune.remove(module, name)  # weight = weight_orig * mask, as a plain parameter
    return sparsity(modules)


class MaskKeeper(TrainerCallback):
    """Keeps pruned weights at zero during fine-tuning (masks re-derived from the zeros)."""

    def __init__(self, module_names: list[str]) -> None:
        self.module_names = module_names
        self.masks: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        modules = dict(model.named_modules())
        self.masks = {name: modules[name].weight.detach() != 0 for name in self.module_names}

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, mask in self.masks.items():
                weight = modules[name].weight
                weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def prepare(model: Any, cfg: OptimizeConfig) -> tuple[dict[str, Any], list[str]]:
    """Prune `model` in place for `optimize`: (report, the pruned modules a fine-tune keeps at zero)."""
    report = {"sparsity_after_pruning": prune_l1(model, cfg)}
    return report, list(prunable_linears(model, cfg.prune_scope, cfg.prune_output_projection))


def describe(model: Any, cfg: OptimizeConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The sparsity of the weights as saved (after any fine-tune): (report, artifact note)."""
    names = prunable_linears(model, cfg.prune_scope, cfg.prune_output_projection)
    measured = sparsity(names)
    return {"sparsity": measured}, {"sparsity": measured["overall"]}


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> TorchRunner:
    """Prune a copy in memory (no fine-tune); `trocr-tune optimize` adds the fine-tune."""
    import copy

    model = copy.deepcopy(bundle.model)
    prune_l1(model, cfg)
    return TorchRunner(on_device(model, device), bundle.tokenizer, device)


def why_not(facts: dict[str, Any]) -> str:
    return (
        "unstructured zeros are stored and multiplied as dense matrices, so the CPU does the same "
        "work (prune-structured shrinks the matrices)"
    )
