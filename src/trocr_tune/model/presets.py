"""From-scratch TrOCR architectures: a ViT-family encoder + TrOCR decoder, as standard configs.

Everything built here is a plain `VisionEncoderDecoderModel` whose encoder is a stock Transformers
model, so `VisionEncoderDecoderModel.from_pretrained` loads it without trocr-tune or remote code:
ViT for the patch presets, and for `hybrid` and `conv` the DPT-hybrid encoder (a BiT convolutional
stem whose stride-8 feature map is the token grid of ViT layers, the "R50+ViT" hybrid of the ViT
paper; `conv` keeps no ViT layer, so its encoder is the convolutional network alone). On two CPU
cores convolutions learn to read several times faster than linear patches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from transformers import VisionEncoderDecoderModel


@dataclass(frozen=True)
class Preset:
    """Sizes of one from-scratch architecture."""

    encoder_layers: int
    encoder_hidden: int
    encoder_heads: int
    decoder_layers: int
    decoder_hidden: int
    decoder_heads: int
    # None: patches span the full image height, so the encoder reads a line as a sequence of
    # vertical strips (one token per `patch_width` columns), like a CRNN's feature columns.
    patch_height: int | None
    patch_width: int
    description: str
    # Hybrid presets: BiT stem widths (stem, stage 1, stage 2, stage 3); the token grid has stride 8.
    stem: tuple[int, int, int, int] | None = None
    # Pad the stem's max-pool "SAME" (a 16-px-high input keeps 4 rows after it, not 3).
    same_pool: bool = False
    # The hub TrOCR architectures: the encoder family, and the decoder settings their
    # config.json files publish where they differ from ours.
    encoder_model: str = "vit"  # vit or deit
    qkv_bias: bool = True
    decoder_ffn: int | None = None  # None: 4 x decoder_hidden
    activation: str = "gelu"
    scale_embedding: bool = False
    tie_embeddings: bool = True
    max_positions: int | None = None  # None: what the data needs (a power of two >= 64)
    hub: str | None = None  # the hub checkpoint with this architecture


PRESETS: dict[str, Preset] = {
    "tiny": Preset(2, 64, 2, 2, 64, 2, 8, 8, "2+2 layers x 64, 8x8 patches: tests and smoke runs"),
    "mini": Preset(
        4, 128, 4, 2, 128, 4, None, 4, "4+2 layers x 128, full-height 4-px strips: fast CPU training"
    ),
    "hybrid": Preset(
        2,
        128,
        4,
        2,
        128,
        4,
        8,
        8,
        "BiT conv stem (32-64-128-256, stride 8) + 2 ViT layers x 128, 2 decoder layers",
        stem=(32, 64, 128, 256),
    ),
    "conv": Preset(
        0,
        128,
        4,
        2,
        128,
        4,
        8,
        8,
        "BiT convolutional encoder (64-128-256-256, stride 8, no ViT layers) + 2 decoder layers x 128: "
        "learns to read fastest from scratch on two CPU cores (the demo's)",
        stem=(64, 128, 256, 256),
        same_pool=True,
    ),
    "small": Preset(6, 192, 3, 3, 192, 3, 8, 8, "6+3 layers x 192, 8x8 patches"),
    "base": Preset(
        12, 384, 6, 6, 384, 6, 16, 16, "12+6 layers x 384, 16x16 patches: GPU from-scratch training"
    ),
    # The two hub TrOCR architectures, from scratch (GPU training; speed work on CPU). The
    # vocabulary is the data's characters, not the hub's 64,044 / 50,265 subword tokens: to start
    # from the hub's weights and tokenizer, name the checkpoint in model.name_or_path instead.
    "trocr-small": Preset(
        12,
        384,
        6,
        6,
        256,
        8,
        16,
        16,
        "microsoft/trocr-small-*: DeiT-small encoder (12 x 384, 16x16 patches) + 6 x 256 decoder "
        "(FFN 1024, ReLU, scaled embeddings, untied output); hub input 384x384",
        encoder_model="deit",
        decoder_ffn=1024,
        activation="relu",
        scale_embedding=True,
        tie_embeddings=False,
        max_positions=512,
        hub="microsoft/trocr-small-handwritten",
    ),
    "trocr-base": Preset(
        12,
        768,
        12,
        12,
        1024,
        16,
        16,
        16,
        "microsoft/trocr-base-*: ViT-base encoder (12 x 768, 16x16 patches, no qkv bias) + 12 x 1024 "
        "decoder (FFN 4096, GELU); hub input 384x384",
        qkv_bias=False,
        decoder_ffn=4096,
        max_positions=512,
        hub="microsoft/trocr-base-handwritten",
    ),
}


def build_preset_model(
    name: str,
    vocab_size: int,
    image_height: int,
    image_width: int,
    max_positions: int,
    special_ids: dict[str, int],
    dropout: float = 0.1,
) -> VisionEncoderDecoderModel:
    """A randomly initialised model of preset `name` for `image_height x image_width` lines."""
    from transformers import (
        DeiTConfig,
        TrOCRConfig,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    if name not in PRESETS:
        raise UserError(f"model.preset={name!r} is not one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    patch_height = p.patch_height or image_height
    if image_height % patch_height or image_width % p.patch_width:
        raise UserError(
            f"model.image_height x model.image_width = {image_height}x{image_width} is not a multiple of the "
            f"{name} preset's {patch_height}x{p.patch_width} patches"
        )
    if p.stem is not None:
        cells = (image_height // 8) * (image_width // 8)
        if round(cells**0.5) ** 2 != cells:
            # DPT keeps its position embeddings as a square grid and resamples them to the feature map.
            raise UserError(
                f"the {name} preset needs a square number of 8x8 cells; "
                f"{image_height}x{image_width} gives {image_height // 8}x{image_width // 8} = {cells} "
                "(e.g. 16x256, 24x384 or 32x512)"
            )
        encoder = _hybrid_encoder(p, image_height, image_width, dropout)
    else:
        encoder = (DeiTConfig if p.encoder_model == "deit" else ViTConfig)(
            hidden_size=p.encoder_hidden,
            num_hidden_layers=p.encoder_layers,
            num_attention_heads=p.encoder_heads,
            intermediate_size=4 * p.encoder_hidden,
            image_size=[image_height, image_width],
            patch_size=[patch_height, p.patch_width],
            num_channels=3,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=0.0,
            qkv_bias=p.qkv_bias,
        )
    if p.max_positions is not None:
        max_positions = max(max_positions, p.max_positions)
    decoder = TrOCRConfig(
        vocab_size=vocab_size,
        d_model=p.decoder_hidden,
        decoder_layers=p.decoder_layers,
        decoder_attention_heads=p.decoder_heads,
        decoder_ffn_dim=p.decoder_ffn or 4 * p.decoder_hidden,
        max_position_embeddings=max_positions,
        dropout=dropout,
        activation_function=p.activation,
        use_learned_position_embeddings=True,
        layernorm_embedding=True,
        scale_embedding=p.scale_embedding,
        tie_word_embeddings=p.tie_embeddings,
        # The hub models' cross-attention reads the encoder's width directly (no enc_to_dec_proj).
        cross_attention_hidden_size=p.encoder_hidden if p.hub else None,
        is_decoder=True,  # from_encoder_decoder_configs also turns cross-attention on
        pad_token_id=special_ids["pad"],
        bos_token_id=special_ids["bos"],
        eos_token_id=special_ids["eos"],
        decoder_start_token_id=special_ids["start"],
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.pad_token_id = special_ids["pad"]
    config.eos_token_id = special_ids["eos"]
    config.bos_token_id = special_ids["bos"]
    config.decoder_start_token_id = special_ids["start"]
    config.vocab_size = vocab_size
    return VisionEncoderDecoderModel(config=config)


def _hybrid_encoder(p: Preset, image_height: int, image_width: int, dropout: float) -> Any:
    """DPT-hybrid encoder config: BiT bottleneck stages (one block each) + ViT layers on its grid."""
    from transformers import BitConfig, DPTConfig

    assert p.stem is not None
    stem, *widths = p.stem
    backbone = BitConfig(
        embedding_size=stem,
        hidden_sizes=widths,
        depths=[1] * len(widths),
        layer_type="bottleneck",
        global_padding="SAME",
        embedding_dynamic_padding=p.same_pool,
        output_stride=8,
        num_groups=8,
        out_features=[f"stage{i + 1}" for i in range(len(widths))],  # type: ignore[call-arg]
    )
    return DPTConfig(
        is_hybrid=True,
        backbone_config=backbone,
        backbone_featmap_shape=[1, widths[-1], image_height // 8, image_width // 8],
        hidden_size=p.encoder_hidden,
        num_hidden_layers=p.encoder_layers,
        num_attention_heads=p.encoder_heads,
        intermediate_size=4 * p.encoder_hidden,
        image_size=[image_height, image_width],
        patch_size=8,
        num_channels=3,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
    )


# Encoders made of pre-LayerNorm residual blocks (Transformers names their two residual output
# projections attention.output.dense + output.dense in DPT, attention.o_proj + mlp.fc2 in ViT/DeiT).
GROWABLE_ENCODERS = ("dpt", "vit", "deit")
RESIDUAL_OUTPUTS = ("attention.output.dense", "output.dense", "attention.o_proj", "mlp.fc2")


def grow_encoder(model: VisionEncoderDecoderModel, layers: int) -> int:
    """Append `layers` Transformer layers to the encoder, each starting as the identity.

    Their residual output projections start at zero, so each new pre-LN block adds nothing: the
    grown model reads exactly as before and training learns to use the new layers (a `conv` base
    gains context across the line). Returns the encoder's new layer count.
    """
    import torch

    config: Any = model.config.encoder
    old = int(config.num_hidden_layers)
    if layers < 1:
        return old
    if config.model_type not in GROWABLE_ENCODERS:
        raise UserError(
            f"model.add_encoder_layers: a {config.model_type} encoder cannot be grown "
            f"(supported: {', '.join(GROWABLE_ENCODERS)})"
        )
    new_config = type(config).from_dict({**config.to_dict(), "num_hidden_layers": old + layers})
    encoder: Any = type(model.encoder)(new_config)
    stack = next(
        (name, mod)
        for name, mod in encoder.named_modules()
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == old + layers
    )
    fresh = tuple(f"{stack[0]}.{i}." for i in range(old, old + layers))
    missing, unexpected = encoder.load_state_dict(model.encoder.state_dict(), strict=False)
    if unexpected or any(not key.startswith(fresh) for key in missing):
        raise UserError(
            f"model.add_encoder_layers: the {config.model_type} encoder's weights do not carry over"
        )
    with torch.no_grad():
        for block in stack[1][old:]:
            outputs = [mod for name, mod in block.named_modules() if name in RESIDUAL_OUTPUTS]
            if len(outputs) != 2:
                raise UserError(f"model.add_encoder_layers: unknown {config.model_type} layer structure")
            for proj in outputs:
                proj.weight.zero_()
                proj.bias.zero_()
    encoder.to(dtype=next(model.encoder.parameters()).dtype)
    model.encoder = encoder
    model.config.encoder = new_config
    return old + layers
