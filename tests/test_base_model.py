"""The shipped base (trocr-tune/base-htr): loads by its name and in plain Transformers, reads real lines."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import TrOCRProcessor, VisionEncoderDecoderModel

from trocr_tune.config import load_config
from trocr_tune.errors import UserError
from trocr_tune.metrics import compute_metrics
from trocr_tune.model.loading import BUILTIN_MODELS, load_bundle, resolve_model_name

NAME = "trocr-tune/base-htr"
LINES = Path(str(resources.files("trocr_tune").joinpath("resources/demo-lines/poilus")))


def real_lines(split: str, count: int) -> list[dict]:
    rows = [json.loads(line) for line in (LINES / "manifest.jsonl").read_text("utf-8").splitlines()]
    return [r for r in rows if r["split"] == split][:count]


def test_the_base_is_in_the_package_and_small() -> None:
    folder = Path(resolve_model_name(NAME))
    assert NAME in BUILTIN_MODELS and (folder / "config.json").is_file()
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    assert size <= 30 * 2**20, f"{size / 2**20:.1f} MB"
    info = json.loads((folder / "trocr_tune.json").read_text("utf-8"))
    assert info["geometry"] == "processor"
    # Its alphabet covers French, Spanish, English and the medieval marks of its training hands.
    vocab = TrOCRProcessor.from_pretrained(folder).tokenizer.get_vocab()
    for char in "aéèçñ’ꝑ⁊õ0123456789":
        assert char in vocab, char


def test_unknown_builtin_folder_and_other_names_pass_through() -> None:
    assert resolve_model_name("microsoft/trocr-base-handwritten") == "microsoft/trocr-base-handwritten"
    # A name that is a path says the folder is missing (issue 18 row 15), not a hub error.
    with pytest.raises(UserError, match="model folder /nonexistent/model-folder does not exist"):
        load_bundle("/nonexistent/model-folder")


def test_plain_transformers_loads_it_and_reads_real_lines() -> None:
    """Greedy reading of committed real lines, of training hands and of hands it never saw."""
    folder = resolve_model_name(NAME)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = TrOCRProcessor.from_pretrained(folder)
    scores = {}
    for split in ("train", "test"):
        rows = real_lines(split, 12)
        images = [Image.open(LINES / r["image"]).convert("RGB") for r in rows]
        pixels = processor(images=images, return_tensors="pt").pixel_values
        with torch.no_grad():
            ids = model.generate(pixels, max_new_tokens=120, num_beams=1)
        texts = processor.batch_decode(ids, skip_special_tokens=True)
        scores[split] = compute_metrics(texts, [r["text"] for r in rows]).cer
    assert scores["train"] < TRAIN_HANDS_CER, scores
    assert scores["test"] < UNSEEN_HANDS_CER, scores


def test_loads_by_name_through_the_library_and_the_recipes_start_from_it() -> None:
    bundle = load_bundle(NAME)
    assert bundle.info.image_height == 48 and bundle.info.image_width == 768
    assert bundle.char_lm is not None  # the pretraining transcripts' character n-gram model
    repo = Path(__file__).resolve().parents[1]
    for recipe in ("demo", "htromance-alto", "poilus-wills", "stanford-handwritten", "spanish-notary", "iam"):
        cfg = load_config(repo / "configs" / f"{recipe}.yaml", ["data.root=x"])
        assert cfg.model.name_or_path == NAME and cfg.model.geometry == "processor", recipe


def test_the_base_recommends_the_recipes_fine_tuning() -> None:
    """A user who names only the base and the data trains as the real-line recipes do: the base's
    `fine_tuning` keys are the values every recipe sets, and `train` takes them for unset keys."""
    from trocr_tune.config import with_recommended
    from trocr_tune.model.loading import recorded_fine_tuning

    recommended = recorded_fine_tuning(NAME)
    assert {"model.geometry", "train.learning_rate", "train.augment", "train.ctc_weight"} <= set(recommended)
    repo = Path(__file__).resolve().parents[1]
    for recipe in ("demo", "htromance-alto", "poilus-wills", "stanford-handwritten", "spanish-notary", "iam"):
        cfg = load_config(repo / "configs" / f"{recipe}.yaml", ["data.root=x"])
        for key, value in recommended.items():
            section, _, name = key.partition(".")
            assert getattr(getattr(cfg, section), name) == value, (recipe, key)
    bare = load_config(None, ["data.root=x", f"model.name_or_path={NAME}", "train.batch_size=4"])
    cfg, taken = with_recommended(bare, recommended, NAME)
    assert "train.batch_size" not in taken and cfg.train.batch_size == 4
    assert cfg.model.geometry == "processor" and cfg.train.augment == "handwriting"
    assert cfg.train.learning_rate == 5e-4 and cfg.eval.lm_fusion == 0.1


def test_train_without_a_model_fine_tunes_the_base_as_it_recommends() -> None:
    from trocr_tune.model.loading import training_config

    cfg, notes = training_config(load_config(None, ["data.root=x", "train.learning_rate=1e-4"]))
    assert cfg.model.name_or_path == NAME and cfg.model.geometry == "processor"
    assert cfg.train.learning_rate == 1e-4 and cfg.train.ctc_weight == 1.0
    assert notes[0] == f"model.name_or_path={NAME} (no model named): the shipped base"
    assert notes[1].startswith(f"fine-tuning as {NAME} recommends: model.geometry=processor, train.batch")
    assert "learning_rate" not in notes[1]
    # A preset trains from scratch as before: nothing is recommended to it.
    cfg, notes = training_config(load_config(None, ["data.root=x", "model.preset=tiny"]))
    assert cfg.model.name_or_path is None and notes == []


# Greedy CER of the shipped (stage-7, 48 x 768) checkpoint on these 12 + 12 lines: 0.244 on training
# hands, 0.529 on the unseen test hands (stage 6: 0.281 and 0.523); a random or broken model reads
# ~1.0, the stage-2 base read 0.595 and 0.673. The bounds leave room for other CPUs' arithmetic, not
# for a different model.
TRAIN_HANDS_CER = 0.29
UNSEEN_HANDS_CER = 0.58


def test_stretch_geometry_regrids_the_conv_base(tmp_path: Path) -> None:
    """model.geometry=stretch re-grids the conv base (48 x 768); the saved checkpoint is plain."""
    from trocr_tune.model.geometry import resample_position_embeddings
    from trocr_tune.model.loading import build_for_training, save_bundle

    cfg = load_config(
        None,
        [
            f"model.name_or_path={NAME}",
            "model.geometry=stretch",
            "model.image_height=32",
            "model.image_width=512",
        ],
    )
    bundle = build_for_training(cfg.model, ["Paris"], ["Paris"])
    encoder: Any = bundle.model.config.encoder
    assert list(encoder.image_size) == [32, 512] and encoder.backbone_featmap_shape[2:] == [4, 64]
    assert (bundle.info.image_height, bundle.info.image_width) == (32, 512)
    rows = real_lines("test", 2)
    images = [Image.open(LINES / r["image"]).convert("RGB") for r in rows]
    pixels = bundle.image_processor(images=images, return_tensors="pt").pixel_values
    assert pixels.shape == (2, 3, 32, 512)
    base = VisionEncoderDecoderModel.from_pretrained(resolve_model_name(NAME)).eval()
    # The convolutions are kept as they were; only the position table is resampled (16 x 16 + cls).
    regridded = dict(bundle.model.encoder.named_parameters())
    assert regridded["embeddings.position_embeddings"].shape == (1, 257, 128)
    for name, weight in base.encoder.named_parameters():
        if "position_embeddings" not in name:
            assert torch.equal(weight, regridded[name]), name
    out = save_bundle(bundle, tmp_path / "m")
    plain = VisionEncoderDecoderModel.from_pretrained(out).eval()
    again = (
        TrOCRProcessor.from_pretrained(out).image_processor(images=images, return_tensors="pt").pixel_values
    )
    assert torch.equal(again, pixels)
    bundle.model.eval()
    with torch.no_grad():
        assert torch.equal(
            plain.encoder(pixels).last_hidden_state, bundle.model.encoder(pixels).last_hidden_state
        )
        ids = plain.generate(pixels, max_new_tokens=40, num_beams=1)
    assert ids.shape[0] == 2
    # The conv base reads its table as a square grid: sizes that are not width = 16 x height fail clearly.
    with pytest.raises(UserError, match="square number"):
        resample_position_embeddings(plain, 64, 512)
    assert resample_position_embeddings(plain, 32, 512) is False


def test_lines_too_long_for_the_decoder_name_the_length_that_fits() -> None:
    """The base's decoder has 256 positions: a 229-character line fits (with the 10% headroom and
    the start and end tokens), a 230-character one stops training with the key that drops it."""
    from trocr_tune.config import ModelConfig
    from trocr_tune.model.loading import build_for_training

    model = ModelConfig(name_or_path=NAME, geometry="processor")
    build_for_training(model, ["a" * 229], ["a" * 229])
    with pytest.raises(
        UserError,
        match=r"decoder has only 256 positions: drop the longest lines with data\.max_text_length=229",
    ):
        build_for_training(model, ["a" * 230], ["a" * 230])
