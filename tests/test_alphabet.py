"""model.new_characters: adapting a checkpoint's alphabet to the training data (model/alphabet.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torch import nn
from transformers import TrOCRProcessor, VisionEncoderDecoderModel

from trocr_tune.config import load_config
from trocr_tune.errors import UserError
from trocr_tune.model.alphabet import adapt_alphabet, remap_decoder_rows, tokenizer_kind
from trocr_tune.model.ctc import ctc_loss
from trocr_tune.model.loading import check_special_tokens, resolve_special_tokens
from trocr_tune.model.tokenizer import SPECIAL_TOKENS, check_coverage, encode_label

from builders import (
    build_char_checkpoint,
    build_roberta_style_checkpoint,
    build_xlmr_style_checkpoint,
    render,
    word_manifest,
)
from conftest import run_cli, run_main

CHECKPOINT_TEXTS = ["abc de", "cab"]  # the character checkpoint reads " abcde"
# ' q x and combining ~ are new to every builder; ç ñ also to the sentencepiece one.
LINES = ["l'abc ça de", "q\u0303ue niño 'x'", "dos tres"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("alphabet")
    return {
        "char": build_char_checkpoint(root / "char", CHECKPOINT_TEXTS),
        "bpe": build_roberta_style_checkpoint(root / "bpe", all_bytes=False),
        "sentencepiece": build_xlmr_style_checkpoint(root / "sentencepiece"),
    }


def load(path: Path) -> tuple[Any, Any]:
    return VisionEncoderDecoderModel.from_pretrained(path).eval(), TrOCRProcessor.from_pretrained(path)


def rows(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    decoder = model.decoder
    return (
        decoder.get_input_embeddings().weight.detach().clone(),
        decoder.output_projection.weight.detach().clone(),
    )


def assert_sizes_consistent(model: Any, tokenizer: Any) -> None:
    n = len(tokenizer)
    assert model.config.decoder.vocab_size == model.decoder.config.vocab_size == model.config.vocab_size == n
    assert model.decoder.get_input_embeddings().weight.shape[0] == n
    assert (
        model.decoder.output_projection.weight.shape[0] == model.decoder.output_projection.out_features == n
    )


def test_tokenizer_kinds(checkpoints: dict[str, Path]) -> None:
    kinds = {name: tokenizer_kind(load(path)[1].tokenizer) for name, path in checkpoints.items()}
    assert kinds == {"char": "character", "bpe": "subword", "sentencepiece": "unigram"}


def test_character_union_appends_and_keeps_rows_bit_identical(checkpoints: dict[str, Path]) -> None:
    model, processor = load(checkpoints["char"])
    tokenizer = processor.tokenizer
    old_vocab, (old_embedding, old_projection) = tokenizer.get_vocab(), rows(model)
    generation = model.generation_config.to_dict()
    assert model.decoder.output_projection.weight is model.decoder.get_input_embeddings().weight  # tied

    change = adapt_alphabet(model, processor, LINES, "union")

    new_chars = sorted(set("".join(LINES)) - set(old_vocab))
    assert change.added == tuple(new_chars) and change.removed == 0 and new_chars[0] == "'"
    assert tokenizer.get_vocab() == {**old_vocab, **{c: len(old_vocab) + i for i, c in enumerate(new_chars)}}
    embedding, projection = rows(model)
    n = len(old_vocab)
    assert torch.equal(embedding[:n], old_embedding) and torch.equal(projection[:n], old_projection)
    assert torch.equal(embedding[n:], old_embedding.mean(0).expand(len(new_chars), -1))
    assert model.decoder.output_projection.weight is model.decoder.get_input_embeddings().weight  # still tied
    assert_sizes_consistent(model, tokenizer)
    assert model.generation_config.to_dict() == generation  # pad / eos / decoder start unchanged
    assert check_coverage(tokenizer, LINES).ok
    assert all(tokenizer.decode(encode_label(tokenizer, t), skip_special_tokens=True) == t for t in LINES)
    assert change.describe() == (
        f"added {len(new_chars)} characters to the checkpoint's tokenizer ("
        + " ".join(json.dumps(c, ensure_ascii=False) for c in new_chars)
        + f"): vocab {n} -> {n + len(new_chars)} (model.new_characters=union)"
    )
    # The auxiliary CTC loss scores with the same (resized) output projection.
    pixels = torch.randn(1, 3, 32, 64)
    states = model.encoder(pixel_values=pixels).last_hidden_state
    labels = torch.tensor([encode_label(tokenizer, "l'x")])
    assert torch.isfinite(ctc_loss(model, states, labels, tokenizer.pad_token_id, tokenizer.eos_token_id))


def test_character_new_keeps_only_the_data_characters(checkpoints: dict[str, Path]) -> None:
    model, processor = load(checkpoints["char"])
    old_vocab, (old_embedding, _) = processor.tokenizer.get_vocab(), rows(model)
    texts = ["cab", "d'ab"]  # drops e and the space, adds '

    change = adapt_alphabet(model, processor, texts, "new")

    vocab = processor.tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    assert tokens == [*SPECIAL_TOKENS, "'", "a", "b", "c", "d"]
    assert change.added == ("'",) and change.removed == 2
    embedding, projection = rows(model)
    for token in tokens:
        if token in old_vocab:  # copied from its old id
            assert torch.equal(embedding[vocab[token]], old_embedding[old_vocab[token]]), token
    assert torch.equal(embedding[vocab["'"]], old_embedding.mean(0)) and torch.equal(projection, embedding)
    assert_sizes_consistent(model, processor.tokenizer)
    resolve_special_tokens(model, processor.tokenizer)
    check_special_tokens(model, processor.tokenizer)
    assert "dropped 2" in change.describe()


def test_fail_names_the_characters(checkpoints: dict[str, Path]) -> None:
    for name in ("char", "sentencepiece"):
        model, processor = load(checkpoints[name])
        with pytest.raises(
            UserError, match=r"cannot encode training labels: \d+ characters.*\"'\".*new_characters=union"
        ):
            adapt_alphabet(model, processor, LINES, "fail")
        assert model.config.decoder.vocab_size == len(processor.tokenizer)  # untouched


@pytest.mark.parametrize("name", ["bpe", "sentencepiece"])
def test_subword_union_adds_what_does_not_round_trip(checkpoints: dict[str, Path], name: str) -> None:
    model, processor = load(checkpoints[name])
    tokenizer = processor.tokenizer
    missing = set(check_coverage(tokenizer, LINES).missing)
    assert {"'", "q", "x", "\u0303"} <= missing and "d" not in missing
    old_embedding, old_projection = rows(model)
    old_ids = tokenizer("dos tres el rey", add_special_tokens=False).input_ids
    tied = model.decoder.output_projection.weight is model.decoder.get_input_embeddings().weight
    assert tied == (name == "bpe")

    change = adapt_alphabet(model, processor, LINES, "union")

    assert set(change.added) == missing and change.new_vocab == change.old_vocab + len(missing)
    assert check_coverage(tokenizer, LINES).ok
    for text in [*LINES, "l'x q\u0303 ñ'ç"]:
        assert tokenizer.decode(encode_label(tokenizer, text), skip_special_tokens=True) == text
    assert tokenizer("dos tres el rey", add_special_tokens=False).input_ids == old_ids  # old text, old tokens
    embedding, projection = rows(model)
    n = old_embedding.shape[0]
    assert torch.equal(embedding[:n], old_embedding) and torch.equal(projection[:n], old_projection)
    assert torch.equal(projection[n:], old_projection.mean(0).expand(len(missing), -1))
    assert (model.decoder.output_projection.weight is model.decoder.get_input_embeddings().weight) == tied
    assert_sizes_consistent(model, tokenizer)

    fresh_model, fresh_processor = load(checkpoints[name])
    with pytest.raises(UserError, match=r"new_characters=new needs a character tokenizer.*use union"):
        adapt_alphabet(fresh_model, fresh_processor, LINES, "new")


def test_byte_level_bpe_with_all_bytes_needs_nothing(tmp_path: Path) -> None:
    model, processor = load(build_roberta_style_checkpoint(tmp_path / "bpe"))
    old_vocab, (old_embedding, _) = processor.tokenizer.get_vocab(), rows(model)
    change = adapt_alphabet(model, processor, LINES, "union")
    assert not change.changed and change.new_vocab == change.old_vocab == len(old_vocab)
    assert processor.tokenizer.get_vocab() == old_vocab and torch.equal(rows(model)[0], old_embedding)
    assert "encodes every training character" in change.describe()


@pytest.mark.parametrize(("name", "char"), [("char", "'"), ("bpe", "q"), ("sentencepiece", "ñ")])
def test_saved_adapted_model_generates_the_new_character(
    checkpoints: dict[str, Path], tmp_path: Path, name: str, char: str
) -> None:
    model, processor = load(checkpoints[name])
    old_size = len(processor.tokenizer)
    adapt_alphabet(model, processor, LINES, "union")
    new_id = processor.tokenizer.convert_tokens_to_ids(char)
    assert new_id >= old_size
    image = Image.open(render("niño q'x", tmp_path / "line.png")).convert("RGB")
    pixels = processor(images=[image], return_tensors="pt").pixel_values
    # The first step's hidden state h: the new row becomes h scaled so its logit leads by 20.
    captured: list[torch.Tensor] = []
    hook = model.decoder.output_projection.register_forward_hook(lambda m, i, o: captured.append(i[0][0, -1]))
    start = model.generation_config.decoder_start_token_id
    with torch.no_grad():
        logits = model(pixel_values=pixels, decoder_input_ids=torch.tensor([[start]])).logits[0, -1]
        hook.remove()
        h = captured[0]
        model.decoder.output_projection.weight[new_id] = h * (logits.max() + 20) / h.dot(h)
    model.save_pretrained(tmp_path / "adapted")
    processor.save_pretrained(tmp_path / "adapted")

    plain, plain_processor = load(tmp_path / "adapted")  # plain Transformers, no trocr-tune code
    with torch.no_grad():
        ids = plain.generate(
            plain_processor(images=[image], return_tensors="pt").pixel_values, max_new_tokens=2
        )
    assert ids[0, 1].item() == new_id
    assert char in plain_processor.tokenizer.decode(ids[0], skip_special_tokens=True)


def test_remap_untied_projection_with_bias(checkpoints: dict[str, Path]) -> None:
    model, _ = load(checkpoints["sentencepiece"])
    n, d = model.decoder.get_input_embeddings().weight.shape
    model.decoder.output_projection = nn.Linear(d, n, bias=True)
    bias = model.decoder.output_projection.bias.detach().clone()
    projection = model.decoder.output_projection.weight.detach().clone()
    sources: list[int | None] = [*range(n - 1, -1, -1), None]  # reversed, plus one fresh row
    remap_decoder_rows(model, sources)
    out = model.decoder.output_projection
    assert torch.equal(out.bias[:n], bias.flip(0)) and torch.equal(out.bias[n], bias.mean())
    assert (
        torch.equal(out.weight[:n], projection.flip(0))
        and out.weight is not model.decoder.get_input_embeddings().weight
    )
    assert model.config.decoder.vocab_size == n + 1


def test_config_choices() -> None:
    assert load_config(None, []).model.new_characters == "union"
    with pytest.raises(UserError, match=r"model\.new_characters='keep' is not one of: union, new, fail"):
        load_config(None, ["model.new_characters=keep"])


def test_cli_train_adds_the_apostrophe_or_fails_in_one_line(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    manifest = word_manifest(tmp_path / "data", ["d'abc", "c'ed", "abc", "cab"], validation=1, test=0)
    common = [
        "train",
        "data.layout=manifest",
        f"data.root={manifest}",
        f"model.name_or_path={checkpoints['char']}",
        "model.image_height=32",
        "model.image_width=64",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.num_workers=0",
    ]
    proc = run_cli(*common, f"train.output_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = (
        "alphabet: added 1 character to the checkpoint's tokenizer (\"'\"): vocab 10 -> 11 "
        "(model.new_characters=union)"
    )
    assert line in proc.stdout
    run = tmp_path / "run"
    assert line in json.loads((run / "metrics.json").read_text())["notes"]
    assert json.loads((run / "model" / "trocr_tune.json").read_text())["extra"]["alphabet"]["added"] == ["'"]
    saved = TrOCRProcessor.from_pretrained(run / "model").tokenizer
    assert saved.convert_tokens_to_ids("'") == 10
    assert VisionEncoderDecoderModel.from_pretrained(run / "model").config.decoder.vocab_size == 11

    failed = run_main(*common, "model.new_characters=fail", f"train.output_dir={tmp_path / 'fail'}")
    assert failed.returncode == 2
    error = failed.stderr.strip().splitlines()[-1]
    assert error.startswith("trocr-tune: error: the tokenizer cannot encode training labels: 1 characters")
    assert '"\'"' in error and "model.new_characters=union" in error
