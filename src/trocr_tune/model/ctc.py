"""Auxiliary CTC loss on the encoder output (joint CTC-attention training).

The attention decoder of a TrOCR trained from scratch must discover the alignment between image
columns and characters on its own, which takes long on a CPU. A CTC loss on the encoder output
gives that alignment directly. It adds no parameters: encoder columns (patch tokens averaged over
the image height, projected like the decoder's cross-attention input) are scored by the decoder's
own output projection, and `<pad>` (never a target) serves as the CTC blank. The checkpoint stays
an ordinary VisionEncoderDecoderModel and `generate` is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UserError


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def encoder_grid(model: Any) -> tuple[int, int, int]:
    """(leading special tokens, rows, columns) of the encoder's output token grid.

    ViT / DeiT: one token per patch after the class (and distillation) token. Swin: no special
    token; each stage after the first halves both sides of the patch grid.
    """
    cfg = model.config.encoder
    size = _pair(cfg.image_size)
    patch = _pair(getattr(cfg, "patch_size", 1))
    if cfg.model_type in ("vit", "deit") or (cfg.model_type == "dpt" and cfg.is_hybrid):
        # DPT-hybrid: a BiT convolutional stem whose feature map has stride `patch_size`.
        return (2 if cfg.model_type == "deit" else 1), size[0] // patch[0], size[1] // patch[1]
    if cfg.model_type == "swin":
        scale = 2 ** (len(cfg.depths) - 1)
        return 0, size[0] // patch[0] // scale, size[1] // patch[1] // scale
    if cfg.model_type == "segformer" and not cfg.reshape_last_stage:
        # Overlapping patch embeddings: kernel k, stride s, padding k // 2 at every stage.
        rows, cols = size
        for kernel, stride in zip(cfg.patch_sizes, cfg.strides, strict=True):
            rows = (rows + 2 * (kernel // 2) - kernel) // stride + 1
            cols = (cols + 2 * (kernel // 2) - kernel) // stride + 1
        return 0, rows, cols
    raise UserError(
        "train.ctc_weight needs a ViT, DeiT, Swin, DPT-hybrid or sequence-output SegFormer encoder, "
        f"not {cfg.model_type!r}"
    )


def column_features(model: Any, encoder_states: torch.Tensor) -> torch.Tensor:
    """(batch, columns, decoder hidden): encoder tokens averaged over height, in decoder space."""
    extra, rows, cols = encoder_grid(model)
    b, _, d = encoder_states.shape
    grid = encoder_states[:, extra : extra + rows * cols].reshape(b, rows, cols, d)
    columns = grid.mean(dim=1)
    proj = getattr(model, "enc_to_dec_proj", None)
    return proj(columns) if proj is not None else columns


def ctc_loss(
    model: Any, encoder_states: torch.Tensor, labels: torch.Tensor, pad_id: int, eos_id: int
) -> torch.Tensor:
    """Mean CTC loss of the labels (eos and -100 padding removed) given the encoder output."""
    columns = column_features(model, encoder_states)
    logits = model.decoder.output_projection(columns)
    log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    keep = (labels != -100) & (labels != eos_id)
    targets = labels[keep]
    target_lengths = keep.sum(dim=1)
    input_lengths = torch.full((labels.shape[0],), log_probs.shape[0], dtype=torch.long, device=labels.device)
    # zero_infinity: a label longer than the column count cannot be aligned; it adds nothing
    # instead of an infinite loss.
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=pad_id, zero_infinity=True)


def ctc_log_probs(model: Any, encoder_states: torch.Tensor) -> torch.Tensor:
    """(batch, columns, vocabulary) CTC log-probabilities of each image's encoder columns."""
    logits = model.decoder.output_projection(column_features(model, encoder_states))
    return F.log_softmax(logits.float(), dim=-1)


def ctc_log_likelihood(
    model: Any,
    encoder_states: torch.Tensor,
    rows: list[list[int]],
    pad_id: int,
    rows_per_image: int = 1,
) -> torch.Tensor:
    """log p_CTC(row | image) of each token row (no special tokens) given its image's encoder output.

    `encoder_states` holds one image per `rows_per_image` consecutive rows (e.g. the beams of one
    image). Rows longer than the columns can align get -inf.
    """
    log_probs = ctc_log_probs(model, encoder_states).transpose(0, 1)
    log_probs = log_probs.repeat_interleave(rows_per_image, dim=1)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    targets = torch.tensor([t for r in rows for t in r], dtype=torch.long)
    frames = torch.full((len(rows),), log_probs.shape[0], dtype=torch.long)
    nll = F.ctc_loss(log_probs.cpu(), targets, frames, lengths, blank=pad_id, reduction="none")
    return -nll


def ctc_greedy(model: Any, pixel_values: torch.Tensor, pad_id: int) -> list[list[int]]:
    """Best-path CTC decoding of the encoder alone (a diagnostic of what the encoder reads)."""
    with torch.inference_mode():
        states = model.encoder(pixel_values=pixel_values).last_hidden_state
        best = model.decoder.output_projection(column_features(model, states)).argmax(-1)
    out = []
    for row in best.tolist():
        ids, previous = [], None
        for token in row:
            if token != previous and token != pad_id:
                ids.append(token)
            previous = token
        out.append(ids)
    return out
