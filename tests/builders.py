"""Builders for model tests: a hub-like TrOCR checkpoint and small line-image manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw
from tokenizers import ByteLevelBPETokenizer, SentencePieceUnigramTokenizer, processors, trainers
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerFast,
    TrOCRConfig,
    TrOCRProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
    XLMRobertaTokenizer,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from trocr_tune.model.geometry import line_image_processor
from trocr_tune.model.presets import build_preset_model
from trocr_tune.model.tokenizer import build_char_tokenizer

WORDS = ["uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve", "diez", "once", "doce"]


def build_roberta_style_checkpoint(path: Path, image_size: int = 64, all_bytes: bool = True) -> Path:
    """A tiny checkpoint shaped like microsoft/trocr-*: byte-level BPE tokenizer whose
    `tokenizer(text)` adds <s> ... </s> (<s>=0, <pad>=1, </s>=2), decoder start token 2, a ViT
    encoder with a square image size and a ViT image processor; saved with save_pretrained.
    all_bytes=False leaves the bytes the corpus lacks out of the vocabulary (RoBERTa has all 256),
    so characters such as ' or q cannot be encoded."""
    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS)] * 20 + ["el rey don rodrigo de la çibdad", "Hola señor niño 1987"] * 10
    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    if all_bytes:
        bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=special)
    else:
        trainer = trainers.BpeTrainer(
            vocab_size=300, min_frequency=1, special_tokens=special, initial_alphabet=[], show_progress=False
        )
        bpe._tokenizer.train_from_iterator(corpus, trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        cls_token="<s>",
        sep_token="</s>",
        mask_token="<mask>",
    )
    assert tokenizer("uno")["input_ids"][0] == 0  # like RoBERTa: a leading <s> (the trap)
    return _save_vit_trocr(path, tokenizer, image_size)


def build_xlmr_style_checkpoint(path: Path, image_size: int = 64) -> Path:
    """A tiny checkpoint shaped like microsoft/trocr-small-*: an XLM-R sentencepiece (Unigram)
    tokenizer trained on a small corpus (so ñ, ç, ' and q map to <unk>), and a decoder whose
    output projection is NOT tied to its embedding."""
    corpus = [" ".join(WORDS)] * 20 + ["el rey don rodrigo de la cibdad", "Hola senor nino 1987"] * 10
    unigram = SentencePieceUnigramTokenizer()
    special = ["<s>", "<pad>", "</s>", "<unk>"]
    unigram.train_from_iterator(
        corpus, vocab_size=120, special_tokens=special, unk_token="<unk>", show_progress=False
    )
    pieces = [tuple(p) for p in json.loads(unigram._tokenizer.to_str())["model"]["vocab"]]
    tokenizer = XLMRobertaTokenizer(vocab=[*pieces, ("<mask>", 0.0)])
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == special
    return _save_vit_trocr(path, tokenizer, image_size, tied=False)


def build_char_checkpoint(path: Path, texts: list[str], height: int = 32, width: int = 64) -> Path:
    """A tiny trocr-tune preset checkpoint (character tokenizer of `texts`, line geometry)."""
    tokenizer = build_char_tokenizer(texts)
    special = {"pad": 1, "bos": 0, "eos": 2, "start": 0}
    build_preset_model("tiny", len(tokenizer), height, width, 64, special).save_pretrained(path)
    TrOCRProcessor(image_processor=line_image_processor(height, width), tokenizer=tokenizer).save_pretrained(
        path
    )
    return path


def vit_trocr(
    vocab_size: int,
    image_size: int,
    encoder_hidden: int = 32,
    patch_size: int = 16,
    **decoder: Any,
) -> Any:
    """A tiny hub-shaped TrOCR (ViT encoder, start token </s> in the generation config); `decoder`
    overrides the TrOCRConfig (layers, positions, embedding options)."""
    encoder = ViTConfig(
        hidden_size=encoder_hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch_size,
    )
    options: dict[str, Any] = {
        "d_model": 32,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 64,
        "max_position_embeddings": 128,
        **decoder,
    }
    config = TrOCRConfig(
        vocab_size=vocab_size,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        is_decoder=True,
        add_cross_attention=True,
        **options,
    )
    model = VisionEncoderDecoderModel(
        VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, config)
    )
    # As on the hub: the start token lives in the generation config, not the top-level config.
    model.generation_config = GenerationConfig(
        decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1
    )
    return model


def _save_vit_trocr(path: Path, tokenizer: Any, image_size: int, tied: bool = True) -> Path:
    model = vit_trocr(len(tokenizer), image_size, tie_word_embeddings=tied)
    model.save_pretrained(path)
    processor = TrOCRProcessor(
        image_processor=ViTImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(path)
    return path


def render(text: str, path: Path, height: int = 32) -> Path:
    width = max(48, 7 * len(text) + 12)
    im = Image.new("RGB", (width, height), (236, 232, 224))
    ImageDraw.Draw(im).text((6, height // 2 - 6), text, fill=(25, 25, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def word_manifest(root: Path, words: list[str] | None = None, validation: int = 4, test: int = 4) -> Path:
    """Rendered words as a JSONL manifest: all in train, the first ones repeated as validation/test."""
    words = words or WORDS
    rows = []
    for i, w in enumerate(words):
        image = render(w, root / "img" / f"{i:03d}.png")
        rows.append({"image": str(image), "text": w, "split": "train", "id": f"w{i}"})
    for split, n in (("validation", validation), ("test", test)):
        for i, w in enumerate(words[:n]):
            rows.append(
                {
                    "image": str(root / "img" / f"{i:03d}.png"),
                    "text": w,
                    "split": split,
                    "id": f"{split[0]}{i}",
                }
            )
    manifest = root / "words.jsonl"
    manifest.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return manifest


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width x height (Pillow checks its pixel limit on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def truncated_image(path: Path, text: str = "cut") -> Path:
    """A line image cut in half: its header reads fine, decoding fails ("image file is truncated")."""
    render(text, path, height=40)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def real_demo_pixels(bundle: Any, count: int) -> Any:
    """Pixel values of the first `count` committed real test lines (the demo's Poilus hands)."""
    from importlib import resources

    lines = Path(str(resources.files("trocr_tune").joinpath("resources/demo-lines/poilus")))
    rows = [json.loads(line) for line in (lines / "manifest.jsonl").read_text("utf-8").splitlines()]
    images = [Image.open(lines / r["image"]).convert("RGB") for r in rows if r["split"] == "test"][:count]
    return bundle.image_processor(images=images, return_tensors="pt").pixel_values
