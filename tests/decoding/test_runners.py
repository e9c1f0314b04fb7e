"""decoding/runners.py: beam search that keeps one copy of each image's cross-attention keys and
values (neither reordered nor read once per beam) reads what `generate`'s own cache reads, on the
shipped base and real lines, and on a hub-shaped TrOCR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trocr_tune.config import EvalConfig
from trocr_tune.decoding import DecodeSettings
from trocr_tune.decoding.runners import (
    SelfAttentionReorderedCache,
    TorchRunner,
    beam_cache,
    beams_share_cross_attention,
)
from trocr_tune.model.loading import load_bundle

from builders import real_demo_pixels


def test_beams_with_the_cross_attention_left_in_place_equal_generates_own_cache() -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 6)
    kwargs = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=4), 60).generate_kwargs()
    with torch.inference_mode():
        outputs = [
            bundle.model.generate(
                pixel_values=pixels,
                num_return_sequences=4,
                output_scores=True,
                return_dict_in_generate=True,
                **kwargs,
                **extra,
            )
            for extra in ({}, {"cache": beam_cache(bundle.model)})
        ]
    plain, shared = outputs
    # Every beam of every line, and its score, exactly as generate's own cache gives them.
    assert torch.equal(plain.sequences, shared.sequences)
    assert torch.equal(plain.sequences_scores, shared.sequences_scores)
    assert plain.sequences.shape[0] == 24 and len(set(map(tuple, plain.sequences.tolist()))) > 6

    # And with the beams of an image attending to one copy of its keys and values: the same beams,
    # scores equal up to float rounding (other matrix shapes), one cache row per image.
    cache = beam_cache(bundle.model)
    attention = bundle.model.decoder.model.decoder.layers[0].encoder_attn
    with torch.inference_mode(), beams_share_cross_attention(bundle.model, 4) as applies:
        one_copy = bundle.model.generate(
            pixel_values=pixels,
            num_return_sequences=4,
            output_scores=True,
            return_dict_in_generate=True,
            cache=cache,
            **kwargs,
        )
        assert applies and "forward" in vars(attention)
    assert "forward" not in vars(attention)  # the module's own forward is back
    assert cache is not None and cache.cross_attention_cache.layers[0].keys.shape[0] == 6
    assert torch.equal(plain.sequences, one_copy.sequences)
    assert torch.allclose(plain.sequences_scores, one_copy.sequences_scores, atol=1e-5)


def test_a_hub_shaped_trocr_reads_the_same_beams(tmp_path: Path) -> None:
    """microsoft/trocr-*'s shape (ViT encoder, BPE tokenizer, start token </s>): the runner's beams
    (one copy of the cross-attention per image) equal plain `generate`'s."""
    from builders import build_roberta_style_checkpoint

    bundle = load_bundle(build_roberta_style_checkpoint(tmp_path / "hub"))
    torch.manual_seed(0)
    pixels = torch.rand(3, 3, 64, 64) * 2 - 1
    settings = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=3), 12)
    with torch.inference_mode():
        plain = bundle.model.generate(pixel_values=pixels, **settings.generate_kwargs())
    got = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu")).generate_batch(pixels, settings)
    want = bundle.tokenizer.batch_decode(plain, skip_special_tokens=True)
    assert [p.text for p in got] == [t.strip() for t in want]


def test_the_runner_uses_it_for_beams_only(monkeypatch: Any) -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 2)
    seen: list[Any] = []
    generate = bundle.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("cache"))
        return generate(*args, **kwargs)

    monkeypatch.setattr(bundle.model, "generate", spy)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    runner.fast = False  # the `generate` path (decoders decoding/search.py does not take)
    for beams in (1, 3):
        runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, EvalConfig(num_beams=beams), 40))
    assert seen[0] is None and isinstance(seen[1], SelfAttentionReorderedCache)
    # A generation config that builds its own cache keeps it.
    bundle.model.generation_config.cache_implementation = "static"
    assert beam_cache(bundle.model) is None


def test_fused_beams_score_each_reading_by_the_decoder_alone() -> None:
    """With LM fusion the search's scores include the LM; the runner reads the decoder's own
    per-token log-probabilities off its raw logits along each beam. They equal a teacher-forced
    decoder pass over the chosen reading (the confidence is their mean over tokens + eos)."""
    from trocr_tune.decoding.runners import decoder_log_likelihood

    bundle = load_bundle("trocr-tune/base-htr")
    assert bundle.char_lm is not None
    pixels = real_demo_pixels(bundle, 4)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    cfg = EvalConfig(num_beams=4, lm_fusion=0.5, lm_weight=0.25, ctc_rescore=0.5, rescore_length_bonus=1.0)
    predictions = runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, cfg, 60))
    tok = bundle.tokenizer
    with torch.inference_mode():
        states = bundle.model.encoder(pixel_values=pixels).last_hidden_state
        for i, prediction in enumerate(predictions):
            row = tok(prediction.text, add_special_tokens=False)["input_ids"]
            own = decoder_log_likelihood(
                bundle.model, states[i : i + 1], [row], tok.eos_token_id, tok.pad_token_id
            )
            assert prediction.confidence == pytest.approx(float(own[0]) / (len(row) + 1), abs=1e-4)


def test_a_convolutional_encoder_reads_channels_last_pixels_to_the_same_result(tmp_path: Path) -> None:
    """On CPU the shipped base's BiT encoder gets channels-last pixels (oneDNN's layout); a ViT,
    whose only convolution is its patch embedding, keeps the usual layout. Readings are the same."""
    from builders import build_roberta_style_checkpoint

    bundle = load_bundle("trocr-tune/base-htr")
    pixels = real_demo_pixels(bundle, 6)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    assert runner.channels_last
    for beams in (1, 3):
        settings = DecodeSettings.from_eval(bundle, EvalConfig(num_beams=beams), 60)
        runner.channels_last = True
        fast = runner.generate_batch(pixels, settings)
        runner.channels_last = False
        usual = runner.generate_batch(pixels, settings)
        assert [p.text for p in fast] == [p.text for p in usual]
        assert [p.confidence for p in fast] == pytest.approx([p.confidence for p in usual], abs=1e-5)
    hub = load_bundle(build_roberta_style_checkpoint(tmp_path / "hub"))
    assert not TorchRunner(hub.model, hub.tokenizer, torch.device("cpu")).channels_last
