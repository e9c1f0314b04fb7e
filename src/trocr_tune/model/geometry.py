"""Input geometry: the checkpoint's own resize, a stretch to a new size, or line resize + pad.

The image processor saved with the model *is* the geometry: `line` mode saves a stock
`DonutImageProcessor` (aspect-preserving resize into H x W, then centred padding), so plain
`TrOCRProcessor.from_pretrained` reproduces exactly the pixels the model was trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import VisionEncoderDecoderModel
from transformers.models.donut.image_processing_pil_donut import DonutImageProcessorPil
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from ..errors import UserError

# The first reference pipeline resized and padded every line to 256 x 50 (W x H).
REFERENCE_SIZE = (50, 256)
TROCR_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


def target_size(mode: str, height: int, width: int) -> tuple[int, int]:
    """(height, width) the encoder sees in `stretch`/`line`/`reference` mode."""
    return REFERENCE_SIZE if mode == "reference" else (height, width)


def line_image_processor(
    height: int, width: int, mean: Any = None, std: Any = None
) -> DonutImageProcessorPil:
    """Aspect-preserving resize into height x width, centred padding, TrOCR normalisation."""
    return DonutImageProcessorPil(
        size={"height": height, "width": width},
        do_resize=True,
        do_thumbnail=True,
        do_align_long_axis=False,
        do_pad=True,
        do_normalize=True,
        image_mean=mean if mean is not None else TROCR_MEAN_STD[0],
        image_std=std if std is not None else TROCR_MEAN_STD[1],
    )


def stretch_image_processor(
    height: int, width: int, mean: Any = None, std: Any = None
) -> ViTImageProcessorPil:
    """The TrOCR checkpoints' own geometry: resize (stretch) to height x width."""
    return ViTImageProcessorPil(
        size={"height": height, "width": width},
        image_mean=mean if mean is not None else TROCR_MEAN_STD[0],
        image_std=std if std is not None else TROCR_MEAN_STD[1],
    )


def geometry_image_processor(
    mode: str, height: int, width: int, mean: Any = None, std: Any = None
) -> ViTImageProcessorPil | DonutImageProcessorPil:
    """The processor of a geometry: stretch for `processor`/`stretch`, resize + pad otherwise."""
    build = stretch_image_processor if mode in ("processor", "stretch") else line_image_processor
    return build(height, width, mean, std)


def encoder_image_size(model: VisionEncoderDecoderModel) -> tuple[int, int] | None:
    size = getattr(model.config.encoder, "image_size", None)
    if size is None:
        return None
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def resample_position_embeddings(model: VisionEncoderDecoderModel, height: int, width: int) -> bool:
    """Adapt a ViT/DeiT or DPT-hybrid encoder to height x width by resampling its position embeddings once.

    Returns False when the encoder already has that size. The grid of learned embeddings is
    interpolated (ViT/DeiT: bicubically on its patch grid; DPT-hybrid: bilinearly on the square
    grid Transformers reads its table as); class (and DeiT distillation) tokens are kept as they are.
    """
    encoder = model.encoder
    encoder_config: Any = model.config.encoder
    kind = encoder_config.model_type
    old = encoder_image_size(model)
    if old == (height, width):
        return False
    hybrid = kind == "dpt" and getattr(encoder_config, "is_hybrid", False)
    if kind not in ("vit", "deit") and not hybrid:
        raise UserError(
            f"geometry {height}x{width} needs position-embedding resampling of this {old} encoder, "
            f"which trocr-tune does for ViT/DeiT and DPT-hybrid (conv preset) encoders, not {kind!r}; "
            "use model.geometry=processor or the encoder's own size"
        )
    # from_dict, not a copy: a loaded config carries an attention implementation (sdpa) that a
    # DPT-hybrid's BiT backbone refuses when built anew.
    cfg: Any = type(encoder_config).from_dict(encoder_config.to_dict())
    patch = cfg.patch_size if isinstance(cfg.patch_size, (list, tuple)) else (cfg.patch_size, cfg.patch_size)
    if height % patch[0] or width % patch[1]:
        raise UserError(
            f"model.image_height x model.image_width = {height}x{width} is not a multiple of the "
            f"encoder's {patch[0]}x{patch[1]} patches"
        )
    assert old is not None
    state = encoder.state_dict()
    key = "embeddings.position_embeddings"
    pos = state[key]
    extra = 2 if kind == "deit" else 1
    grid_new = (height // patch[0], width // patch[1])
    tokens, grid = pos[:, :extra], pos[:, extra:]
    if hybrid:
        # DPT-hybrid reshapes its table to a square grid at every forward, then resizes it to the
        # feature map: the new table must be square too, and is that grid resampled.
        side_old, side_new = math.isqrt(grid.shape[1]), math.isqrt(grid_new[0] * grid_new[1])
        if side_new * side_new != grid_new[0] * grid_new[1]:
            raise UserError(
                f"a DPT-hybrid (conv preset) encoder needs a square number of {patch[0]}x{patch[1]} "
                f"patches; {height}x{width} gives {grid_new[0]}x{grid_new[1]} (keep width = 16 x height)"
            )
        grid_old, grid_to, mode = (side_old, side_old), (side_new, side_new), "bilinear"
        cfg.backbone_featmap_shape = [1, cfg.backbone_featmap_shape[1], grid_new[0], grid_new[1]]
    else:
        grid_old, grid_to, mode = (old[0] // patch[0], old[1] // patch[1]), grid_new, "bicubic"
    grid = grid.reshape(1, grid_old[0], grid_old[1], -1).permute(0, 3, 1, 2).float()
    grid = torch.nn.functional.interpolate(grid, size=grid_to, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_to[0] * grid_to[1], -1).to(pos.dtype)
    state[key] = torch.cat([tokens, grid], dim=1)
    cfg.image_size = [height, width]
    pooled = any(k.startswith("pooler.") for k in state)
    new_encoder: Any = type(encoder)(cfg, add_pooling_layer=pooled)
    new_encoder.load_state_dict(state)
    new_encoder.to(dtype=pos.dtype)
    model.encoder = new_encoder
    model.config.encoder = cfg
    return True
