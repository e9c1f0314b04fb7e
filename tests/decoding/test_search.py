"""decoding/search.py: the TrOCR search loop reads what `generate` reads (Transformers' own beam
search is the reference implementation), greedy and beams, with and without LM fusion, on the
shipped base with real lines and on TrOCR shapes it must also handle."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from trocr_tune.config import EvalConfig
from trocr_tune.decoding import DecodeSettings
from trocr_tune.decoding.runners import TorchRunner
from trocr_tune.decoding.search import TrOCRSteps, search
from trocr_tune.model.loading import load_bundle

from builders import real_demo_pixels, vit_trocr


def _reference(model: Any, pixels: torch.Tensor, beams: int, max_new_tokens: int, **extra: Any) -> Any:
    """Plain `generate` (its own cache, no trocr-tune code in the loop): every beam and its scores."""
    kwargs: dict[str, Any] = {"num_beams": beams, "do_sample": False, "max_length": 1 + max_new_tokens}
    if beams > 1:
        kwargs.update(early_stopping=True, length_penalty=1.0, num_return_sequences=beams)
    with torch.inference_mode():
        out = model.generate(
            pixel_values=pixels, output_scores=True, return_dict_in_generate=True, **kwargs, **extra
        )
        scores = model.compute_transition_scores(
            out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
        )
    return out.sequences[:, 1:], scores


def _ours(
    model: Any, pixels: torch.Tensor, beams: int, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    config = model.generation_config
    with torch.inference_mode():
        states = model.encoder(pixel_values=pixels).last_hidden_state
        steps = TrOCRSteps(model)
        steps.begin(states, beams, max_new_tokens)
        ids, logp = search(
            steps,
            len(states),
            beams=beams,
            max_new_tokens=max_new_tokens,
            start=config.decoder_start_token_id,
            eos=config.eos_token_id,
            pad=config.pad_token_id,
            all_beams=beams > 1,
        )
    return torch.tensor(ids), logp


def _assert_same(model: Any, pixels: torch.Tensor, beams: int, max_new_tokens: int) -> torch.Tensor:
    want_ids, want_logp = _reference(model, pixels, beams, max_new_tokens)
    got_ids, got_logp = _ours(model, pixels, beams, max_new_tokens)
    pad = model.generation_config.pad_token_id
    width = max(want_ids.shape[1], got_ids.shape[1])
    want = torch.nn.functional.pad(want_ids, (0, width - want_ids.shape[1]), value=pad)
    got = torch.nn.functional.pad(got_ids, (0, width - got_ids.shape[1]), value=pad)
    assert torch.equal(got, want)
    scored = (want_ids != pad).float()
    n = want_logp.shape[1]
    assert torch.allclose(got_logp[:, :n] * scored, want_logp.float() * scored, atol=1e-4)
    return got


@pytest.mark.parametrize("beams", [1, 5])
def test_the_shipped_base_reads_real_lines_exactly_as_generate(beams: int) -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    assert TrOCRSteps.supports(bundle.model)
    # 12 lines x 5 beams: enough finished readings of different lengths that a wrong length
    # normalisation changes their order.
    pixels = real_demo_pixels(bundle, 12)
    got = _assert_same(bundle.model, pixels, beams, 60)
    eos = bundle.model.generation_config.eos_token_id
    # Real readings of different lengths: images leave the batch at different steps.
    ends = {row.index(eos) for row in got.tolist() if eos in row}
    assert len(ends) > 2
    if beams > 1:
        assert len(set(map(tuple, got.tolist()))) > 12  # the beams differ


def test_the_length_limit_ends_every_reading_as_in_generate() -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 3)
    for beams in (1, 3):
        got = _assert_same(bundle.model, pixels, beams, 5)
        assert got.shape[1] == 5


def _random_trocr(learned: bool) -> Any:
    """A TrOCR with the other options a checkpoint may carry: sinusoidal positions, scaled
    embeddings, no embedding layer norm, an encoder wider than the decoder (enc_to_dec_proj)."""
    torch.manual_seed(0)
    model = vit_trocr(
        40,
        32,
        encoder_hidden=48,
        patch_size=8,
        decoder_layers=2,
        decoder_attention_heads=4,
        max_position_embeddings=128,
        use_learned_position_embeddings=learned,
        scale_embedding=not learned,
        layernorm_embedding=learned,
        activation_function="relu",
    )
    # Random weights rarely end a line: a larger end-of-line row makes some readings end early.
    with torch.no_grad():
        model.decoder.output_projection.weight[2] *= 2
    return model.eval()


@pytest.mark.parametrize("learned", [True, False])
def test_other_trocr_shapes_read_as_in_generate(learned: bool) -> None:
    model = _random_trocr(learned)
    assert model.enc_to_dec_proj is not None and TrOCRSteps(model).project is not None
    pixels = torch.rand(5, 3, 32, 32) * 2 - 1
    for beams in (1, 3):
        _assert_same(model, pixels, beams, 12)


def test_the_cache_grows_past_its_first_room() -> None:
    """70 steps, past the 64 the cache first makes room for: every step's logits equal one
    teacher-forced pass of the model over the whole sequence."""
    from transformers.modeling_outputs import BaseModelOutput

    model = _random_trocr(True)
    steps = TrOCRSteps(model)
    tokens = torch.randint(3, 40, (2, 70))
    tokens[:, 0] = model.generation_config.decoder_start_token_id
    with torch.inference_mode():
        states = model.encoder(pixel_values=torch.rand(2, 3, 32, 32)).last_hidden_state
        steps.begin(states, 1, 70)
        got = torch.stack([steps.step(tokens[:, i]) for i in range(70)], 1)
        want = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=states), decoder_input_ids=tokens
        ).logits
    assert steps.cache[0][0].numel() >= 70 * 2 * steps.width
    assert torch.allclose(got, want, atol=1e-4)


def test_the_runner_reads_the_same_with_lm_fusion_and_rescoring() -> None:
    """The runner's own loop against its `generate` path, with the demo-style accurate decoding."""
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 6)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    assert runner.fast
    for cfg in (
        EvalConfig(num_beams=1, lm_fusion=0.3),
        EvalConfig(num_beams=4, lm_fusion=0.25, lm_weight=0.25, ctc_rescore=0.5, rescore_length_bonus=1.0),
    ):
        settings = DecodeSettings.from_eval(bundle, cfg, 60)
        fast = runner.generate_batch(pixels, settings)
        runner.fast = False
        plain = runner.generate_batch(pixels, settings)
        runner.fast = True
        assert [p.text for p in fast] == [p.text for p in plain]
        assert [p.confidence for p in fast] == pytest.approx([p.confidence for p in plain], abs=1e-5)


def test_what_the_loop_does_not_implement_goes_through_generate(monkeypatch: Any) -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 2)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    calls: list[int] = []
    generate = bundle.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return generate(*args, **kwargs)

    monkeypatch.setattr(bundle.model, "generate", spy)
    runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, EvalConfig(num_beams=2), 30))
    assert calls == []
    runner.generate_batch(
        pixels, DecodeSettings.from_eval(bundle, EvalConfig(num_beams=2, no_repeat_ngram_size=3), 30)
    )
    assert calls == [1]
    # A generation config that adds a rule, a compiled or training decoder: `generate` decodes.
    bundle.model.generation_config.forced_eos_token_id = 2
    assert not TrOCRSteps.supports(bundle.model)
    bundle.model.generation_config.forced_eos_token_id = None
    assert TrOCRSteps.supports(bundle.model)
    bundle.model.decoder.train()
    assert not TrOCRSteps.supports(bundle.model)


def test_the_runner_forgets_what_it_read() -> None:
    """The benchmark's timed runs re-read the same lines: `forget` empties what reading filled (LM
    fusion tables, the LM's memoised contexts), and the lines then read the same from scratch."""
    bundle = load_bundle("trocr-tune/base-htr")
    lm = bundle.char_lm
    assert lm is not None
    pixels = real_demo_pixels(bundle, 3)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    settings = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=2, lm_fusion=0.3, lm_weight=0.3), 40)
    first = runner.generate_batch(pixels, settings)
    assert runner._fusion is not None and runner._fusion.cache and lm._memo and lm._rows
    runner.forget(settings)
    assert runner._fusion is None and not lm._memo and not lm._rows
    assert runner.generate_batch(pixels, settings) == first
