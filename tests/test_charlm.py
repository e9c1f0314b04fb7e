"""The training transcripts' character n-gram model and the beam rescoring that uses it."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from trocr_tune.config import EvalConfig, load_config
from trocr_tune.errors import UserError
from trocr_tune.model.charlm import CHAR_LM_FILE, CharNgramLM

from conftest import run_cli

TEXTS = ["JUAN PEREZ", "JUANA DIAZ", "12/03/1890", "PEDRO DIAZ", "ANA", "JUAN DIAZ", "$ 1.250,00"]


def reference_log_prob(texts: list[str], order: int, text: str) -> float:
    """Interpolated Witten-Bell written out the long way: every order counted on its own."""
    follow: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for t in texts:
        s = "\x02" * (order - 1) + t + "\x03"
        for i in range(order - 1, len(s)):
            for k in range(order):
                follow[s[i - k : i]][s[i]] += 1
    vocab = len({c for t in texts for c in t}) + 1  # + end of line
    s = "\x02" * (order - 1) + text + "\x03"
    total = 0.0
    for i in range(order - 1, len(s)):
        p = 1.0 / (vocab + 1)
        for k in range(order):
            c = follow.get(s[i - k : i])
            if c is None:
                break
            p = (c[s[i]] + len(c) * p) / (sum(c.values()) + len(c))
        total += math.log(p)
    return total


@pytest.mark.parametrize("order", [1, 3, 5])
def test_char_lm_matches_counting_every_order(order: int) -> None:
    """Storing only the longest n-grams loses nothing: the lower orders are their marginals."""
    lm = CharNgramLM.fit(TEXTS, order)
    for text in ["JUAN DIAZ", "ANA PEREZ", "QXZ", "", "12/03/1891"]:
        assert lm.log_prob(text) == pytest.approx(reference_log_prob(TEXTS, order, text), abs=1e-9)


def test_char_lm_is_a_distribution_and_prefers_the_training_text(tmp_path: Path) -> None:
    lm = CharNgramLM.fit(TEXTS, 4)
    symbols = [*sorted({c for t in TEXTS for c in t}), "\x03"]
    for history in ["\x02\x02\x02", "\x02JU", "UAN", " DI", "ZZZ"]:
        # The known symbols and the one slot kept for characters never seen sum to 1.
        mass = sum(lm.next_prob(history, c) for c in symbols) + lm.next_prob(history, "ß")
        assert mass == pytest.approx(1.0, abs=1e-9), history
    assert lm.log_prob("JUAN DIAZ") > lm.log_prob("JUAN DIAS") > lm.log_prob("JUAN D1AS")
    assert lm.log_prob("ANA") > lm.log_prob("ANA ")  # the end of the line is part of the model
    path = lm.save(tmp_path / CHAR_LM_FILE)
    again = CharNgramLM.load(path)
    assert again.order == 4 and all(again.log_prob(t) == lm.log_prob(t) for t in [*TEXTS, "JOSÉ"])
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a trocr-tune character language model"):
        CharNgramLM.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="cannot read"):
        CharNgramLM.load(tmp_path / "missing.json")
    with pytest.raises(UserError, match="order >= 1"):
        CharNgramLM.fit(TEXTS, 0)


def test_training_saves_the_model_of_its_train_split_and_loading_finds_it(tiny_run: Path) -> None:
    from transformers import VisionEncoderDecoderModel

    from trocr_tune.data.reader import read_dataset
    from trocr_tune.model.loading import load_bundle

    model_dir = tiny_run / "model"
    cfg = load_config(tiny_run / "config.yaml", [])
    assert cfg.train.char_lm_order == 5 and (model_dir / CHAR_LM_FILE).is_file()
    bundle = load_bundle(model_dir)
    assert bundle.char_lm is not None
    expected = CharNgramLM.fit([s.text for s in read_dataset(cfg.data).split("train")], 5)
    assert bundle.char_lm.ngrams == expected.ngrams
    VisionEncoderDecoderModel.from_pretrained(model_dir)  # plain Transformers ignores the file
    with pytest.raises(UserError, match="char_lm_order"):
        load_config(None, ["train.char_lm_order=-1"])


def test_lm_rescoring_picks_the_best_joint_score(tiny_run: Path) -> None:
    """eval.lm_weight alone (no CTC): decoder + W x LM + bonus x length, over all the beams."""
    from trocr_tune.data.dataset import LineDataset, collate
    from trocr_tune.data.reader import read_dataset
    from trocr_tune.model.loading import load_bundle
    from trocr_tune.optimize.runners import TorchRunner, decoder_log_likelihood
    from trocr_tune.predict import generation_kwargs

    bundle = load_bundle(tiny_run / "model")
    assert bundle.char_lm is not None
    model, tok = bundle.model.eval(), bundle.tokenizer
    samples = read_dataset(load_config(tiny_run / "config.yaml", []).data).split("train")[:6]
    pixels = collate([LineDataset(samples, bundle.image_processor, tok)[i] for i in range(6)])["pixel_values"]
    cfg = EvalConfig(num_beams=4, lm_weight=2.0, rescore_length_bonus=0.5)
    kwargs = generation_kwargs(bundle, cfg)
    plain = generation_kwargs(bundle, EvalConfig(num_beams=4))
    with torch.inference_mode():
        beams = model.generate(pixel_values=pixels, num_return_sequences=4, **plain)
        texts = [t.strip() for t in tok.batch_decode(beams, skip_special_tokens=True)]
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        states = model.encoder(pixel_values=pixels).last_hidden_state
        decoder = decoder_log_likelihood(model, states, rows, tok.eos_token_id, tok.pad_token_id, 4)
    lm = torch.tensor([bundle.char_lm.log_prob(t) for t in texts])
    joint = (decoder + 2.0 * lm + 0.5 * torch.tensor([len(r) for r in rows])).view(6, 4)
    chosen = TorchRunner(model, tok, torch.device("cpu")).generate_batch(pixels, kwargs)
    for i, pred in enumerate(chosen):
        group = texts[4 * i : 4 * i + 4]
        assert pred.text in group
        assert joint[i, group.index(pred.text)] >= joint[i].max() - 1e-3
    with pytest.raises(UserError, match=r"eval\.lm_weight needs a character language model"):
        generation_kwargs(replace(bundle, char_lm=None), cfg)
    with pytest.raises(UserError, match=r"eval\.lm_weight must be >= 0"):
        EvalConfig(num_beams=4, lm_weight=-1.0)


def test_lm_command_and_predict_with_the_lm(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    (model / CHAR_LM_FILE).unlink()
    first_image = json.loads(words.read_text().splitlines()[0])["image"]
    missing = run_cli("predict", str(model), first_image, "--num-beams", "2", "--lm-weight", "0.5")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "eval.lm_weight needs a character language model" in missing.stderr.strip().splitlines()[-1]
    built = run_cli("lm", str(model), "data.layout=manifest", f"data.root={words}", "--order", "3")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "3-gram character model of" in built.stdout and (model / CHAR_LM_FILE).is_file()
    assert CharNgramLM.load(model / CHAR_LM_FILE).order == 3
    read = run_cli("predict", str(model), first_image, "--num-beams", "2", "--lm-weight", "0.5")
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.split("\t")[0] == first_image
