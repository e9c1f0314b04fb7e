"""Joint CTC-attention training and the wall-clock training budget (the demo's training knobs)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from trocr_tune.callbacks import TimeBudget
from trocr_tune.config import load_config
from trocr_tune.errors import UserError
from trocr_tune.model.ctc import column_features, ctc_greedy, ctc_loss, encoder_grid
from trocr_tune.model.presets import build_preset_model

from conftest import TINY_MODEL

SPECIAL = {"pad": 1, "bos": 0, "eos": 2, "start": 0}


@pytest.mark.parametrize(
    ("preset", "height", "width", "grid"),
    [
        ("tiny", 32, 128, (1, 4, 16)),
        ("mini", 32, 128, (1, 1, 32)),
        ("hybrid", 24, 384, (1, 3, 48)),
        ("conv", 16, 256, (1, 2, 32)),
    ],
)
def test_encoder_grid_and_ctc_loss(preset: str, height: int, width: int, grid: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_preset_model(preset, 20, height, width, 32, SPECIAL, dropout=0.0)
    assert encoder_grid(model) == grid
    pixels = torch.randn(2, 3, height, width)
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    out = model(pixel_values=pixels, labels=labels)
    columns = column_features(model, out.encoder_last_hidden_state)
    assert columns.shape == (2, grid[2], model.config.decoder.d_model)
    loss = ctc_loss(model, out.encoder_last_hidden_state, labels, pad_id=1, eos_id=2)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    # The CTC gradient reaches the encoder and the shared output projection, adding no parameters.
    # (the first weight: the patch projection or the convolutional stem; a class token that no
    # layer mixes into the grid, as in `conv`, gets none)
    first_weight = next(p for n, p in model.encoder.named_parameters() if n.endswith("weight"))
    assert first_weight.grad is not None and first_weight.grad.abs().sum() > 0
    assert model.decoder.output_projection.weight.grad is not None
    decoded = ctc_greedy(model, pixels, pad_id=1)
    assert len(decoded) == 2 and all(1 not in ids for ids in decoded)


def test_ctc_learns_an_alignment() -> None:
    """A few steps of CTC alone on two fixed images lower the loss substantially."""
    torch.manual_seed(0)
    model = build_preset_model("hybrid", 20, 24, 384, 32, SPECIAL, dropout=0.0)
    pixels = torch.randn(2, 3, 24, 384)
    labels = torch.tensor([[5, 6, 7, 2], [8, 9, 2, -100]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        states = model.encoder(pixel_values=pixels).last_hidden_state
        loss = ctc_loss(model, states, labels, pad_id=1, eos_id=2)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert ctc_greedy(model.eval(), pixels, pad_id=1) == [[5, 6, 7], [8, 9]]


def test_ctc_rejects_encoders_without_a_token_grid() -> None:
    model = build_preset_model("tiny", 20, 32, 128, 32, SPECIAL)
    model.config.encoder.model_type = "convnext"
    with pytest.raises(UserError, match="ctc_weight"):
        encoder_grid(model)


def test_time_budget_schedule_and_stop(tmp_path: Path) -> None:
    budget = TimeBudget(minutes=1.0, warmup=0.1, has_eval=True)
    budget.start = time.perf_counter()
    assert budget.lr_factor(0) <= 0.01  # warming up from (almost) zero
    budget.offset = 3.0  # 5% of the budget spent: half-way through warmup
    assert budget.lr_factor(0) == pytest.approx(0.5, abs=0.01)
    budget.offset = 6.0 + 27.0  # 55%: half-way through the cosine after warmup
    assert budget.lr_factor(0) == pytest.approx(0.5, abs=0.01)
    budget.offset = 60.0
    assert budget.lr_factor(0) == pytest.approx(0.0, abs=1e-6)

    class Control:
        should_training_stop = should_save = should_evaluate = False

    control = budget.on_step_end(None, None, Control())
    assert control.should_training_stop and control.should_save and control.should_evaluate
    # The spent time travels with the checkpoint, so a resumed run continues the same schedule.
    (tmp_path / "checkpoint-7").mkdir()

    class Args:
        output_dir = str(tmp_path)

    class State:
        global_step = 7

    budget.on_save(Args(), State(), control)
    again = TimeBudget(minutes=1.0, warmup=0.1, has_eval=True)
    again.resume_from(str(tmp_path / "checkpoint-7"))
    assert again.offset >= 60.0


def test_train_within_a_time_budget_with_ctc(words: Path, tmp_path: Path) -> None:
    from trocr_tune.train import train

    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            *TINY_MODEL,
            "train.max_minutes=0.15",
            "train.ctc_weight=1.0",
            "train.ctc_warmup=0.3",
            "train.eval_steps=100000",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    metrics = result.metrics
    assert metrics["train"]["optimizer_steps"] >= 3 and not metrics["train"]["interrupted"]
    assert seconds < 9 + 60  # the budget (9 s) plus start-up, final evaluation and saving
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "cer" in history.get("eval", history)  # the final evaluation ran on the validation split
    state = json.loads(
        next((tmp_path / "run").glob("checkpoints/checkpoint-*/trainer_state.json")).read_text()
    )
    ctc_logged = [row["ctc_loss"] for row in state["log_history"] if "ctc_loss" in row]
    assert ctc_logged and all(v > 0 for v in ctc_logged)
    assert list((tmp_path / "run").glob("checkpoints/checkpoint-*/time_budget.json"))


def test_ctc_warmup_needs_ctc_weight(words: Path) -> None:
    with pytest.raises(UserError, match="ctc_warmup"):
        load_config(None, ["data.layout=manifest", f"data.root={words}", "train.ctc_warmup=0.2"])


def test_ctc_log_likelihood_matches_the_training_loss() -> None:
    from trocr_tune.model.ctc import ctc_log_likelihood

    torch.manual_seed(0)
    model = build_preset_model("conv", 20, 16, 256, 32, SPECIAL, dropout=0.0).eval()
    with torch.inference_mode():
        states = model.encoder(pixel_values=torch.randn(2, 3, 16, 256)).last_hidden_state
        ll = ctc_log_likelihood(model, states, [[5, 6, 7], [8, 9]], pad_id=1)
        for i, labels in enumerate(([[5, 6, 7, 2]], [[8, 9, 2, -100]])):
            # the training loss is the per-character mean of the same negative log-likelihood
            loss = ctc_loss(model, states[i : i + 1], torch.tensor(labels), pad_id=1, eos_id=2)
            assert torch.allclose(-ll[i] / (3 - i), loss, atol=1e-4)
    assert ll.shape == (2,) and bool((ll < 0).all())


def test_ctc_rescoring_picks_among_the_beams(tiny_run: Path) -> None:
    """eval.ctc_rescore keeps all beams and returns the one with the best joint score."""
    from trocr_tune.config import EvalConfig
    from trocr_tune.data.dataset import LineDataset, collate
    from trocr_tune.data.reader import read_dataset
    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.runners import TorchRunner
    from trocr_tune.model.ctc import ctc_log_likelihood
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(str(tiny_run / "model"))
    model, tok = bundle.model.eval(), bundle.tokenizer
    cfg = load_config(tiny_run / "config.yaml", [])
    samples = read_dataset(cfg.data).split("train")[:6]
    pixels = collate([LineDataset(samples, bundle.image_processor, tok)[i] for i in range(6)])["pixel_values"]
    runner = TorchRunner(model, tok, torch.device("cpu"))
    plain = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=4))
    # Rescoring is a beam-search step: off without beams, and never an argument of generate.
    assert not plain.rescores and not DecodeSettings.from_eval(bundle, EvalConfig(ctc_rescore=0.5)).rescores
    assert set(plain.generate_kwargs()) == {
        "max_length",
        "num_beams",
        "do_sample",
        "length_penalty",
        "early_stopping",
    }
    with torch.inference_mode():
        beams = model.generate(pixel_values=pixels, num_return_sequences=4, **plain.generate_kwargs())
        states = model.encoder(pixel_values=pixels).last_hidden_state
    texts = [t.strip() for t in tok.batch_decode(beams, skip_special_tokens=True)]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ll = ctc_log_likelihood(model, states, rows, tok.pad_token_id, rows_per_image=4).view(6, 4)
    assert torch.equal(
        ll.flatten(), ctc_log_likelihood(model, states.repeat_interleave(4, 0), rows, tok.pad_token_id)
    )
    # Weight 1: the CTC reading decides among the 4 beams (never a text outside them).
    chosen = runner.generate_batch(
        pixels, DecodeSettings.from_eval(bundle, EvalConfig(num_beams=4, ctc_rescore=1.0))
    )
    for i, pred in enumerate(chosen):
        group = texts[4 * i : 4 * i + 4]
        assert pred.text in group
        assert ll[i, group.index(pred.text)] >= ll[i].max() - 1e-4
    # Off (or greedy decoding): the ordinary beam-search result, one per image.
    top = [p.text for p in runner.generate_batch(pixels, plain)]
    assert top == texts[::4]
    with pytest.raises(UserError, match="ctc_rescore"):
        EvalConfig(ctc_rescore=1.5)


def test_views_keep_the_shape_and_change_the_ink_as_named() -> None:
    from trocr_tune.decoding.views import VIEWS, paper

    pixels = torch.full((2, 3, 16, 64), 0.8)
    pixels[:, :, 6:10, 10:54] = -1.0  # one dark bar on light paper
    ink = lambda x: (x < 0).sum().item()  # noqa: E731
    for name, view in VIEWS.items():
        out = view(pixels)
        assert out.shape == pixels.shape and out.dtype == pixels.dtype, name
        assert torch.allclose(paper(out), paper(pixels)), name  # the paper tone is kept
    assert bool((VIEWS["thicker"](pixels) <= pixels).all()) and ink(VIEWS["thicker"](pixels)) > ink(pixels)
    assert bool((VIEWS["thinner"](pixels) >= pixels).all()) and ink(VIEWS["thinner"](pixels)) < ink(pixels)
    blurred = VIEWS["blur"](pixels)
    edge = (blurred > -1.0) & (blurred < 0.8)  # grey where ink met paper; no ink lost or added
    assert (
        edge.sum() > 0
        and (pixels[edge] != blurred[edge]).all()
        and abs(blurred.mean() - pixels.mean()) < 1e-5
    )
    for name, axis in (("pad-x", -1), ("pad-y", -2)):
        dark = (VIEWS[name](pixels)[0, 0] < 0).any(dim=-1 if axis == -2 else -2).nonzero()
        before = (pixels[0, 0] < 0).any(dim=-1 if axis == -2 else -2).nonzero()
        assert len(dark) < len(before), name  # the line is smaller along that axis, centred
        assert dark.min() >= before.min() and dark.max() <= before.max(), name


def test_decoder_log_likelihood_equals_the_beam_scores(tiny_run: Path) -> None:
    from trocr_tune.config import EvalConfig
    from trocr_tune.data.dataset import LineDataset, collate
    from trocr_tune.data.reader import read_dataset
    from trocr_tune.decoding import DecodeSettings, sequence_end
    from trocr_tune.decoding.runners import decoder_log_likelihood
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(str(tiny_run / "model"))
    model, tok = bundle.model.eval(), bundle.tokenizer
    samples = read_dataset(load_config(tiny_run / "config.yaml", []).data).split("train")[:5]
    pixels = collate([LineDataset(samples, bundle.image_processor, tok)[i] for i in range(5)])["pixel_values"]
    kwargs = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=3))
    with torch.inference_mode():
        out = model.generate(
            pixel_values=pixels,
            num_return_sequences=3,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs.generate_kwargs(),
        )
        scores = model.compute_transition_scores(
            out.sequences, out.scores, out.beam_indices, normalize_logits=True
        )
        states = model.encoder(pixel_values=pixels).last_hidden_state
        rows, expected = [], []
        for ids, logp in zip(out.sequences[:, 1:].tolist(), scores, strict=True):
            n_text, n_scored = sequence_end(ids, tok.eos_token_id, tok.pad_token_id)
            rows.append(ids[:n_text])
            expected.append(float(logp[:n_scored].sum()))
        got = decoder_log_likelihood(
            model, states, rows, tok.eos_token_id, tok.pad_token_id, rows_per_image=3
        )
    assert torch.allclose(got, torch.tensor(expected), atol=1e-3)


def test_rescoring_with_views_and_length_bonus_picks_the_best_joint_score(tiny_run: Path) -> None:
    from trocr_tune.config import EvalConfig
    from trocr_tune.data.dataset import LineDataset, collate
    from trocr_tune.data.reader import read_dataset
    from trocr_tune.decoding import DecodeSettings
    from trocr_tune.decoding.runners import TorchRunner, decoder_log_likelihood
    from trocr_tune.decoding.views import VIEWS
    from trocr_tune.model.ctc import ctc_log_likelihood
    from trocr_tune.model.loading import load_bundle

    bundle = load_bundle(str(tiny_run / "model"))
    model, tok = bundle.model.eval(), bundle.tokenizer
    samples = read_dataset(load_config(tiny_run / "config.yaml", []).data).split("train")[:6]
    pixels = collate([LineDataset(samples, bundle.image_processor, tok)[i] for i in range(6)])["pixel_values"]
    cfg = EvalConfig(num_beams=4, ctc_rescore=0.5, rescore_length_bonus=2.0, rescore_views=["blur", "pad-x"])
    kwargs = DecodeSettings.from_eval(bundle, cfg)
    assert kwargs.rescoring.views == ("blur", "pad-x") and kwargs.rescoring.length_bonus == 2.0
    plain = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=4))
    with torch.inference_mode():
        beams = model.generate(pixel_values=pixels, num_return_sequences=4, **plain.generate_kwargs())
        texts = [t.strip() for t in tok.batch_decode(beams, skip_special_tokens=True)]
        rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        eos, pad = tok.eos_token_id, tok.pad_token_id
        joint = torch.zeros(len(rows))
        for view in (lambda x: x, VIEWS["blur"], VIEWS["pad-x"]):
            states = model.encoder(pixel_values=view(pixels)).last_hidden_state
            joint += 0.5 * decoder_log_likelihood(model, states, rows, eos, pad, rows_per_image=4)
            joint += 0.5 * ctc_log_likelihood(model, states, rows, pad, rows_per_image=4)
        joint = (joint / 3 + 2.0 * torch.tensor([len(r) for r in rows])).view(6, 4)
    runner = TorchRunner(model, tok, torch.device("cpu"))
    chosen = runner.generate_batch(pixels, kwargs)
    for i, pred in enumerate(chosen):
        group = texts[4 * i : 4 * i + 4]
        assert pred.text in group
        assert joint[i, group.index(pred.text)] >= joint[i].max() - 1e-3

    # The margin gate: views only where the two best beams are that close. A huge margin views
    # every image; a vanishing one none, which is the bonus-only rescoring.
    def texts_with(**changes: object) -> list[str]:
        gated = DecodeSettings.from_eval(bundle, EvalConfig(**{**cfg.__dict__, **changes}))
        return [p.text for p in runner.generate_batch(pixels, gated)]

    assert texts_with(rescore_views_margin=1e9) == [p.text for p in chosen]
    assert texts_with(rescore_views_margin=1e-9) == texts_with(rescore_views=[])


def test_rescoring_options_need_ctc_rescore_and_known_views() -> None:
    from trocr_tune.config import EvalConfig

    with pytest.raises(UserError, match=r"need eval\.ctc_rescore"):
        EvalConfig(num_beams=4, rescore_length_bonus=1.0)
    with pytest.raises(UserError, match=r"need eval\.ctc_rescore"):
        EvalConfig(num_beams=4, rescore_views=["blur"])
    with pytest.raises(UserError, match=r"rescore_views=.sharpen. is not one of"):
        EvalConfig(num_beams=4, ctc_rescore=0.5, rescore_views=["sharpen"])
    with pytest.raises(UserError, match="rescore_views_margin"):
        EvalConfig(num_beams=4, ctc_rescore=0.5, rescore_views_margin=1.0)
    with pytest.raises(UserError, match="rescore_views_margin"):
        EvalConfig(num_beams=4, ctc_rescore=0.5, rescore_views=["blur"], rescore_views_margin=0.0)
