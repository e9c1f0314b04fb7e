"""Model loading, tokenizer, geometry and special-token consistency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, TrOCRProcessor, VisionEncoderDecoderModel

from trocr_tune.config import load_config
from trocr_tune.data.dataset import LineDataset, collate
from trocr_tune.data.reader import read_dataset
from trocr_tune.errors import UserError
from trocr_tune.model.geometry import line_image_processor, resample_position_embeddings
from trocr_tune.model.loading import build_for_training, check_special_tokens, load_bundle, save_bundle
from trocr_tune.model.presets import PRESETS, build_preset_model
from trocr_tune.model.tokenizer import build_char_tokenizer, check_coverage, encode_label

from builders import build_roberta_style_checkpoint, render, word_manifest


@pytest.fixture(scope="session")
def roberta_style_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_roberta_style_checkpoint(tmp_path_factory.mktemp("hub-like") / "trocr-tiny")


def test_char_tokenizer_labels_and_round_trip(tmp_path: Path) -> None:
    tok = build_char_tokenizer(["hola señor", "q\u0303 ⁊ niño"])
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    ids = encode_label(tok, "hola niño")
    assert ids[-1] == tok.eos_token_id and ids[0] != tok.bos_token_id and len(ids) == len("hola niño") + 1
    assert tok(text="hola")["input_ids"] == [*ids[:4], tok.eos_token_id]  # plain call = a correct label
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.decode(ids, skip_special_tokens=True) == "hola niño"
    coverage = check_coverage(again, ["hola", "xyz ñ"])
    assert set(coverage.missing) == {"x", "y", "z"} and coverage.samples_affected == 1


def test_presets_build_standard_checkpoints(tmp_path: Path) -> None:
    special = {"pad": 1, "bos": 0, "eos": 2, "start": 0}
    for name in (n for n in PRESETS if PRESETS[n].hub is None):  # the hub sizes: the test below
        model = build_preset_model(name, 50, 32, 512, 64, special)
        encoder = "dpt" if PRESETS[name].stem else "vit"
        assert model.config.encoder.model_type == encoder and model.config.decoder.model_type == "trocr"
    with pytest.raises(UserError, match="not a multiple"):
        build_preset_model("tiny", 50, 30, 256, 64, special)
    # DPT resamples its position embeddings from a square grid: 4 x 32 cells cannot be one.
    with pytest.raises(UserError, match="square number"):
        build_preset_model("conv", 50, 32, 256, 64, special)
    assert build_preset_model("conv", 50, 16, 256, 64, special).config.encoder.num_hidden_layers == 0
    for name in ("tiny", "hybrid", "conv"):
        model = build_preset_model(name, 50, 24, 384, 64, special).eval()
        model.save_pretrained(tmp_path / name)
        again = VisionEncoderDecoderModel.from_pretrained(tmp_path / name).eval()  # no trocr-tune code
        assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in model.parameters())
        pixels = torch.randn(2, 3, 24, 384)
        with torch.inference_mode():
            a = model.generate(pixel_values=pixels, max_new_tokens=5, do_sample=False)
            b = again.generate(pixel_values=pixels, max_new_tokens=5, do_sample=False)
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "encoder", "sizes", "decoder", "params"),
    [
        # config.json of microsoft/trocr-small-handwritten and microsoft/trocr-base-handwritten.
        # Parameters: the hub's 61.6 M / 334 M less the subword vocabulary's rows (64,044 x 256 in
        # the embedding and the untied output; 50,265 x 1,024 tied), with 100 characters instead.
        ("trocr-small", "deit", (12, 384, 6, 1536, True), (6, 256, 8, 1024, "relu", True, False), 28.86e6),
        (
            "trocr-base",
            "vit",
            (12, 768, 12, 3072, False),
            (12, 1024, 16, 4096, "gelu", False, True),
            282.55e6,
        ),
    ],
)
def test_hub_architecture_presets_match_the_published_configs(
    name: str, encoder: str, sizes: tuple[Any, ...], decoder: tuple[Any, ...], params: float
) -> None:
    special = {"pad": 1, "bos": 0, "eos": 2, "start": 0}
    with torch.device("meta"):  # the sizes only: no memory, no initialisation
        model = build_preset_model(name, 100, 384, 384, 64, special)
    enc, dec = model.config.encoder, model.config.decoder
    assert enc.model_type == encoder and (enc.image_size, enc.patch_size) == ([384, 384], [16, 16])
    assert (
        enc.num_hidden_layers,
        enc.hidden_size,
        enc.num_attention_heads,
        enc.intermediate_size,
        enc.qkv_bias,
    ) == sizes
    assert (
        dec.decoder_layers,
        dec.d_model,
        dec.decoder_attention_heads,
        dec.decoder_ffn_dim,
        dec.activation_function,
        dec.scale_embedding,
        dec.tie_word_embeddings,
    ) == decoder
    assert dec.max_position_embeddings == 512 and dec.vocab_size == 100
    tied = model.decoder.output_projection.weight is model.decoder.model.decoder.embed_tokens.weight
    assert tied == decoder[-1]
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=1e-3)


def test_line_geometry_is_a_stock_processor(tmp_path: Path) -> None:
    processor = line_image_processor(32, 256)
    wide = np.full((100, 1000, 3), 200, np.uint8)
    out = processor(images=wide, return_tensors="np")["pixel_values"]
    assert out.shape == (1, 3, 32, 256)
    processor.save_pretrained(tmp_path)
    from transformers import AutoImageProcessor

    again = AutoImageProcessor.from_pretrained(tmp_path)
    assert np.allclose(again(images=wide, return_tensors="np")["pixel_values"], out)
    # Aspect preserved: a 1000x100 line becomes 256x25, centred with 3-4 rows of padding above.
    assert np.allclose(out[0, :, 0, :], -1.0) and not np.allclose(out[0, :, 16, :], -1.0)


def test_position_embeddings_resampled_once(roberta_style_dir: Path) -> None:
    model = VisionEncoderDecoderModel.from_pretrained(roberta_style_dir)
    assert resample_position_embeddings(model, 32, 128) is True
    assert model.encoder.embeddings.position_embeddings.shape[1] == 1 + (32 // 16) * (128 // 16)
    assert resample_position_embeddings(model, 32, 128) is False
    out = model.encoder(pixel_values=torch.zeros(1, 3, 32, 128))
    assert out.last_hidden_state.shape[1] == 17


def test_pretrained_style_checkpoint_batch_ids(roberta_style_dir: Path, tmp_path: Path) -> None:
    """Hub-like tokenizer adds <s>: labels must not; decoder input starts with token 2."""
    manifest = word_manifest(tmp_path / "data")
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={manifest}",
            f"model.name_or_path={roberta_style_dir}",
            "model.geometry=processor",
        ],
    )
    samples = read_dataset(cfg.data).split("train")
    bundle = build_for_training(cfg.model, [s.text for s in samples], [s.text for s in samples])
    check_special_tokens(bundle.model, bundle.tokenizer)
    assert (
        bundle.model.config.decoder_start_token_id
        == 2
        == bundle.model.generation_config.decoder_start_token_id
    )
    dataset = LineDataset(samples[:3], bundle.image_processor, bundle.tokenizer)
    batch = collate([dataset[i] for i in range(3)])
    labels = batch["labels"]
    expected = [bundle.tokenizer(s.text, add_special_tokens=False)["input_ids"] + [2] for s in samples[:3]]
    for row, want in zip(labels.tolist(), expected, strict=True):
        assert row[: len(want)] == want  # no leading <s>=0, eos=2 closes the label
        assert all(v == -100 for v in row[len(want) :])  # padding never counts in the loss
    decoder_inputs = bundle.model.prepare_decoder_input_ids_from_labels(labels)
    assert decoder_inputs[:, 0].tolist() == [2, 2, 2]
    assert decoder_inputs[0, 1:].tolist()[: len(expected[0]) - 1] == expected[0][:-1]
    assert 0 not in decoder_inputs[:, :2].tolist()[0]  # not the "double <s>" [2, 0, ...] start
    loss = bundle.model(pixel_values=batch["pixel_values"], labels=labels).loss
    assert torch.isfinite(loss)


def test_pretrained_line_geometry_and_max_new_tokens(roberta_style_dir: Path, tmp_path: Path) -> None:
    manifest = word_manifest(tmp_path / "data")
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={manifest}",
            f"model.name_or_path={roberta_style_dir}",
            "model.image_height=32",
            "model.image_width=128",
        ],
    )
    texts = [s.text for s in read_dataset(cfg.data).samples]
    bundle = build_for_training(cfg.model, texts, texts)
    longest = max(len(encode_label(bundle.tokenizer, t)) for t in texts)
    assert bundle.info.max_new_tokens >= longest and bundle.info.max_new_tokens != 20
    assert bundle.model.generation_config.max_length == bundle.info.max_new_tokens + 1
    pixels = bundle.image_processor(images=np.zeros((40, 300, 3), np.uint8), return_tensors="pt")[
        "pixel_values"
    ]
    assert pixels.shape == (1, 3, 32, 128)
    out = bundle.model.generate(pixel_values=pixels)
    assert out.shape[1] <= bundle.info.max_new_tokens + 1


def test_inconsistent_special_tokens_fail_clearly(roberta_style_dir: Path) -> None:
    model = VisionEncoderDecoderModel.from_pretrained(roberta_style_dir)
    processor = TrOCRProcessor.from_pretrained(roberta_style_dir)
    model.config.decoder_start_token_id = 0  # the tutorial's cls token...
    model.config.pad_token_id = 1  # ...while generate keeps starting with 2
    with pytest.raises(UserError, match="generate starts decoding with token 2 but training uses 0"):
        check_special_tokens(model, processor.tokenizer)


def test_pretrained_tokenizer_that_cannot_encode_training_labels_errors(
    roberta_style_dir: Path, tmp_path: Path
) -> None:
    from trocr_tune.train import train

    tok = build_char_tokenizer(["abc"])
    bundle_dir = tmp_path / "char-model"
    model = build_preset_model("tiny", len(tok), 32, 64, 64, {"pad": 1, "bos": 0, "eos": 2, "start": 0})
    model.save_pretrained(bundle_dir)
    TrOCRProcessor(image_processor=line_image_processor(32, 64), tokenizer=tok).save_pretrained(bundle_dir)
    manifest = word_manifest(tmp_path / "data", ["abc", "xyz"], validation=1, test=0)
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={manifest}",
            f"model.name_or_path={bundle_dir}",
            "model.image_height=32",
            "model.image_width=64",
            "model.new_characters=fail",  # the default, union, adds them (tests/test_alphabet.py)
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    with pytest.raises(UserError, match="the tokenizer cannot encode training labels: 3 characters"):
        train(cfg)


def test_save_and_load_bundle_plain_transformers(tmp_path: Path) -> None:
    manifest = word_manifest(tmp_path / "data")
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={manifest}",
            "model.preset=tiny",
            "model.image_height=32",
            "model.image_width=128",
        ],
    )
    texts = [s.text for s in read_dataset(cfg.data).samples]
    bundle = build_for_training(cfg.model, texts, texts)
    out = save_bundle(bundle, tmp_path / "model")
    plain = VisionEncoderDecoderModel.from_pretrained(out).eval()
    processor = TrOCRProcessor.from_pretrained(out)
    image = Image.open(render("tres", tmp_path / "x.png")).convert("RGB")
    pixels = processor(images=image, return_tensors="pt").pixel_values
    ours = load_bundle(out)
    with torch.inference_mode():
        a = plain.generate(pixels)
        b = ours.model.generate(ours.image_processor(images=image, return_tensors="pt").pixel_values)
    assert a.tolist() == b.tolist()
    assert plain.generation_config.max_length == bundle.info.max_new_tokens + 1


@pytest.mark.parametrize("kind", ["vit", "conv"])
def test_grown_encoder_reads_as_before_and_reloads(
    kind: str, roberta_style_dir: Path, tmp_path: Path
) -> None:
    if kind == "vit":
        source = roberta_style_dir
    else:
        source = tmp_path / "conv"
        special = {"pad": 1, "bos": 0, "eos": 2, "start": 0}
        build_preset_model("conv", 40, 32, 512, 64, special).save_pretrained(source)
        tokenizer = build_char_tokenizer(["abc"])
        processor = TrOCRProcessor(image_processor=line_image_processor(32, 512), tokenizer=tokenizer)
        processor.save_pretrained(source)
    before = VisionEncoderDecoderModel.from_pretrained(source).eval()
    layers = before.config.encoder.num_hidden_layers
    overrides = [f"model.name_or_path={source}", "model.geometry=processor", "model.add_encoder_layers=2"]
    cfg = load_config(None, overrides)
    bundle = build_for_training(cfg.model, ["abc"], ["abc"])
    assert bundle.info.extra["encoder_layers"] == layers + 2
    size = bundle.info.image_height, bundle.info.image_width
    pixels = torch.rand(2, 3, *size)
    ids = torch.tensor([[0, 5, 6], [0, 7, 8]])
    grown = bundle.model.eval()
    with torch.inference_mode():
        expected = before(pixel_values=pixels, decoder_input_ids=ids).logits
        assert torch.equal(grown(pixel_values=pixels, decoder_input_ids=ids).logits, expected)
    # The new layers are trainable parameters, not a frozen identity.
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in before.parameters())
    out = save_bundle(bundle, tmp_path / "grown")
    plain = VisionEncoderDecoderModel.from_pretrained(out).eval()
    assert plain.config.encoder.num_hidden_layers == layers + 2
    with torch.inference_mode():
        assert torch.equal(plain(pixel_values=pixels, decoder_input_ids=ids).logits, expected)


def test_grow_encoder_refuses_what_it_cannot_grow(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"model\.add_encoder_layers"):
        load_config(None, ["model.preset=tiny", "model.add_encoder_layers=1"])
    with pytest.raises(UserError, match=">= 0"):
        load_config(None, ["model.name_or_path=x", "model.add_encoder_layers=-1"])
