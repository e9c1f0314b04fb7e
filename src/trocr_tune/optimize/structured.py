"""prune-structured: remove whole encoder attention heads and FFN channels by importance.

Weight matrices really shrink, so inference does less work. Every layer loses the same number
of heads / channels (each layer chooses its own by importance), which keeps the config
homogeneous: the result is an ordinary checkpoint (ViT's `head_dim` key keeps the head size
when heads go). Decoder attention heads stay: TrOCR derives its head size from d_model /
heads, so removing them would need a model Transformers cannot load.

Importance is data-free: a head scores ||W_v[h]|| * ||W_o[:, h]||, an FFN channel
||W_1[c]|| * ||W_2[:, c]|| (what a channel can write times what it reads).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..config import OptimizeConfig
from ..decoding.runners import TorchRunner, on_device
from ..errors import UserError
from ..model.loading import ModelBundle


def _shrink(linear: torch.nn.Linear, keep: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A Linear keeping only `keep` indices of its output (dim 0) or input (dim 1) features."""
    weight = linear.weight.detach().index_select(dim, keep).clone()
    out_f, in_f = weight.shape
    new = torch.nn.Linear(in_f, out_f, bias=linear.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        bias = linear.bias.detach()
        new.bias.data.copy_(bias.index_select(0, keep) if dim == 0 else bias)
    return new


def _top(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the `count` highest scores, in their original order."""
    return torch.topk(scores, count).indices.sort().values


def prune_ffn(layer_mlp: Any, fc1: str, fc2: str, keep_count: int) -> None:
    up, down = getattr(layer_mlp, fc1), getattr(layer_mlp, fc2)
    scores = up.weight.detach().norm(dim=1) * down.weight.detach().norm(dim=0)
    keep = _top(scores, keep_count)
    setattr(layer_mlp, fc1, _shrink(up, keep, 0))
    setattr(layer_mlp, fc2, _shrink(down, keep, 1))


def prune_heads(attention: Any, head_dim: int, keep_count: int) -> None:
    heads = attention.q_proj.out_features // head_dim
    v = attention.v_proj.weight.detach().view(heads, head_dim, -1)
    o = attention.o_proj.weight.detach().view(attention.o_proj.out_features, heads, head_dim)
    scores = v.flatten(1).norm(dim=1) * o.permute(1, 0, 2).flatten(1).norm(dim=1)
    keep_heads = _top(scores, keep_count)
    keep = (keep_heads[:, None] * head_dim + torch.arange(head_dim)).flatten()
    for name in ("q_proj", "k_proj", "v_proj"):
        setattr(attention, name, _shrink(getattr(attention, name), keep, 0))
    attention.o_proj = _shrink(attention.o_proj, keep, 1)
    attention.num_attention_heads = keep_count


def prune_structured(model: Any, amount: float) -> dict[str, Any]:
    """Remove `amount` of the encoder heads and of the encoder/decoder FFN channels, in place."""
    enc_cfg, dec_cfg = model.config.encoder, model.config.decoder
    if enc_cfg.model_type not in ("vit", "deit"):
        raise UserError(f"prune-structured supports ViT/DeiT encoders, not {enc_cfg.model_type!r}")
    heads = enc_cfg.num_attention_heads
    head_dim = getattr(enc_cfg, "head_dim", None) or enc_cfg.hidden_size // heads
    keep_heads = max(1, heads - round(heads * amount))
    keep_inter = max(1, enc_cfg.intermediate_size - round(enc_cfg.intermediate_size * amount))
    keep_ffn = max(1, dec_cfg.decoder_ffn_dim - round(dec_cfg.decoder_ffn_dim * amount))
    for layer in model.encoder.layers:
        prune_heads(layer.attention, head_dim, keep_heads)
        prune_ffn(layer.mlp, "fc1", "fc2", keep_inter)
    for layer in model.decoder.model.decoder.layers:
        prune_ffn(layer, "fc1", "fc2", keep_ffn)
    report = {
        "encoder_heads": [heads, keep_heads],
        "encoder_intermediate": [enc_cfg.intermediate_size, keep_inter],
        "decoder_ffn": [dec_cfg.decoder_ffn_dim, keep_ffn],
    }
    enc_cfg.head_dim = head_dim
    enc_cfg.num_attention_heads = keep_heads
    enc_cfg.intermediate_size = keep_inter
    dec_cfg.decoder_ffn_dim = keep_ffn
    return report


def prepare(model: Any, cfg: OptimizeConfig) -> tuple[dict[str, Any], list[str]]:
    """Shrink `model` in place for `optimize`: (report, no zeros to keep: the weights are gone)."""
    return {"structure": prune_structured(model, cfg.structured_amount)}, []


def apply(bundle: ModelBundle, cfg: OptimizeConfig, device: torch.device) -> TorchRunner:
    model = copy.deepcopy(bundle.model)
    prune_structured(model, cfg.structured_amount)
    return TorchRunner(on_device(model, device), bundle.tokenizer, device)


def why_not(facts: dict[str, Any]) -> str:
    return (
        "it removes encoder attention heads and FFN channels only; the encoder is "
        f"{facts['encoder_share']:.0%} of fp32's time here"
    )
