"""decoding/runners.py: beam search with a cache whose reordering leaves the cross-attention part
in place reads exactly what `generate`'s own cache reads, on the shipped base and real lines."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from trocr_tune.config import EvalConfig
from trocr_tune.decoding import DecodeSettings
from trocr_tune.decoding.runners import SelfAttentionReorderedCache, TorchRunner, beam_cache
from trocr_tune.model.loading import load_bundle

LINES = Path(str(resources.files("trocr_tune").joinpath("resources/demo-lines/poilus")))


def _real_pixels(bundle: Any, count: int) -> torch.Tensor:
    rows = [json.loads(line) for line in (LINES / "manifest.jsonl").read_text("utf-8").splitlines()]
    images = [Image.open(LINES / r["image"]).convert("RGB") for r in rows if r["split"] == "test"][:count]
    return bundle.image_processor(images=images, return_tensors="pt").pixel_values


def test_beams_with_the_cross_attention_left_in_place_equal_generates_own_cache() -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = _real_pixels(bundle, 6)
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


def test_the_runner_uses_it_for_beams_only(monkeypatch: Any) -> None:
    bundle = load_bundle("trocr-tune/base-htr")
    pixels = _real_pixels(bundle, 2)
    seen: list[Any] = []
    generate = bundle.model.generate

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("cache"))
        return generate(*args, **kwargs)

    monkeypatch.setattr(bundle.model, "generate", spy)
    runner = TorchRunner(bundle.model, bundle.tokenizer, torch.device("cpu"))
    for beams in (1, 3):
        runner.generate_batch(pixels, DecodeSettings.from_eval(bundle, EvalConfig(num_beams=beams), 40))
    assert seen[0] is None and isinstance(seen[1], SelfAttentionReorderedCache)
    # A generation config that builds its own cache keeps it.
    bundle.model.generation_config.cache_implementation = "static"
    assert beam_cache(bundle.model) is None
