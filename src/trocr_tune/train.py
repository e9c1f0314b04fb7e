"""`trocr-tune train`: fine-tuning on the Transformers Seq2SeqTrainer.

The Trainer (with accelerate underneath) provides gradient accumulation, mixed precision,
checkpoints, resume and multi-GPU / multi-node through `torchrun` or `accelerate launch`.
trocr-tune adds the data, the model set-up, generate-based CER evaluation (best checkpoint
by the *lowest* CER) and the run directory: config.yaml, metrics.json, curves.png,
predictions.csv and model/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import (
    EarlyStoppingCallback,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    VisionEncoderDecoderModel,
    set_seed,
)
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from .callbacks import GracefulInterrupt, ProgressLine, TimeBudget, WeightAverage
from .config import Config, keys_text, save_config
from .curves import plot_curves
from .data.dataset import LineDataset, collate
from .data.reader import ReadResult, decode_check, read_dataset
from .data.records import LineSample
from .data.splits import validation_sample
from .decoding import DecodeSettings
from .decoding.charlm import CharNgramLM
from .errors import UserError
from .evaluate import evaluate_bundle, metric_normalizer, write_report
from .files import atomic_open, atomic_write_text
from .metrics import compute_metrics
from .model.ctc import ctc_loss, encoder_grid
from .model.freeze import freeze_parts
from .model.loading import (
    INFO_FILE,
    ModelBundle,
    build_for_training,
    check_special_tokens,
    save_bundle,
    training_config,
)
from .model.tokenizer import check_coverage
from .runtime import is_main_process, resolve_precision
from .self_training import FOLDER, keep_self_trained, pseudo_label, unlabelled_images

DEFAULT_LR = {"pretrained": 5e-5, "preset": 1e-3}


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    # The signal (SIGINT, SIGTERM) that stopped training early, after saving a checkpoint;
    # model_dir then holds no final model: `train.resume=true` continues the run.
    interrupted: int | None = None


_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (a save cut short), or None when complete.

    The Trainer writes trainer_state.json last, after the weights, optimizer and RNG states.
    """
    for name in ("trainer_state.json", "config.json"):
        try:
            json.loads((folder / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"no {name}"
        except (OSError, ValueError):
            return f"{name} empty or unreadable"
    weights = folder / "model.safetensors"
    if not weights.is_file() or weights.stat().st_size == 0:
        return "no model.safetensors"
    return None


def last_complete_checkpoint(checkpoints: Path) -> tuple[str | None, list[str]]:
    """The newest complete checkpoint in `checkpoints` and one line per newer, incomplete one skipped."""
    found = []
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            match = _CHECKPOINT.fullmatch(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    skipped: list[str] = []
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return str(path), skipped
        skipped.append(f"{path.name} ({problem})")
    return None, skipped


class LineTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer that buckets lines by width and restores checkpoints *correctly*.

    Transformers 5 writes checkpoints with the original (legacy) weight names, but the
    Trainer's resume and best-model paths load them with a raw, non-strict
    `load_state_dict`: ViT weights silently stay unloaded (huggingface/transformers#48805,
    #43701). Both paths here go through `from_pretrained`, which converts the names, and copy
    the weights strictly, so a mismatch fails instead of training on from random weights.
    """

    bucket_lengths: list[int] | None = None
    ctc_weight: float = 0.0
    ctc_warmup: float = 0.0
    time_budget: TimeBudget | None = None
    # Set when the recipe decodes with trocr-tune's own search (eval.ctc_joint): validation then
    # reads as evaluate does, so the best checkpoint is the one that reads best that way.
    decode: DecodeSettings | None = None
    # train.ema_decay: validation and checkpoints see the averaged weights.
    average: WeightAverage | None = None
    _ctc_values: list[float]

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """Cross-entropy of the decoder (+ label smoothing) plus `ctc_weight` x the encoder CTC loss."""
        if not self.ctc_weight:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(pixel_values=inputs["pixel_values"], labels=labels)
        # The Trainer's own smoother (set from train.label_smoothing), as on the path without CTC.
        loss = outputs.loss if self.label_smoother is None else self.label_smoother(outputs, labels)
        tokenizer = self.processing_class.tokenizer  # type: ignore[union-attr]
        ctc = ctc_loss(
            self.accelerator.unwrap_model(model),
            outputs.encoder_last_hidden_state,
            labels,
            tokenizer.pad_token_id,
            tokenizer.eos_token_id,
        )
        self._ctc_values = [*getattr(self, "_ctc_values", []), float(ctc.detach())]
        if self.ctc_warmup and self._progress() < self.ctc_warmup:
            loss = loss * 0.0  # CTC alone for now (keeps the graph, so every parameter gets a grad)
        loss = loss + self.ctc_weight * ctc
        return (loss, outputs) if return_outputs else loss

    def prediction_step(
        self,
        model: Any,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[Any, Any, Any]:
        """The loss as the Trainer computes it; the readings from decoding/'s search with the
        recipe's settings (joint CTC-attention decoding) when `decode` is set."""
        from .decoding.runners import TorchRunner
        from .decoding.search import TrOCRSteps

        unwrapped = self.accelerator.unwrap_model(model)
        if self.decode is None or prediction_loss_only or not TrOCRSteps.supports(unwrapped):
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys, **gen_kwargs)
        labels = inputs["labels"]
        with torch.no_grad(), self.compute_loss_context_manager():
            # The decoder's loss, as Seq2SeqTrainer's own step reports it (the CTC term left out).
            loss = model(pixel_values=inputs["pixel_values"], labels=labels).loss.mean().detach()
        tokenizer = self.processing_class.tokenizer  # type: ignore[union-attr]
        pixels = inputs["pixel_values"]
        readings = TorchRunner(unwrapped, tokenizer, pixels.device).generate_batch(pixels, self.decode)
        texts = [r.text for r in readings]
        ids = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")["input_ids"]
        return loss, ids.to(labels.device), labels

    def _maybe_log_save_evaluate(self, *args: Any, **kwargs: Any) -> None:
        if self.average is None or not (self.control.should_evaluate or self.control.should_save):
            return super()._maybe_log_save_evaluate(*args, **kwargs)
        with self.average.swapped(self.accelerator.unwrap_model(self.model)):
            return super()._maybe_log_save_evaluate(*args, **kwargs)

    def _progress(self) -> float:
        """Share of training done: of the time budget when there is one, else of the steps."""
        if self.time_budget is not None:
            return self.time_budget.elapsed() / self.time_budget.budget
        return self.state.global_step / max(1, self.state.max_steps)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        values = getattr(self, "_ctc_values", [])
        if "loss" in logs and values:
            logs["ctc_loss"] = sum(values) / len(values)
            self._ctc_values = []
        super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.time_budget is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            target: Any = optimizer or self.optimizer
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(target, self.time_budget.lr_factor)
        return self.lr_scheduler

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        if self.bucket_lengths is None:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps, lengths=self.bucket_lengths
        )

    def _restore_weights(self, checkpoint: str, model: Any = None) -> None:
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        loaded = type(target).from_pretrained(checkpoint)
        target.load_state_dict(loaded.state_dict(), strict=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self._restore_weights(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        assert self.state.best_model_checkpoint is not None
        self._restore_weights(self.state.best_model_checkpoint)


def _training_args(
    cfg: Config, has_eval: bool, checkpoints: Path, learning_rate: float
) -> Seq2SeqTrainingArguments:
    t = cfg.train
    precision = resolve_precision(t.precision)
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("train.precision=fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    strategy = "steps" if t.eval_steps else "epoch"
    report_to = [r for r in t.report_to if r != "none"]
    for tracker in report_to:
        module = "torch.utils.tensorboard" if tracker == "tensorboard" else "wandb"
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"train.report_to={tracker} needs the {tracker} package installed") from None
    return Seq2SeqTrainingArguments(
        output_dir=str(checkpoints),
        seed=t.seed,
        data_seed=t.seed,
        # A time budget ends training itself; the step cap only needs to be out of the way.
        max_steps=t.max_steps or (10**7 if t.max_minutes else -1),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=cfg.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,
        label_smoothing_factor=t.label_smoothing,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        eval_strategy=strategy if has_eval else "no",
        eval_steps=t.eval_steps,
        save_strategy=strategy,
        save_steps=t.eval_steps or 500,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=has_eval,
        metric_for_best_model="cer",
        greater_is_better=False,  # lower CER is better: never pick the worst checkpoint
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        predict_with_generate=True,
        generation_num_beams=cfg.eval.num_beams,
        report_to=report_to or "none",
        dataloader_num_workers=t.num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),
        remove_unused_columns=False,
        activation_checkpointing=t.gradient_checkpointing,
        torch_compile=t.compile is not None,
        torch_compile_mode=t.compile,
        save_only_model=False,
        disable_tqdm=t.max_minutes is not None,  # ProgressLine reports time, not a step bar
    )


def _metric_fn(bundle: ModelBundle, cfg: Config) -> Any:
    tokenizer = bundle.tokenizer
    normalizer = metric_normalizer(cfg.eval)

    def compute(prediction: Any) -> dict[str, float]:
        preds = np.where(prediction.predictions < 0, tokenizer.pad_token_id, prediction.predictions)
        labels = np.where(prediction.label_ids < 0, tokenizer.pad_token_id, prediction.label_ids)
        texts = [t.strip() for t in tokenizer.batch_decode(preds, skip_special_tokens=True)]
        refs = [t.strip() for t in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        m = compute_metrics(texts, refs, normalizer)
        return {
            "cer": m.cer,
            "wer": m.wer,
            "mean_similarity": m.mean_similarity,
            "exact_match": m.exact_match,
        }

    return compute


def _check_data(result: ReadResult, bundle: ModelBundle, pretrained: bool) -> list[str]:
    """Fail when the tokenizer cannot encode training labels; report other splits' gaps."""
    notes = []
    for split in ("train", "validation", "test"):
        texts = [s.text for s in result.split(split)]
        if not texts:
            continue
        coverage = check_coverage(bundle.tokenizer, texts)
        if coverage.ok:
            continue
        if split == "train" and pretrained:
            raise UserError(
                f"the tokenizer cannot encode training labels: {coverage.describe()}; map them with "
                "data.replacements or drop them with data.alphabet + data.alphabet_policy"
            )
        notes.append(f"{split}: tokenizer cannot encode {coverage.describe()}")
    return notes


def _check_cache_memory(train_set: LineDataset) -> str:
    """Refuse train.cache_images when the processed training images need over half the RAM."""
    gib = len(train_set) * train_set.pixel_values(0).nbytes / 2**30
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): trust the setting
        ram = float("inf")
    if gib > ram / 2:
        raise UserError(
            f"train.cache_images would keep {len(train_set)} processed images ({gib:.1f} GiB) in memory, "
            f"over half of this machine's {ram:.1f} GiB; set train.cache_images=false or data.limit"
        )
    return f"train.cache_images: {len(train_set)} processed training images kept in memory ({gib:.2f} GiB)"


def train(
    cfg: Config, callbacks: list[TrainerCallback] | None = None, extra_train: Sequence[LineSample] = ()
) -> TrainResult:
    """Fine-tune as configured and write the run directory; returns its paths and final metrics.

    `callbacks` are extra Transformers TrainerCallbacks (progress displays, custom stopping);
    `extra_train` lines join the dataset's training split (self-training's readings).
    With train.self_training_on, self-training follows (self_training.py).
    """
    cfg, recommended = training_config(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # before the Trainer sets up the process group
        for note in recommended:
            print(note, flush=True)
    out = Path(cfg.train.output_dir)
    checkpoints = out / "checkpoints"
    set_seed(cfg.train.seed)
    resume_from = None
    if cfg.train.resume:
        resume_from, skipped = last_complete_checkpoint(checkpoints)
        for line in skipped:  # e.g. a save killed half-way: resume from the one before
            print(f"resume: skipping incomplete checkpoint {line}", file=sys.stderr, flush=True)
        if resume_from is None:
            found = f" (incomplete: {', '.join(skipped)})" if skipped else ""
            raise UserError(f"train.resume=true but {checkpoints} holds no checkpoint to resume from{found}")
    pretrained = cfg.model.name_or_path is not None
    lr = cfg.train.learning_rate or DEFAULT_LR["pretrained" if pretrained else "preset"]
    # The arguments come first: they set up the (possibly distributed) process group, so the
    # main process can read (and crop) the dataset before the others read its cache.
    probe_args = _training_args(cfg, has_eval=True, checkpoints=checkpoints, learning_rate=lr)
    with probe_args.main_process_first(desc="reading the dataset"):
        result = read_dataset(cfg.data)
        if cfg.data.check_images == "header":  # a truncated file must not stop training mid-epoch
            undecodable = decode_check(result, ("train", "validation"))
            if undecodable and probe_args.process_index == 0:
                print(undecodable, file=sys.stderr, flush=True)
    train_samples = result.split("train") + list(extra_train)
    eval_samples, sampled = validation_sample(
        result.split("validation"), cfg.train.eval_max_lines, cfg.data.seed
    )
    if sampled:
        result.log.note(sampled)
    if probe_args.process_index == 0:  # how the data was split (hands straddling splits, a sample)
        for note in result.log.notes:
            print(f"data: {note}", flush=True)
    if not train_samples:
        raise UserError(
            f"the training split is empty ({dict(result.counts())}); check data.split_ratios / partitions"
        )
    bundle = build_for_training(cfg.model, [s.text for s in train_samples], [s.text for s in result.samples])
    if cfg.train.char_lm_order:
        bundle.char_lm = CharNgramLM.fit((s.text for s in train_samples), cfg.train.char_lm_order)
    notes = recommended + _check_data(result, bundle, pretrained)
    # Validation reads as the checkpoint records (eval.* keys not given), and the trained model
    # records what it was validated with, so predict/evaluate/serve read it that way by default.
    if taken := cfg.eval.taken_from(bundle.info.decoding):
        notes.append(f"validation decodes as the checkpoint records: {keys_text(taken)}")
        if probe_args.process_index == 0:
            print(notes[-1], flush=True)
    cfg.eval = cfg.eval.with_decoding(bundle.info.decoding)
    bundle.info.decoding = cfg.eval.decoding()
    alphabet = cast(dict[str, Any], bundle.info.extra.get("alphabet", {}))
    if alphabet.get("added") or alphabet.get("removed"):  # model.new_characters changed the tokenizer
        notes.insert(0, f"alphabet: {alphabet['summary']}")
        if probe_args.process_index == 0:
            print(notes[0], flush=True)
    check_special_tokens(bundle.model, bundle.tokenizer)
    if frozen := freeze_parts(bundle.model, cfg.train.freeze):
        notes.append(frozen)
        if probe_args.process_index == 0:
            print(frozen, flush=True)
    args = _training_args(cfg, has_eval=bool(eval_samples), checkpoints=checkpoints, learning_rate=lr)
    train_set = LineDataset(
        train_samples,
        bundle.image_processor,
        bundle.tokenizer,
        cfg.train.augment,
        cfg.train.seed,
        cache=cfg.train.cache_images,
        skip_unreadable=True,
    )
    if cfg.train.cache_images:
        notes.append(_check_cache_memory(train_set))
    eval_set = (
        LineDataset(eval_samples, bundle.image_processor, bundle.tokenizer, skip_unreadable=True)
        if eval_samples
        else None
    )
    interrupt = GracefulInterrupt()
    all_callbacks: list[TrainerCallback] = [interrupt, *(callbacks or [])]
    budget = None
    if cfg.train.max_minutes:
        budget = TimeBudget(cfg.train.max_minutes, cfg.train.warmup_ratio, has_eval=eval_set is not None)
        budget.resume_from(resume_from)
        all_callbacks += [budget, ProgressLine(budget)]
    if cfg.train.ctc_weight:
        encoder_grid(bundle.model)  # fails early, in one line, for encoders without a token grid
    average = WeightAverage(cfg.train.ema_decay) if cfg.train.ema_decay else None
    if average is not None:
        all_callbacks.append(average)
    if cfg.train.early_stopping_patience and eval_set is not None:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    trainer = LineTrainer(
        model=bundle.model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=collate,
        processing_class=bundle.processor,
        compute_metrics=_metric_fn(bundle, cfg),
        callbacks=all_callbacks,
    )
    if cfg.train.bucket_by_width:
        trainer.bucket_lengths = train_set.widths(bundle.info.image_height)
    trainer.ctc_weight = cfg.train.ctc_weight
    trainer.ctc_warmup = cfg.train.ctc_warmup
    trainer.time_budget = budget
    trainer.average = average
    if cfg.eval.ctc_joint > 0 and eval_set is not None:
        trainer.decode = DecodeSettings.from_eval(bundle, cfg.eval)
    if budget is not None:  # ProgressLine replaces the raw log dicts of the default printer
        trainer.remove_callback(PrinterCallback)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - start
    if average is not None and trainer.state.best_model_checkpoint is None:
        average.copy_to(trainer.accelerator.unwrap_model(trainer.model))  # no best checkpoint loaded
    bundle.model = cast(VisionEncoderDecoderModel, trainer.model)
    model_dir = out / "model"
    metrics: dict[str, Any] = {
        "train": {
            **output.metrics,
            "optimizer_steps": trainer.state.global_step,
            "epochs": trainer.state.epoch,
            "wall_seconds": train_seconds,
            "seconds_per_epoch": train_seconds / max(trainer.state.epoch or 1.0, 1e-9),
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "best_eval_cer": trainer.state.best_metric,
            "learning_rate": lr,
            "precision": resolve_precision(cfg.train.precision),
            "interrupted": interrupt.requested,
        },
        "data": {
            **{split: len(result.split(split)) for split in ("train", "validation", "test")},
            "validation_read": len(eval_samples),
        },
        **({"self_training_lines": len(extra_train)} if extra_train else {}),
        "dropped": dict(result.log.by_reason()),
        "notes": result.log.notes + notes,
    }
    bundle.info.extra["train_seconds_per_epoch"] = metrics["train"]["seconds_per_epoch"]
    if interrupt.requested:
        metrics["train"]["interrupted_by"] = interrupt.signal_name
        metrics["train"]["resume"] = "run the same command with train.resume=true"
    if trainer.is_world_process_zero():
        if interrupt.requested:
            # No final model from a run cut short; a model/ of an earlier run must not pass for one.
            if (model_dir / INFO_FILE).is_file():
                shutil.rmtree(model_dir)
        else:
            save_bundle(bundle, model_dir)
            if eval_samples:
                report = evaluate_bundle(bundle, eval_samples, cfg.eval, num_workers=cfg.train.num_workers)
                write_report(report, out / "eval")
                with (
                    (out / "eval" / "predictions.csv").open(encoding="utf-8", newline="") as src,
                    atomic_open(out / "predictions.csv", newline="") as dst,
                ):
                    shutil.copyfileobj(src, dst)
                metrics["eval"] = report.summary()
        plot_curves(trainer.state.log_history, out / "curves.png")
        atomic_write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=1))
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, default=str))
    done = TrainResult(out, model_dir, metrics, interrupt.signum if interrupt.requested else None)
    if cfg.train.self_training_on is None or interrupt.requested:
        return done
    return _self_train(cfg, done, bundle, result, callbacks)


def _self_train(
    cfg: Config,
    first: TrainResult,
    bundle: ModelBundle,
    result: ReadResult,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Pseudo-label with the fine-tuned `bundle`, train on, and put the self-trained model in
    `first.model_dir` unless validation rose past the tolerance (the model it replaces goes to
    self-training/start-model)."""
    assert cfg.train.self_training_on is not None
    labels = pseudo_label(bundle, unlabelled_images(cfg.train.self_training_on, result), cfg)
    print(labels.describe(), flush=True)
    out = first.output_dir / FOLDER
    second_cfg = dataclasses.replace(
        cfg,
        # The fine-tuned model as it was saved: its own geometry, alphabet and layers.
        model=dataclasses.replace(
            cfg.model,
            name_or_path=str(first.model_dir),
            preset=None,
            geometry="processor",
            add_encoder_layers=0,
        ),
        train=dataclasses.replace(
            cfg.train,
            output_dir=str(out),
            max_minutes=cfg.train.self_training_minutes,
            resume=False,
            self_training_on=None,
        ),
    )
    second = train(second_cfg, callbacks, extra_train=labels.samples)
    before = first.metrics.get("eval", {}).get("cer")
    after = second.metrics.get("eval", {}).get("cer")
    summary: dict[str, Any] = {
        "source": cfg.train.self_training_on,
        "read": labels.read,
        "kept": len(labels.samples),
        "unreadable": labels.unreadable,
        "min_confidence": labels.min_confidence,
        "minutes": cfg.train.self_training_minutes,
        "validation_cer_before": before,
        "validation_cer_after": after,
    }
    if second.interrupted is not None:
        # The fine-tuned model stands; the self-training run's checkpoints stay for a look.
        summary["kept_model"] = "before (self-training was interrupted)"
        print("self-training was interrupted: the model from before is kept", file=sys.stderr, flush=True)
        return _finish(first, summary)
    # The validation split is other hands than the one adapted to: its CER guards against a
    # self-training that went wrong, it does not measure the adaptation (docs/training.md).
    tolerance = cfg.train.self_training_tolerance
    better = keep_self_trained(before, after, tolerance)
    summary["tolerance"] = tolerance
    summary["kept_model"] = (
        "self-trained" if better else f"before (validation CER rose by more than {tolerance:g})"
    )
    print(
        f"self-training: validation CER {_cer(before)} -> {_cer(after)}; keeping the "
        f"{'self-trained model' if better else f'model from before (a rise over {tolerance:g})'}",
        flush=True,
    )
    if better and is_main_process() and second.model_dir.is_dir():
        # The run folder's model, report and predictions become the self-trained ones.
        start = out / "start-model"
        if start.exists():
            shutil.rmtree(start)
        shutil.move(str(first.model_dir), str(start))
        shutil.copytree(second.model_dir, first.model_dir)
        for name in ("eval", "predictions.csv"):
            source, target = second.output_dir / name, first.output_dir / name
            if source.exists():
                if target.is_dir():
                    shutil.rmtree(target)
                (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        if "eval" in second.metrics:
            first.metrics["eval"] = second.metrics["eval"]
    return _finish(first, summary)


def _cer(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _finish(first: TrainResult, summary: dict[str, Any]) -> TrainResult:
    first.metrics["self_training"] = summary
    if is_main_process() and first.output_dir.is_dir():
        atomic_write_text(first.output_dir / "metrics.json", json.dumps(first.metrics, indent=2, default=str))
    return first
