"""Self-training (train.self_training_on): readings of unlabelled lines join training, and the run
keeps whichever model reads the validation split better."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trocr_tune.config import load_config
from trocr_tune.data.reader import read_dataset
from trocr_tune.decoding import transcribe
from trocr_tune.errors import UserError
from trocr_tune.model.loading import load_bundle
from trocr_tune.self_training import keep_self_trained, pseudo_label, unlabelled_images

from conftest import TINY_MODEL, run_main


def _files_equal(a: Path, b: Path) -> bool:
    return (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_pseudo_labels_are_the_most_confident_readings_never_the_texts(tiny_run: Path, words: Path) -> None:
    cfg = load_config(
        None,
        ["data.layout=manifest", f"data.root={words}", "train.self_training_on=test", "eval.num_beams=2"],
    )
    result = read_dataset(cfg.data)
    images = unlabelled_images("test", result)
    assert images == [s.image for s in result.split("test")] and images
    bundle = load_bundle(tiny_run / "model")
    readings, _ = transcribe(bundle, images, cfg.eval)
    for keep, expected in ((0.5, round(len(images) / 2)), (1.0, len(images))):
        cfg.train.self_training_keep = keep
        labels = pseudo_label(bundle, [*images, str(words / "missing.png")], cfg)
        assert labels.read == len(images) and labels.unreadable == 1
        nonempty = [r for r in readings if r.text.strip()]
        assert len(labels.samples) == min(expected, len(nonempty))
        by_image = dict(zip(images, readings, strict=True))
        kept = {s.image for s in labels.samples}
        for s in labels.samples:  # the model's own reading, a training line
            assert s.text == by_image[s.image].text.strip() and s.split == "train"
        floor = min(by_image[i].confidence for i in kept)
        assert labels.min_confidence == floor
        assert all(by_image[i].confidence <= floor for i in images if i not in kept)
        assert f"kept {len(labels.samples)} of {len(images)} readings" in labels.describe()


def test_self_training_from_a_folder_through_the_cli(words: Path, tmp_path: Path) -> None:
    """train.self_training_on=FOLDER: a second run trains on the readings and the better model by
    validation CER ends in RUN/model (the one it replaced, if any, in self-training/start-model)."""
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for s in read_dataset(load_config(None, ["data.layout=manifest", f"data.root={words}"]).data).split(
        "train"
    ):
        shutil.copy(s.image, folder / Path(s.image).name)
    run = tmp_path / "run"
    proc = run_main(
        "train",
        "data.layout=manifest",
        f"data.root={words}",
        *TINY_MODEL,
        "train.max_steps=6",
        "train.eval_steps=6",
        "train.learning_rate=3e-3",
        f"train.self_training_on={folder}",
        "train.self_training_keep=1.0",
        f"train.output_dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((run / "metrics.json").read_text())["self_training"]
    assert summary["read"] == len(list(folder.iterdir())) and summary["source"] == str(folder)
    second = json.loads((run / "self-training" / "metrics.json").read_text())
    assert second["self_training_lines"] == summary["kept"] > 0
    assert second["data"]["train"] == 12  # the dataset's own training lines are all still there
    assert f"kept {summary['kept']} of {summary['read']} readings as labels" in proc.stdout
    before, after = summary["validation_cer_before"], summary["validation_cer_after"]
    assert f"validation CER {before:.4f} -> {after:.4f}" in proc.stdout
    if after <= before + 0.02:
        assert summary["kept_model"] == "self-trained"
        assert _files_equal(run / "model", run / "self-training" / "model")
        assert (run / "self-training" / "start-model" / "model.safetensors").is_file()
    else:
        assert summary["kept_model"].startswith("before")
        assert not (run / "self-training" / "start-model").exists()
        assert not _files_equal(run / "model", run / "self-training" / "model")
    kept_cer = json.loads((run / "metrics.json").read_text())["eval"]["cer"]
    assert kept_cer == (after if summary["kept_model"] == "self-trained" else before)
    assert f"validation CER {kept_cer:.4f}" in proc.stdout


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("train.self_training_on=validation", "neither learns from nor is validated on"),
        ("train.self_training_on=train", "neither learns from nor is validated on"),
        ("train.self_training_keep=0", r"train\.self_training_keep must be in \(0, 1\]"),
        ("train.self_training_minutes=0", r"train\.self_training_minutes must be > 0"),
        ("train.self_training_tolerance=-1", r"train\.self_training_tolerance must be >= 0"),
    ],
)
def test_self_training_keys_fail_in_one_line(key: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, [key])


def test_an_empty_or_missing_source_is_a_clear_error(words: Path, tmp_path: Path) -> None:
    result = read_dataset(load_config(None, ["data.layout=manifest", f"data.root={words}"]).data)
    with pytest.raises(UserError, match="not found"):
        unlabelled_images(str(tmp_path / "nowhere"), result)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        unlabelled_images(str(tmp_path / "empty"), result)


def test_the_self_trained_model_is_kept_unless_validation_rises_past_the_tolerance() -> None:
    assert keep_self_trained(0.40, 0.39, 0.0) and keep_self_trained(0.40, 0.415, 0.02)
    assert not keep_self_trained(0.40, 0.425, 0.02) and not keep_self_trained(0.40, 0.401, 0.0)
    assert keep_self_trained(None, 0.5, 0.0) and keep_self_trained(0.4, None, 0.0)
