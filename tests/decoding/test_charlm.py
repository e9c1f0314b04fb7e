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
from trocr_tune.decoding.charlm import CHAR_LM_FILE, CharNgramLM
from trocr_tune.errors import UserError

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
    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.runners import TorchRunner, decoder_log_likelihood
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(tiny_run / "model")
    assert bundle.char_lm is not None
    model, tok = bundle.model.eval(), bundle.tokenizer
    samples = read_dataset(load_config(tiny_run / "config.yaml", []).data).split("train")[:6]
    pixels = collate([LineDataset(samples, bundle.image_processor, tok)[i] for i in range(6)])["pixel_values"]
    cfg = EvalConfig(num_beams=4, lm_weight=2.0, rescore_length_bonus=0.5)
    kwargs = DecodeSettings.from_eval(bundle, cfg)
    plain = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=4))
    with torch.inference_mode():
        beams = model.generate(pixel_values=pixels, num_return_sequences=4, **plain.generate_kwargs())
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
    with pytest.raises(UserError, match=r"lm_fusion need a character language model"):
        DecodeSettings.from_eval(replace(bundle, char_lm=None), cfg)
    with pytest.raises(UserError, match=r"eval\.lm_weight and eval\.lm_fusion must be >= 0"):
        EvalConfig(num_beams=4, lm_weight=-1.0)


def test_lm_command_and_predict_with_the_lm(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    (model / CHAR_LM_FILE).unlink()
    first_image = json.loads(words.read_text().splitlines()[0])["image"]
    missing = run_cli("predict", str(model), first_image, "--num-beams", "2", "--lm-weight", "0.5")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "need a character language model" in missing.stderr.strip().splitlines()[-1]
    built = run_cli("lm", str(model), "data.layout=manifest", f"data.root={words}", "--order", "3")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "3-gram character model of" in built.stdout and (model / CHAR_LM_FILE).is_file()
    assert CharNgramLM.load(model / CHAR_LM_FILE).order == 3
    read = run_cli(
        "predict", str(model), first_image, "--num-beams", "2", "--lm-weight", "0.5", "--lm-fusion", "0.5"
    )
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.split("\t")[0] == first_image


def test_next_log_probs_match_one_character_at_a_time() -> None:
    from trocr_tune.decoding.charlm import END

    symbols = [*sorted({c for t in TEXTS for c in t}), END, "ß"]
    for order in (1, 2, 4):
        lm = CharNgramLM.fit(TEXTS, order)
        for text in ["", "J", "JUAN D", "QQQQ"]:
            whole = lm.next_log_probs(text, symbols)
            one_by_one = [lm.piece_log_prob(text, s) for s in symbols]
            assert whole == pytest.approx(one_by_one, abs=1e-12)
        line = "JUAN DIAZ"
        steps = [lm.piece_log_prob(line[:i], line[i]) for i in range(len(line))]
        assert sum(steps) + lm.piece_log_prob(line, END) == pytest.approx(lm.log_prob(line), abs=1e-9)


def _pixels(tiny_run: Path, bundle, count: int) -> torch.Tensor:
    from trocr_tune.data.dataset import LineDataset, collate
    from trocr_tune.data.reader import read_dataset

    samples = read_dataset(load_config(tiny_run / "config.yaml", []).data).split("train")[:count]
    dataset = LineDataset(samples, bundle.image_processor, bundle.tokenizer)
    return collate([dataset[i] for i in range(count)])["pixel_values"]


def test_lm_fusion_is_greedy_search_on_decoder_plus_weighted_lm(tiny_run: Path) -> None:
    """eval.lm_fusion: every step takes argmax(log p_decoder + W log p_LM(token | text so far)),
    and the confidences stay the decoder's own."""
    from transformers.modeling_outputs import BaseModelOutput

    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.charlm import END
    from trocr_tune.decoding.runners import CharLMFusion, TorchRunner, decoder_log_likelihood
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(tiny_run / "model")
    model, tok, lm = bundle.model.eval(), bundle.tokenizer, bundle.char_lm
    assert lm is not None
    pixels = _pixels(tiny_run, bundle, 5)
    weight = 3.0  # large, so the language model visibly changes the tiny model's readings
    kwargs = DecodeSettings.from_eval(bundle, EvalConfig(lm_fusion=weight))
    fused = TorchRunner(model, tok, torch.device("cpu")).generate_batch(pixels, kwargs)
    plain = TorchRunner(model, tok, torch.device("cpu")).generate_batch(
        pixels, DecodeSettings.from_eval(bundle, EvalConfig())
    )
    assert [p.text for p in fused] != [p.text for p in plain]

    start, eos = model.config.decoder_start_token_id, tok.eos_token_id
    piece = {v: tok.decode([v]) for v in range(len(tok)) if v not in tok.all_special_ids}
    with torch.inference_mode():
        states = model.encoder(pixel_values=pixels).last_hidden_state
        for i, prediction in enumerate(fused):
            ids, text = [start], ""
            for _ in range(kwargs.max_new_tokens):
                logits = model(
                    encoder_outputs=BaseModelOutput(last_hidden_state=states[i : i + 1]),
                    decoder_input_ids=torch.tensor([ids]),
                ).logits[0, -1]
                score = torch.log_softmax(logits.float(), -1)
                lm_row = torch.full_like(score, lm.piece_log_prob(text, "\uffff"))
                for v, p in piece.items():
                    lm_row[v] = lm.piece_log_prob(text, p)
                lm_row[eos] = lm.piece_log_prob(text, END)
                best = int((score + weight * lm_row).argmax())
                if best == eos:
                    break
                ids.append(best)
                text += piece.get(best, "")
            assert prediction.text == text.strip()
            rows = [tok(prediction.text, add_special_tokens=False)["input_ids"]]
            own = decoder_log_likelihood(model, states[i : i + 1], rows, eos, tok.pad_token_id)
            assert prediction.confidence == pytest.approx(float(own[0]) / (len(rows[0]) + 1), abs=1e-4)
    fusion = CharLMFusion(lm, weight, tok, start)
    assert len(fusion.pieces) == len(tok) and fusion.pieces[eos] == END


def test_lm_fusion_with_beams_and_rescoring_returns_one_of_its_beams(tiny_run: Path) -> None:
    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.runners import TorchRunner
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(tiny_run / "model")
    pixels = _pixels(tiny_run, bundle, 4)
    runner = TorchRunner(bundle.model.eval(), bundle.tokenizer, torch.device("cpu"))

    cfg = EvalConfig(num_beams=3, lm_weight=0.5, lm_fusion=0.5, rescore_length_bonus=1.0)
    first = runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, cfg))
    again = runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, cfg))  # from the table cache
    assert [p.text for p in first] == [p.text for p in again]
    assert runner._fusion is not None and len(runner._fusion.cache) > 0
    assert all(p.confidence <= 0 for p in first)
    with pytest.raises(UserError, match="lm_fusion must be >= 0"):
        EvalConfig(lm_fusion=-0.1)
