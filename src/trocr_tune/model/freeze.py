"""Parts of a VisionEncoderDecoderModel that training can hold fixed (`train.freeze`).

Each registry entry finds its own modules; freezing sets `requires_grad=False`, so the Trainer's
optimizer never sees those weights and autograd skips their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:  # config.py validates the names without importing torch
    from torch import nn


def _stem(model: Any) -> list[nn.Module]:
    """The encoder's first layer: a hybrid encoder's convolutional stem (BiT's embedder), or a
    ViT/DeiT's patch embedding. At 48 x 768 the BiT stem's weight gradient, taken over every
    input pixel, is ~30% of a bare CPU training step (17% in the Trainer) for 1% of the parameters."""
    embeddings = getattr(model.encoder, "embeddings", None)
    backbone = getattr(embeddings, "backbone", None)
    for owner in (getattr(backbone, "bit", None), backbone):
        stem: Any = getattr(owner, "embedder", None)
        if hasattr(stem, "parameters"):
            return [stem]
    patches: Any = getattr(embeddings, "patch_embeddings", None)
    if hasattr(patches, "parameters"):
        return [patches]
    raise UserError(
        f"train.freeze=stem: the {type(model.encoder).__name__} encoder has neither a convolutional "
        "stem nor a patch embedding to freeze"
    )


def _encoder(model: Any) -> list[nn.Module]:
    return [model.encoder]


def _decoder(model: Any) -> list[nn.Module]:
    return [model.decoder]


# Name -> the modules it freezes.
FREEZABLE: dict[str, Callable[[Any], list[nn.Module]]] = {
    "stem": _stem,
    "encoder": _encoder,
    "decoder": _decoder,
}


def freeze_parts(model: Any, parts: list[str]) -> str:
    """Freeze `parts` (FREEZABLE names) of `model`; returns a one-line summary ('' for none)."""
    counts = []
    for name in parts:
        if name not in FREEZABLE:
            raise UserError(f"train.freeze: {name!r} is not one of: {', '.join(FREEZABLE)}")
        n = 0
        for module in FREEZABLE[name](model):
            for param in module.parameters():
                if param.requires_grad:
                    param.requires_grad = False
                    n += param.numel()
        counts.append(f"{name} ({n:,} parameters)")
    if parts and not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"train.freeze={','.join(parts)} leaves no parameter to train")
    return f"frozen: {', '.join(counts)}" if counts else ""
