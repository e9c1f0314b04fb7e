"""Training end to end: overfit on real lines, round trip, resume, DDP, CLI commands."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import TrainerCallback, TrOCRProcessor, VisionEncoderDecoderModel

from trocr_tune.config import load_config
from trocr_tune.data.dataset import LineDataset, collate
from trocr_tune.data.reader import read_dataset
from trocr_tune.decoding import transcribe
from trocr_tune.errors import UserError
from trocr_tune.evaluate import evaluate_bundle
from trocr_tune.model.loading import load_bundle
from trocr_tune.train import train

from builders import build_roberta_style_checkpoint, word_manifest
from conftest import SHARED_DATA, TINY_MODEL, run_cli, run_main

TINY = TINY_MODEL


@pytest.mark.realdata
def test_overfit_eight_real_lines(tmp_path: Path) -> None:
    """The maintainers' first sanity check: a tiny model memorises 8 real lines (CER < 5%)."""
    page = SHARED_DATA / "htromance-spain" / "bnf-esp-229" / "laberinto_2v.chocomufin.xml"
    data = [
        "data.layout=alto",
        f"data.root={page}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.split_ratios=[1, 0, 0]",
        "data.limit=8",
    ]
    cfg = load_config(
        None,
        [
            *data,
            "model.preset=tiny",
            "model.image_height=32",
            "model.image_width=256",
            "model.dropout=0",
            "train.learning_rate=3e-3",
            "train.max_steps=200",
            "train.cache_images=true",
            "train.warmup_ratio=0.05",
            "train.num_workers=0",
            "train.logging_steps=50",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    lines = read_dataset(cfg.data).split("train")
    assert len(lines) == 8 and sum(len(s.text) for s in lines) > 150
    result = train(cfg)
    report = evaluate_bundle(load_bundle(result.model_dir), lines, cfg.eval)
    assert report.metrics.cer < 0.05, [(r.reference, r.prediction) for r in report.samples]


def test_run_directory_contents(tiny_run: Path) -> None:
    for name in (
        "config.yaml",
        "metrics.json",
        "curves.png",
        "predictions.csv",
        "model/model.safetensors",
        "model/trocr_tune.json",
        "eval/worst.csv",
    ):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["train"]["optimizer_steps"] == 30
    assert metrics["train"]["best_eval_cer"] == pytest.approx(
        min(e["eval_cer"] for e in json.loads((tiny_run / "log_history.json").read_text()) if "eval_cer" in e)
    )
    assert metrics["eval"]["cer"] == pytest.approx(
        metrics["train"]["best_eval_cer"]
    )  # the best (lowest CER) model was kept
    with (tiny_run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {"reference", "prediction", "cer", "confidence"} <= set(rows[0])
    assert load_config(tiny_run / "config.yaml").train.max_steps == 30


def test_round_trip_plain_transformers_identical_greedy(tiny_run: Path, words: Path) -> None:
    model_dir = tiny_run / "model"
    plain = VisionEncoderDecoderModel.from_pretrained(model_dir).eval()
    processor = TrOCRProcessor.from_pretrained(model_dir)
    rows = [json.loads(line) for line in words.read_text().splitlines()][:6]
    images = [Image.open(r["image"]).convert("RGB") for r in rows]
    with torch.inference_mode():
        ids = plain.generate(processor(images=images, return_tensors="pt").pixel_values)
    plain_texts = [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]
    cfg = load_config(None, ["eval.batch_size=4"])
    ours, _ = transcribe(load_bundle(model_dir), [r["image"] for r in rows], cfg.eval)
    assert [p.text for p in ours] == plain_texts
    assert all(p.confidence <= 0 for p in ours)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def test_resume_finishes_the_same_number_of_steps(words: Path, tmp_path: Path) -> None:
    args = [
        "data.layout=manifest",
        f"data.root={words}",
        *TINY,
        "train.max_steps=12",
        "train.eval_steps=4",
        f"train.output_dir={tmp_path}",
    ]
    first = train(load_config(None, args), callbacks=[StopAt(6)])
    assert first.metrics["train"]["optimizer_steps"] == 6
    checkpoint = tmp_path / "checkpoints" / "checkpoint-6"
    assert checkpoint.is_dir()
    saved = VisionEncoderDecoderModel.from_pretrained(checkpoint).state_dict()
    start = WeightsAtStart()
    resumed = train(load_config(None, [*args, "train.resume=true"]), callbacks=[start])
    assert resumed.metrics["train"]["optimizer_steps"] == 12
    assert "eval" in resumed.metrics and resumed.metrics["eval"]["n"] == 4
    history = json.loads((tmp_path / "log_history.json").read_text())
    assert max(e["step"] for e in history) == 12
    # The resumed run started from checkpoint-6's weights exactly, not from a fresh initialisation.
    assert start.weights.keys() == saved.keys()
    assert all(torch.equal(start.weights[k], saved[k]) for k in saved)


class WeightsAtStart(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_without_checkpoint_is_one_line_error(words: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train",
        "data.layout=manifest",
        f"data.root={words}",
        *TINY,
        f"train.output_dir={tmp_path}",
        "train.resume=true",
    )
    assert proc.returncode == 2 and "holds no checkpoint to resume from" in proc.stderr


def test_checkpoint_restore_is_strict_and_exact(tiny_run: Path) -> None:
    """Work-around for huggingface/transformers#48805: checkpoints reload with converted names."""
    from transformers import Seq2SeqTrainingArguments

    from trocr_tune.train import LineTrainer

    checkpoint = sorted((tiny_run / "checkpoints").glob("checkpoint-*"))[-1]
    fresh = VisionEncoderDecoderModel.from_pretrained(checkpoint)
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    trainer = LineTrainer(
        model=fresh,
        args=Seq2SeqTrainingArguments(output_dir=str(tiny_run / "tmp"), use_cpu=True, report_to="none"),
    )
    trainer._load_from_checkpoint(str(checkpoint))
    expected = VisionEncoderDecoderModel.from_pretrained(checkpoint).state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_empty_training_split_is_a_clear_error(tmp_path: Path) -> None:
    manifest = word_manifest(tmp_path / "d", ["uno"], validation=1, test=0)
    rows = [json.loads(r) for r in manifest.read_text().splitlines()]
    manifest.write_text("\n".join(json.dumps({**r, "split": "test"}) for r in rows) + "\n")
    proc = run_cli(
        "train",
        "data.layout=manifest",
        f"data.root={manifest}",
        *TINY,
        f"train.output_dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and "the training split is empty" in proc.stderr


def test_pretrained_style_checkpoint_fine_tunes_via_cli(words: Path, tmp_path: Path) -> None:
    hub_like = build_roberta_style_checkpoint(tmp_path / "hub-like")
    proc = run_cli(
        "train",
        "data.layout=manifest",
        f"data.root={words}",
        f"model.name_or_path={hub_like}",
        "model.image_height=32",
        "model.image_width=128",
        "train.max_steps=4",
        "train.num_workers=0",
        f"train.output_dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "model" / "trocr_tune.json").read_text())
    assert info["source"] == str(hub_like) and info["geometry"] == "line"
    saved = VisionEncoderDecoderModel.from_pretrained(tmp_path / "run" / "model")
    assert saved.config.decoder_start_token_id == 2 and list(saved.config.encoder.image_size) == [32, 128]


def test_cli_evaluate_predict_preview(tiny_run: Path, words: Path, tmp_path: Path) -> None:
    model = str(tiny_run / "model")
    out = tmp_path / "eval"
    proc = run_cli(
        "evaluate",
        model,
        "data.layout=manifest",
        f"data.root={words}",
        "data.split=test",
        "--out",
        str(out),
        "eval.num_beams=2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "worst 20 lines" in proc.stdout and "lines/s" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and "cer_ci" in metrics and metrics["lines_per_second"] > 0
    for name in ("predictions.csv", "worst.csv", "confusions.csv", "config.yaml"):
        assert (out / name).is_file()
    rows = [json.loads(line) for line in words.read_text().splitlines()]
    images = [r["image"] for r in rows[:3]]
    proc = run_cli("predict", model, *images)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, image in zip(lines, images, strict=True):
        path, _text, confidence = line.split("\t")
        assert path == image and float(confidence) <= 0
    # (also CTC rescoring: 3 beams rescored by the encoder's CTC)
    shard = run_main(
        "predict",
        model,
        str(words),
        "--shard",
        "1/2",
        "--out",
        str(tmp_path / "p.jsonl"),
        "--num-beams",
        "3",
        "--ctc-rescore",
        "0.5",
        "--length-bonus",
        "1",
    )
    assert shard.returncode == 0, shard.stderr[-2000:]
    predicted = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(predicted) == len(rows) - len(rows) // 2
    # Joint CTC-attention decoding from the command line: the CTC prefix scores inside the search.
    joint = run_main("predict", model, *images, "--num-beams", "2", "--ctc-joint", "0.7")
    assert joint.returncode == 0 and len(joint.stdout.strip().splitlines()) == 3, joint.stderr[-2000:]
    folder = run_main("predict", model, str(Path(images[0]).parent), "--out", str(tmp_path / "p.csv"))
    assert folder.returncode == 0 and (tmp_path / "p.csv").read_text().startswith("image,text,confidence")
    grid = tmp_path / "grid.png"
    proc = run_main(
        "data",
        "preview",
        "data.layout=manifest",
        f"data.root={words}",
        "train.augment=handwriting",
        "--out",
        str(grid),
        "-n",
        "6",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with Image.open(grid) as im:
        assert im.width > 300 and im.height > 100
    bad = run_main("predict", model, str(tmp_path / "missing.png"))
    assert bad.returncode == 2 and "not found" in bad.stderr
    bonus_alone = run_main("predict", model, images[0], "--num-beams", "2", "--length-bonus", "1")
    assert bonus_alone.returncode == 2 and "need eval.ctc_rescore" in bonus_alone.stderr


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun missing",
)
def test_two_processes_on_cpu_gloo(words: Path, tmp_path: Path) -> None:
    """Multi-process training through torchrun with no code change (gloo on CPU)."""
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node=2",
            "-m",
            "trocr_tune",
            "train",
            "data.layout=manifest",
            f"data.root={words}",
            *TINY,
            "train.max_steps=4",
            "train.eval_steps=2",
            "train.batch_size=4",
            f"train.output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train"]["optimizer_steps"] == 4
    # 12 training lines, 2 processes x batch 4 = 8 lines per step -> 4 steps = 8/3 epochs.
    assert metrics["train"]["epochs"] == pytest.approx(4 * 8 / 12, rel=0.3)
    assert proc.stdout.count("model: ") == 1  # only rank 0 reports


def test_train_compile_reaches_the_trainer(words: Path, tmp_path: Path) -> None:
    from trocr_tune.train import _training_args

    cfg = load_config(
        None, ["data.layout=manifest", f"data.root={words}", *TINY, "train.compile=max-autotune"]
    )
    args = _training_args(cfg, has_eval=True, checkpoints=tmp_path, learning_rate=1e-3)
    assert args.torch_compile is True and args.torch_compile_mode == "max-autotune"
    plain = _training_args(load_config(None, TINY), has_eval=True, checkpoints=tmp_path, learning_rate=1e-3)
    assert plain.torch_compile is False


def test_cached_images_train_to_the_same_weights(words: Path, tmp_path: Path) -> None:
    """train.cache_images changes where later epochs get their pixels, never the pixels."""
    args = [
        "data.layout=manifest",
        f"data.root={words}",
        *TINY,
        "train.batch_size=4",
        "train.max_steps=9",  # three epochs of the 12 training lines
        "train.eval_steps=100",
    ]
    weights = []
    for cache in ("false", "true"):
        overrides = [f"train.output_dir={tmp_path / cache}", f"train.cache_images={cache}"]
        result = train(load_config(None, [*args, *overrides]))
        weights.append(VisionEncoderDecoderModel.from_pretrained(result.model_dir).state_dict())
        cached = any("cache_images" in n for n in result.metrics["notes"])
        assert cached == (cache == "true")
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


@pytest.mark.parametrize("other", ["train.augment=trocr-paper", "train.num_workers=2"])
def test_cache_images_needs_no_augmentation_and_no_workers(other: str) -> None:
    with pytest.raises(UserError, match=r"train\.cache_images needs"):
        load_config(None, ["train.cache_images=true", "train.num_workers=0", other])


def test_cached_image_is_reused_and_never_aliased_by_a_batch(words: Path) -> None:
    calls = []

    def processor(images, return_tensors):  # type: ignore[no-untyped-def]
        calls.append(1)
        return {"pixel_values": images[None].transpose(0, 3, 1, 2).astype("float32") / 255}

    data = load_config(None, ["data.layout=manifest", f"data.root={words}"]).data
    samples = read_dataset(data).split("train")
    dataset = LineDataset(samples[:2], processor, None, with_labels=False, cache=True)
    first = dataset[0]["pixel_values"]
    assert dataset[0]["pixel_values"] is first and len(calls) == 1
    batch = collate([dataset[0], dataset[1]])
    batch["pixel_values"].zero_()  # the model or collator writing into a batch leaves the cache alone
    assert first.abs().sum() > 0 and len(calls) == 2
    with pytest.raises(ValueError, match="augmentation"):
        LineDataset(samples[:2], processor, None, augment="trocr-paper", with_labels=False, cache=True)


def test_validation_reads_with_joint_ctc_decoding(words: Path, tmp_path: Path, monkeypatch: Any) -> None:
    """With eval.ctc_joint, the periodic validation (and so the best checkpoint) decodes with the
    engine's joint CTC-attention search, as evaluate does, not with the decoder's beams alone."""
    from trocr_tune.decoding.runners import TorchRunner

    calls: list[int] = []
    original = TorchRunner.generate_batch

    def spy(self: Any, pixels: Any, settings: Any) -> Any:
        calls.append(settings.ctc_joint)
        return original(self, pixels, settings)

    monkeypatch.setattr(TorchRunner, "generate_batch", spy)
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            *TINY_MODEL,
            "train.max_steps=10",
            "train.eval_steps=10",
            "train.ctc_weight=1.0",
            "train.learning_rate=3e-3",
            "eval.num_beams=2",
            "eval.ctc_joint=0.5",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    assert calls and all(w == 0.5 for w in calls)
    # The model records the decoding it was validated with ...
    info = json.loads((result.model_dir / "trocr_tune.json").read_text())
    assert info["decoding"] == {"num_beams": 2, "ctc_joint": 0.5}
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    logged = [r["eval_cer"] for r in history if "eval_cer" in r]
    samples = read_dataset(cfg.data).split("validation")
    report = evaluate_bundle(load_bundle(result.model_dir), samples, cfg.eval)
    assert logged[0] == pytest.approx(report.metrics.cer, abs=1e-9)


def test_frozen_stem_stays_bit_identical_while_the_rest_trains(words: Path, tmp_path: Path) -> None:
    """train.freeze=stem: the conv encoder's stem keeps the base's weights; everything else learns."""
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            *TINY_MODEL,
            "model.preset=conv",
            "train.max_steps=4",
            "train.eval_steps=4",
            "train.learning_rate=3e-3",
            "train.freeze=stem",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    start = WeightsAtStart()
    result = train(cfg, callbacks=[start])
    after = VisionEncoderDecoderModel.from_pretrained(result.model_dir).state_dict()
    stem = [k for k in after if ".embedder." in k]
    assert stem and all(torch.equal(after[k], start.weights[k]) for k in stem)
    moved = [k for k in after if k not in stem and not torch.equal(after[k], start.weights[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("decoder.") for k in moved)
    assert any(n.startswith("frozen: stem (") for n in result.metrics["notes"])


class WeightsEachStep(TrainerCallback):
    """The trainable weights at the start and after every optimizer step, as the model holds them."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        self.steps = [{n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}]

    def on_step_end(self, args, state, control, model=None, **kwargs):  # type: ignore[no-untyped-def]
        self.steps.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


@pytest.mark.parametrize("validation", [True, False])
def test_ema_model_is_the_average_of_the_trained_weights(
    words: Path, tmp_path: Path, validation: bool
) -> None:
    """train.ema_decay: the saved model is the moving average of the weights the optimizer produced
    (through the best checkpoint with a validation split, copied in at the end without one), while
    training itself went on from the raw weights."""
    steps, decay = 6, 0.8
    root = words if validation else word_manifest(tmp_path / "lines", validation=0)
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={root}",
            *TINY_MODEL,
            f"train.max_steps={steps}",
            f"train.eval_steps={steps}",
            "train.learning_rate=3e-3",
            f"train.ema_decay={decay}",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    seen = WeightsEachStep()
    result = train(cfg, callbacks=[seen])
    assert len(seen.steps) == steps + 1
    expected = {n: w.clone() for n, w in seen.steps[0].items()}
    for step, weights in enumerate(seen.steps[1:], start=1):
        d = min(decay, (1 + step) / (10 + step))
        for n, w in weights.items():
            expected[n].lerp_(w, 1.0 - d)
    saved = dict(VisionEncoderDecoderModel.from_pretrained(result.model_dir).named_parameters())
    for n, w in expected.items():
        torch.testing.assert_close(saved[n].detach(), w, rtol=0, atol=1e-6)
    # Training did not go on from the average: the last raw weights are not the average.
    assert any(not torch.allclose(seen.steps[-1][n], w, atol=1e-6) for n, w in expected.items())
    assert (result.metrics["train"]["best_checkpoint"] is not None) == validation


def test_ema_decay_must_be_below_one() -> None:
    with pytest.raises(UserError, match=r"train\.ema_decay must be in \[0, 1\)"):
        load_config(None, ["train.ema_decay=1.0"])


def test_freeze_finds_each_encoders_stem_and_refuses_to_freeze_everything() -> None:
    from trocr_tune.model.freeze import freeze_parts
    from trocr_tune.model.presets import build_preset_model

    special = {"pad": 1, "bos": 0, "eos": 2, "start": 0}
    vit = build_preset_model("tiny", 20, 32, 128, 32, special)
    patches = sum(p.numel() for p in vit.encoder.embeddings.patch_embeddings.parameters())
    assert freeze_parts(vit, ["stem"]) == f"frozen: stem ({patches:,} parameters)"
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert frozen and all("patch_embeddings" in n for n in frozen)
    with pytest.raises(UserError, match="leaves no parameter to train"):
        freeze_parts(vit, ["encoder", "decoder"])
    with pytest.raises(UserError, match=r"train\.freeze='head' is not one of: stem, encoder, decoder"):
        load_config(None, ["train.freeze=head"])


def test_predict_reads_as_the_model_records_unless_told_otherwise(
    tiny_run: Path, words: Path, tmp_path: Path
) -> None:
    """predict without decoding flags uses the decoding a trained model records (trocr_tune.json);
    a flag overrides its own key only; a runner that cannot run that decoding keeps the user's."""
    from trocr_tune.config import EvalConfig
    from trocr_tune.decoding.settings import model_decoding
    from trocr_tune.predict import predict_images

    model = tmp_path / "model"
    shutil.copytree(tiny_run / "model", model)
    info = json.loads((model / "trocr_tune.json").read_text())
    info["decoding"] = {"num_beams": 2, "ctc_joint": 0.5}
    (model / "trocr_tune.json").write_text(json.dumps(info))
    data = load_config(None, ["data.layout=manifest", f"data.root={words}"]).data
    images = [s.image for s in read_dataset(data).samples][:4]
    recorded = predict_images(model, images, EvalConfig())
    explicit = predict_images(
        model, images, EvalConfig(num_beams=2, ctc_joint=0.5, given=frozenset({"num_beams", "ctc_joint"}))
    )
    assert [p.text for p in recorded.predictions] == [p.text for p in explicit.predictions]
    took = "decoding as the model records: eval.num_beams=2, eval.ctc_joint=0.5"
    assert recorded.notes == [f"{took} (set these keys to decode otherwise)"]
    assert explicit.notes == []
    greedy = predict_images(model, images, EvalConfig(num_beams=1, given=frozenset({"num_beams"})))
    assert greedy.notes == [
        "decoding as the model records: eval.ctc_joint=0.5 (set these keys to decode otherwise)"
    ]

    class PlainGenerate:
        def cannot_decode(self, settings: Any) -> str | None:
            return "no CTC prefixes here" if settings.ctc_joint else None

    kept, note = model_decoding(EvalConfig(), load_bundle(model), PlainGenerate())
    assert kept == EvalConfig() and note.endswith("cannot run here: no CTC prefixes here")
    # The CLI: stderr names the decoding it took.
    out = run_main("predict", str(model), *images)
    assert out.returncode == 0, out.stderr
    assert "decoding as the model records: eval.num_beams=2, eval.ctc_joint=0.5" in out.stderr


def _recording(tiny_run: Path, tmp_path: Path, **entries: Any) -> Path:
    """A copy of the tiny model whose trocr_tune.json records `entries` (e.g. decoding, fine_tuning)."""
    start = tmp_path / "start"
    shutil.copytree(tiny_run / "model", start, dirs_exist_ok=True)
    info = json.loads((start / "trocr_tune.json").read_text())
    (start / "trocr_tune.json").write_text(json.dumps({**info, **entries}))
    return start


def _fine_tune(words: Path, start: Path) -> list[str]:
    """Two quick training steps from `start` on the words fixture."""
    return [
        "data.layout=manifest",
        f"data.root={words}",
        f"model.name_or_path={start}",
        "train.max_steps=2",
        "train.num_workers=0",
    ]


def test_fine_tuning_inherits_the_decoding_its_checkpoint_records(
    tiny_run: Path, words: Path, tmp_path: Path
) -> None:
    """A recipe without eval keys validates as the starting checkpoint records and passes that on;
    a key the recipe sets wins."""
    start = _recording(tiny_run, tmp_path, decoding={"num_beams": 2, "ctc_joint": 0.5})
    common = [*_fine_tune(words, start), "train.eval_steps=2"]
    inherited = train(load_config(None, [*common, f"train.output_dir={tmp_path / 'a'}"]))
    saved = json.loads((inherited.model_dir / "trocr_tune.json").read_text())
    assert saved["decoding"] == {"num_beams": 2, "ctc_joint": 0.5}
    assert (
        "validation decodes as the checkpoint records: eval.num_beams=2, eval.ctc_joint=0.5"
        in (inherited.metrics["notes"])
    )
    greedy = train(load_config(None, [*common, "eval.ctc_joint=0", f"train.output_dir={tmp_path / 'b'}"]))
    assert json.loads((greedy.model_dir / "trocr_tune.json").read_text())["decoding"] == {"num_beams": 2}


def test_fine_tuning_takes_the_recipe_its_checkpoint_recommends(
    tiny_run: Path, words: Path, tmp_path: Path, capsys: Any
) -> None:
    """Keys the user leaves unset come from the checkpoint's `fine_tuning` (what the shipped base
    records); keys set on the command line or in the YAML win; the trained model carries it on."""
    recommended = {"train.learning_rate": 2e-3, "train.warmup_ratio": 0.25, "eval.num_beams": 2}
    start = _recording(tiny_run, tmp_path, fine_tuning=recommended)
    common = _fine_tune(words, start)
    run = train(load_config(None, [*common, "train.warmup_ratio=0", f"train.output_dir={tmp_path / 'a'}"]))
    note = (
        f"fine-tuning as {start} recommends: train.learning_rate=0.002, eval.num_beams=2 "
        "(set these keys to train otherwise)"
    )
    assert note in capsys.readouterr().out
    assert note in run.metrics["notes"]
    resolved = load_config(run.output_dir / "config.yaml")
    assert resolved.train.learning_rate == 2e-3 and resolved.eval.num_beams == 2
    assert resolved.train.warmup_ratio == 0.0  # given on the command line
    assert run.metrics["train"]["learning_rate"] == 2e-3
    saved = json.loads((run.model_dir / "trocr_tune.json").read_text())
    assert saved["fine_tuning"] == recommended
    assert saved["decoding"] == {"num_beams": 2}
    # A recommendation that is not a model/train/eval key is refused with its source named.
    start = _recording(tiny_run, tmp_path, fine_tuning={"data.root": "elsewhere"})
    with pytest.raises(UserError, match=r"recommends 'data\.root', which is not a model, train or eval key"):
        train(load_config(None, [*common, f"train.output_dir={tmp_path / 'b'}"]))


def test_validation_reads_a_fixed_sample_of_at_most_eval_max_lines(words: Path, tmp_path: Path) -> None:
    """train.eval_max_lines: every evaluation and the final report read the same seeded sample, and
    the run says how many of the validation lines that is."""
    from trocr_tune.data.splits import validation_sample

    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            *TINY_MODEL,
            "train.max_steps=4",
            "train.eval_steps=2",
            "train.learning_rate=3e-3",
            "train.eval_max_lines=3",
            f"train.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    everything = read_dataset(cfg.data).split("validation")
    sample, note = validation_sample(everything, 3, cfg.data.seed)
    assert len(everything) == 4 and len(sample) == 3 and note is not None
    assert result.metrics["data"]["validation"] == 4 and result.metrics["data"]["validation_read"] == 3
    assert note in result.metrics["notes"] and "3 of the 4 validation lines" in note
    with (tmp_path / "run" / "predictions.csv").open() as fh:
        assert [r["reference"] for r in csv.DictReader(fh)] == [s.text for s in sample]
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    logged = [r["eval_cer"] for r in history if "eval_cer" in r]
    assert len(logged) >= 2
    report = evaluate_bundle(load_bundle(result.model_dir), sample, cfg.eval)
    assert result.metrics["eval"]["cer"] == pytest.approx(report.metrics.cer, abs=1e-9)
    assert min(logged) == pytest.approx(
        report.metrics.cer, abs=1e-9
    )  # the best checkpoint, on the same lines


def test_validation_sample_is_seeded_ordered_and_whole_when_small(words: Path) -> None:
    from trocr_tune.data.splits import validation_sample

    lines = read_dataset(load_config(None, ["data.layout=manifest", f"data.root={words}"]).data).split(
        "train"
    )
    assert len(lines) == 12
    first, note = validation_sample(lines, 5, seed=7)
    assert validation_sample(lines, 5, seed=7)[0] == first and note
    assert [lines.index(s) for s in first] == sorted(lines.index(s) for s in first)  # reading order kept
    assert validation_sample(lines, 5, seed=8)[0] != first
    assert validation_sample(lines, 12, seed=7) == (lines, None)
    assert validation_sample(lines, None, seed=7) == (lines, None)
    with pytest.raises(UserError, match="eval_max_lines"):
        load_config(None, ["train.eval_max_lines=0"])
