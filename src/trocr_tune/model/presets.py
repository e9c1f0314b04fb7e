"""From-scratch TrOCR architectures: a ViT encoder + TrOCR decoder, as standard Transformers configs.

Everything built here is a plain `VisionEncoderDecoderModel` whose encoder is a stock ViT, so
`VisionEncoderDecoderModel.from_pretrained` loads it without trocr-tune or remote code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    patch_height: int
    patch_width: int
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(2, 64, 2, 2, 64, 2, 8, 8, "2+2 layers x 64: tests and smoke runs"),
    "small": Preset(6, 192, 3, 3, 192, 3, 8, 8, "6+3 layers x 192: CPU demo scale"),
    "base": Preset(12, 384, 6, 6, 384, 6, 16, 16, "12+6 layers x 384: GPU from-scratch training"),
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
    from transformers import TrOCRConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel, ViTConfig

    if name not in PRESETS:
        raise UserError(f"model.preset={name!r} is not one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if image_height % p.patch_height or image_width % p.patch_width:
        raise UserError(
            f"model.image_height x model.image_width = {image_height}x{image_width} is not a multiple of the "
            f"{name} preset's {p.patch_height}x{p.patch_width} patches"
        )
    encoder = ViTConfig(
        hidden_size=p.encoder_hidden,
        num_hidden_layers=p.encoder_layers,
        num_attention_heads=p.encoder_heads,
        intermediate_size=4 * p.encoder_hidden,
        image_size=[image_height, image_width],
        patch_size=[p.patch_height, p.patch_width],
        num_channels=3,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
        qkv_bias=True,
    )
    decoder = TrOCRConfig(
        vocab_size=vocab_size,
        d_model=p.decoder_hidden,
        decoder_layers=p.decoder_layers,
        decoder_attention_heads=p.decoder_heads,
        decoder_ffn_dim=4 * p.decoder_hidden,
        max_position_embeddings=max_positions,
        dropout=dropout,
        activation_function="gelu",
        use_learned_position_embeddings=True,
        layernorm_embedding=True,
        scale_embedding=False,
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
