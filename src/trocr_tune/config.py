"""Typed configuration: dataclass sections, YAML files, dotted `key=value` overrides.

One schema for every command. Unknown keys fail with one line naming the nearest valid key;
the resolved config is written next to every output (`save_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import UserError
from .files import atomic_write_text

GEOMETRIES = ("processor", "stretch", "line", "reference")

SPLITS = ("train", "validation", "test")
# What data.group_by keeps together, broadest first (the line-by-line split note looks for them so).
GROUP_KEYS = ("writer", "manuscript", "page")
NEW_CHARACTERS = ("union", "new", "fail")


def _one_of(key: str, value: object, choices: typing.Iterable[object]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"{key}={value!r} is not one of: {', '.join(map(str, choices))}")


# Field metadata of bookkeeping fields that are not config keys (all_keys, YAML and saved configs skip them).
INTERNAL = {"internal": True}


@dataclass
class DataConfig:
    """Where the dataset is, how it is laid out, cleaned and split."""

    layout: str = "manifest"
    root: str | None = None
    # Split used by evaluate / benchmark / preview.
    split: str = "test"
    # Keep at most this many samples per split (quick runs); None keeps all.
    limit: int | None = None
    # --- text normalisation (applied at read time, identically for every layout) ---
    unicode_form: str = "NFC"
    collapse_whitespace: bool = True
    # Ordered [from, to] string replacements, e.g. [["_", " "], ["ç", "z"]].
    replacements: list[list[str]] = field(default_factory=list)
    case: str = "keep"
    # Allowed characters; None allows everything. See alphabet_policy.
    alphabet: str | None = None
    alphabet_policy: str = "drop"
    min_text_length: int = 1
    max_text_length: int | None = None
    # --- image checks ---
    check_images: str = "header"
    min_image_side: int = 4
    # --- splits ---
    # Ignore the layout's own splits (partition files, CSV names, split column) and re-split.
    resplit: bool = False
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    # Group key that no split may straddle: page, manuscript, writer (where the layout has it).
    group_by: str | None = None
    seed: int = 42
    # --- layout-specific keys (README lists which layout reads which) ---
    encoding: str = "utf-8"
    partition_dir: str | None = None
    image_column: str = "image"
    text_column: str = "text"
    split_column: str = "split"
    id_column: str = "id"
    # Manifest layout: let image paths point outside the dataset folder (absolute paths
    # elsewhere, ../..). Off by default, so a downloaded manifest cannot read arbitrary files.
    allow_outside_root: bool = False
    xml_glob: str = "**/*.xml"
    line_types: list[str] = field(default_factory=list)
    crop_padding: int = 4
    polygon_mask: bool = False
    on_duplicate_page: str = "first"
    cache_dir: str | None = None
    hf_config: str | None = None

    def __post_init__(self) -> None:
        from .data.layouts import LAYOUTS  # registry: names only, no heavy imports

        _one_of("data.layout", self.layout, LAYOUTS)
        _one_of("data.split", self.split, SPLITS)
        _one_of("data.unicode_form", self.unicode_form, ("NFC", "NFD", "NFKC", "NFKD", "none"))
        _one_of("data.case", self.case, ("keep", "lower", "upper"))
        _one_of("data.alphabet_policy", self.alphabet_policy, ("drop", "strip"))
        _one_of("data.check_images", self.check_images, ("none", "header", "decode"))
        _one_of("data.on_duplicate_page", self.on_duplicate_page, ("first", "error"))
        if self.group_by is not None:
            _one_of("data.group_by", self.group_by, GROUP_KEYS)
        for i, pair in enumerate(self.replacements):
            if len(pair) != 2:
                raise UserError(f"data.replacements[{i}] must be a [from, to] pair, got {pair!r}")
        if len(self.split_ratios) != 3 or any(r < 0 for r in self.split_ratios):
            raise UserError("data.split_ratios must be three non-negative numbers (train, validation, test)")
        if abs(sum(self.split_ratios) - 1.0) > 1e-6:
            raise UserError(f"data.split_ratios must sum to 1, got {sum(self.split_ratios):g}")
        if self.min_text_length < 0:
            raise UserError("data.min_text_length must be >= 0")
        if self.limit is not None and self.limit < 1:
            raise UserError("data.limit must be >= 1 (or null)")
        if self.crop_padding < 0:
            raise UserError("data.crop_padding must be >= 0")


@dataclass
class ModelConfig:
    """Which model to start from and the input geometry it sees."""

    # Hub id (e.g. microsoft/trocr-base-handwritten), local directory of a checkpoint, or a model
    # shipped with trocr-tune (model/loading.py BUILTIN_MODELS: trocr-tune/base-htr). null without a
    # preset: `train` fine-tunes trocr-tune/base-htr. Keys a checkpoint recommends (trocr_tune.json
    # `fine_tuning`: the base's learning rate, geometry, augmentation, ...) fill in the unset ones.
    name_or_path: str | None = None
    # From-scratch architecture (a name in model/presets.py's PRESETS) with a character tokenizer
    # built from the data.
    preset: str | None = None
    # processor: the checkpoint's own resize (for a preset: stretch to image_height x image_width);
    # stretch: stretch to image_height x image_width (a checkpoint's position table is resampled);
    # line: aspect-preserving resize + pad to image_height x image_width; reference: the first
    # reference pipeline's 256x50 resize + pad.
    geometry: str = "line"
    image_height: int = 64
    image_width: int = 512
    dropout: float = 0.1
    # Generation budget; null = longest label of the data (in tokens) + 10%.
    max_new_tokens: int | None = None
    # Training characters a model.name_or_path tokenizer cannot encode (a preset's tokenizer is
    # built from the data): union adds them as new tokens, new (character tokenizers) keeps
    # exactly the data's characters, fail stops with the list (model/alphabet.py).
    # union by default: users want training to go on and keep all the checkpoint reads; new ones are learned.
    new_characters: str = "union"
    # Transformer layers appended to a model.name_or_path encoder (ViT, DeiT, or the conv/hybrid
    # presets' DPT) before training; each starts as the identity (model/presets.py grow_encoder).
    add_encoder_layers: int = 0
    # The keys above that the YAML or the command line set, so that a checkpoint's recommended
    # fine-tuning (with_recommended) fills in only the rest. Not a config key.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata=INTERNAL)

    def __post_init__(self) -> None:
        _one_of("model.geometry", self.geometry, GEOMETRIES)
        _one_of("model.new_characters", self.new_characters, NEW_CHARACTERS)
        if self.name_or_path and self.preset:
            raise UserError(
                "set either model.name_or_path (a pretrained checkpoint) or model.preset, not both"
            )
        if self.preset is not None:
            from .model.presets import PRESETS

            _one_of("model.preset", self.preset, PRESETS)
        if self.image_height < 8 or self.image_width < 8:
            raise UserError("model.image_height and model.image_width must be >= 8")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise UserError("model.max_new_tokens must be >= 1 (or null)")
        if self.add_encoder_layers < 0:
            raise UserError("model.add_encoder_layers must be >= 0")
        if self.add_encoder_layers and not self.name_or_path:
            raise UserError(
                "model.add_encoder_layers grows a pretrained model.name_or_path; a preset sets its own layers"
            )


@dataclass
class TrainConfig:
    """Fine-tuning settings (Transformers Seq2SeqTrainer underneath)."""

    output_dir: str = "runs/train"
    seed: int = 42
    # Stop after this many optimizer steps (overrides epochs when set).
    max_steps: int | None = None
    epochs: float = 10.0
    batch_size: int = 8
    grad_accum: int = 1
    # null: 5e-5 for a pretrained checkpoint, 1e-3 for a from-scratch preset.
    learning_rate: float | None = None
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.0
    max_grad_norm: float = 1.0
    # auto: bf16 (or fp16) on CUDA, bf16 autocast on CPUs with native bf16, else fp32.
    precision: str = "auto"
    # Evaluate (with generate) and checkpoint every N steps; null = every epoch.
    eval_steps: int | None = None
    # Validate on at most this many validation lines: a fixed sample drawn with data.seed, the same
    # at every evaluation and in the final report (null = all). Beam search over a large validation
    # split (41,370 Kaggle names) would take longer than the training budget on a CPU.
    eval_max_lines: int | None = 500
    logging_steps: int = 10
    save_total_limit: int = 2
    early_stopping_patience: int | None = None
    # Continue from the last checkpoint in output_dir.
    resume: bool = False
    augment: str = "none"
    bucket_by_width: bool = False
    num_workers: int = 2
    # Keep each training image as the model sees it (decoded and processed, float32) in memory
    # after its first use, so later epochs skip PNG decoding and the image processor. Costs
    # channels x height x width x 4 bytes per line (1.6 GB for 31,724 lines of 3 x 16 x 256);
    # needs train.augment=none (augmented images differ every epoch) and train.num_workers=0.
    cache_images: bool = False
    # Optional experiment trackers: none, tensorboard, wandb (when installed).
    report_to: list[str] = field(default_factory=lambda: ["none"])
    gradient_checkpointing: bool = False
    # torch.compile the training model: null, default, reduce-overhead or max-autotune.
    compile: str | None = None
    # Validate, checkpoint and save an exponential moving average of the weights with this decay per
    # optimizer step (e.g. 0.99: about the last 100 steps); 0 = the weights as trained.
    ema_decay: float = 0.0
    # Weight of the auxiliary CTC loss on the encoder output (0 = off); see model/ctc.py.
    ctc_weight: float = 0.0
    # Share of training (of the time budget, else of the steps) that optimises the CTC loss alone:
    # the encoder learns to read before the decoder can settle for a language-model prior.
    ctc_warmup: float = 0.0
    # Wall-clock budget: train until it is spent, with warmup + cosine over *time* (the
    # learning rate reaches 0 when the budget ends); train.max_steps still caps the steps.
    max_minutes: float | None = None
    # Save a character n-gram model of this order of the training split's transcripts beside the
    # checkpoint (char_lm.json, decoding/charlm.py) for eval.lm_weight; 0 = none. A few hundred KB.
    char_lm_order: int = 5
    # Parts held fixed while training (model/freeze.py): stem (the encoder's first layer), encoder,
    # decoder. A frozen stem keeps the base's stroke detectors; a CPU step is ~17% faster (docs/training.md).
    freeze: list[str] = field(default_factory=list)
    # Self-training (self_training.py): after training, read these lines without their texts (the
    # dataset's `test` split, or a folder / file of line images), keep the self_training_keep most
    # confident readings as labels and train self_training_minutes more on them with the training
    # split. null = off. The self-trained model is kept unless it reads the validation split (other
    # hands than the one it adapted to) more than self_training_tolerance CER worse.
    self_training_on: str | None = None
    self_training_keep: float = 0.5
    self_training_minutes: float = 4.0
    self_training_tolerance: float = 0.02
    # The keys above that the YAML or the command line set, so that a checkpoint's recommended
    # fine-tuning (with_recommended) fills in only the rest. Not a config key.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata=INTERNAL)

    def __post_init__(self) -> None:
        from .data.augment import POLICIES
        from .model.freeze import FREEZABLE

        if self.compile is not None:
            _one_of("train.compile", self.compile, ("default", "reduce-overhead", "max-autotune"))

        _one_of("train.scheduler", self.scheduler, ("cosine", "linear", "constant_with_warmup"))
        _one_of("train.precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _one_of("train.augment", self.augment, POLICIES)
        for name in ("batch_size", "grad_accum", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("train.max_steps must be >= 1 (or null)")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise UserError("train.eval_steps must be >= 1 (or null)")
        if self.eval_max_lines is not None and self.eval_max_lines < 1:
            raise UserError("train.eval_max_lines must be >= 1 (or null for every validation line)")
        if not 0 <= self.warmup_ratio < 1:
            raise UserError("train.warmup_ratio must be in [0, 1)")
        if self.num_workers < 0:
            raise UserError("train.num_workers must be >= 0")
        if self.cache_images and (self.augment != "none" or self.num_workers):
            raise UserError(
                "train.cache_images needs train.augment=none (augmented images differ every epoch) and "
                "train.num_workers=0 (worker processes cannot fill the main process's cache)"
            )
        if not 0 <= self.ema_decay < 1:
            raise UserError("train.ema_decay must be in [0, 1) (0 = no average)")
        if self.ctc_weight < 0:
            raise UserError("train.ctc_weight must be >= 0")
        if not 0 <= self.ctc_warmup < 1 or (self.ctc_warmup and not self.ctc_weight):
            raise UserError("train.ctc_warmup must be in [0, 1) and needs train.ctc_weight > 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError("train.max_minutes must be > 0 (or null)")
        if not 0 <= self.char_lm_order <= 12:
            raise UserError("train.char_lm_order must be within [0, 12] (0 = no language model)")
        for tracker in self.report_to:
            _one_of("train.report_to", tracker, ("none", "tensorboard", "wandb"))
        for part in self.freeze:
            _one_of("train.freeze", part, FREEZABLE)
        if self.self_training_on in ("train", "validation"):
            raise UserError(
                f"train.self_training_on={self.self_training_on}: read the lines of a hand training "
                "neither learns from nor is validated on (test, or a folder of line images)"
            )
        if not 0 < self.self_training_keep <= 1:
            raise UserError("train.self_training_keep must be in (0, 1]")
        if self.self_training_minutes <= 0:
            raise UserError("train.self_training_minutes must be > 0")
        if self.self_training_tolerance < 0:
            raise UserError("train.self_training_tolerance must be >= 0")


# The EvalConfig keys that say how a model reads (a model records them; see EvalConfig.with_decoding).
DECODING_KEYS = (
    "num_beams",
    "length_penalty",
    "no_repeat_ngram_size",
    "ctc_rescore",
    "ctc_joint",
    "lm_weight",
    "lm_fusion",
    "rescore_length_bonus",
    "rescore_views",
    "rescore_views_margin",
)


@dataclass
class EvalConfig:
    """How predictions are generated and scored."""

    batch_size: int = 16
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Joint CTC-attention rescoring: with num_beams > 1, keep all num_beams hypotheses and pick the
    # one with the best (1 - w) * log p(decoder) + w * log p(CTC on the encoder columns). Only for
    # models trained with train.ctc_weight > 0 (model/ctc.py); 0 = plain beam search.
    ctc_rescore: float = 0.0
    # Joint CTC-attention decoding: at every step of the search (greedy or beams), weigh each
    # candidate's decoder log-probability with the CTC prefix score of the encoder columns,
    # (1 - w) * log p(decoder) + w * log p(CTC prefix) (decoding/ctc_prefix.py), so readings the
    # image supports stay in the search. Only for models trained with train.ctc_weight > 0.
    # 1 = the CTC head alone decides (the decoder still proposes nothing it cannot score); 0 = off.
    ctc_joint: float = 0.0
    # With num_beams > 1: add this weight x log p(text) under the character n-gram model of the
    # training transcripts (char_lm.json beside the checkpoint, written by train.char_lm_order or
    # `trocr-tune lm`) to every hypothesis's score and keep all num_beams of them, as ctc_rescore
    # does; works with or without ctc_rescore. 0 = no language model.
    lm_weight: float = 0.0
    # Shallow fusion: add this weight x log p_LM(next character | the text so far) under the same
    # model to the decoder's log-probabilities at every step of the search (greedy or beams), so
    # readings the language model finds likely stay among the beams. Needs char_lm.json and a
    # character tokenizer; the rescoring and the confidences still use the decoder's own scores.
    lm_fusion: float = 0.0
    # With ctc_rescore or lm_weight: add this much per token to every hypothesis's joint score. The
    # log-likelihoods fall with each character read, so the joint score favours readings that drop
    # one; a bonus of ~1 per token evens that out (demo model: docs/decoding.md).
    rescore_length_bonus: float = 0.0
    # With ctc_rescore or lm_weight: average each hypothesis's optical score (decoder, and CTC with
    # ctc_rescore) over the image and these test-time views of it (decoding/views.py: pad-x, pad-y,
    # thicker, thinner, blur), one encoder pass and one teacher-forced decoder pass per view.
    rescore_views: list[str] = field(default_factory=list)
    # ... only for the images whose two best beams are within this many log-likelihood units of
    # each other (null: every image). The demo model kept the views' whole gain at 1 while
    # viewing a third of the lines.
    rescore_views_margin: float | None = None
    # Applied identically to predictions and references of every system compared.
    metric_unicode_form: str = "NFC"
    metric_collapse_whitespace: bool = True
    # The keys above that the YAML or the command line set, so that a model's recorded decoding
    # (with_decoding) fills in only the rest. Not a config key.
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata=INTERNAL)

    def decoding(self) -> dict[str, Any]:
        """The decoding keys that differ from the defaults (what `train` records in the model)."""
        default = EvalConfig()
        return {k: getattr(self, k) for k in DECODING_KEYS if getattr(self, k) != getattr(default, k)}

    def taken_from(self, recorded: dict[str, Any]) -> dict[str, Any]:
        """The decoding keys of `recorded` (a model's decoding) that these settings leave to it."""
        return {k: v for k, v in recorded.items() if k in DECODING_KEYS and k not in self.given}

    def with_decoding(self, recorded: dict[str, Any]) -> EvalConfig:
        """These settings, with `recorded` for every decoding key not given."""
        taken = self.taken_from(recorded)
        return dataclasses.replace(self, **taken) if taken else self

    def __post_init__(self) -> None:
        _one_of("eval.metric_unicode_form", self.metric_unicode_form, ("NFC", "NFKC", "none"))
        if self.batch_size < 1 or self.num_beams < 1 or self.no_repeat_ngram_size < 0:
            raise UserError("eval.batch_size and eval.num_beams must be >= 1, eval.no_repeat_ngram_size >= 0")
        if not 0.0 <= self.ctc_rescore <= 1.0:
            raise UserError("eval.ctc_rescore must be within [0, 1]")
        if not 0.0 <= self.ctc_joint <= 1.0:
            raise UserError("eval.ctc_joint must be within [0, 1]")
        if self.lm_weight < 0 or self.lm_fusion < 0:
            raise UserError("eval.lm_weight and eval.lm_fusion must be >= 0")
        if (self.rescore_length_bonus or self.rescore_views) and not (self.ctc_rescore or self.lm_weight):
            raise UserError(
                "eval.rescore_length_bonus and eval.rescore_views need eval.ctc_rescore > 0 "
                "or eval.lm_weight > 0"
            )
        if self.rescore_views_margin is not None and not (
            self.rescore_views and self.rescore_views_margin > 0
        ):
            raise UserError("eval.rescore_views_margin must be > 0 and needs eval.rescore_views")
        if self.rescore_views:
            from .decoding.views import VIEWS

            for name in self.rescore_views:
                _one_of("eval.rescore_views", name, tuple(VIEWS))


@dataclass
class OptimizeConfig:
    """Settings of the optimized variants (see `trocr-tune optimize --help`)."""

    # prune-l1: share of weights zeroed (globally across the chosen Linear layers, or per layer).
    prune_amount: float = 0.3
    prune_scope: str = "both"
    prune_global: bool = True
    # The decoder's output projection is tied to the token embeddings: pruning it unties them.
    prune_output_projection: bool = False
    # prune-structured: share of encoder attention heads and of FFN channels removed.
    structured_amount: float = 0.25
    onnx_opset: int = 18

    def __post_init__(self) -> None:
        _one_of("optimize.prune_scope", self.prune_scope, ("encoder", "decoder", "both"))
        for name in ("prune_amount", "structured_amount"):
            if not 0 < getattr(self, name) < 1:
                raise UserError(f"optimize.{name} must be in (0, 1)")
        if self.onnx_opset < 17:
            raise UserError("optimize.onnx_opset must be >= 17 (LayerNormalization)")


@dataclass
class Config:
    """The whole resolved configuration of one command."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)


# --------------------------------------------------------------------------------------------
# Building configs from YAML and overrides


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every valid dotted key of the schema, e.g. `data.layout`."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            keys.extend(all_keys(hints[f.name], name + "."))
        else:
            keys.append(name)
    return keys


def _unknown_key(key: str) -> UserError:
    near = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.5)
    if not near:  # a bare field name without its section, e.g. `layout=...`
        near = [k for k in all_keys() if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1]
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return UserError(f"unknown config key '{key}'{hint}")


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, key: str, raw: bool) -> Any:
    """Convert `value` to type `tp`; `raw` means value is an unparsed command-line string."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None or (raw and str(value).lower() in ("null", "none", "~", "")):
            return None
        return _coerce(value, inner[0], key, raw)
    if value is None:
        raise UserError(f"{key} may not be null")
    if origin is list:
        if raw:
            text = str(value).strip()
            value = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v]
        if not isinstance(value, list):
            value = [value]
        return [_coerce(v, args[0], f"{key}[{i}]", False) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise UserError(f"{key} must be true or false, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{key} must be a string, got {value!r}")
        return str(value)
    if tp in (int, float):
        if isinstance(value, bool):
            raise UserError(f"{key} must be a number, got {value!r}")
        try:
            number = float(value)  # accepts "1e-3", "64", 64, 6.4e1
            if tp is int:
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return number
        except (TypeError, ValueError):
            raise UserError(
                f"{key} must be {'an integer' if tp is int else 'a number'}, got {value!r}"
            ) from None
    raise TypeError(f"unsupported config type {tp} for {key}")  # a schema bug, not user input


def _build(cls: type, values: dict[str, Any], prefix: str, raw_keys: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if not isinstance(name, str):  # YAML reads `1: x` or `true: x` as a non-string key
            raise UserError(f"config key {prefix}{name!r} must be a name, got {type(name).__name__}")
        key = prefix + name
        if name not in fields or fields[name].metadata.get("internal"):
            raise _unknown_key(key)
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise UserError(f"'{key}' must be a section (mapping), got {value!r}")
            kwargs[name] = _build(tp, value, key + ".", raw_keys)  # type: ignore[arg-type]
        else:
            kwargs[name] = _coerce(value, tp, key, key in raw_keys)
    if "given" in fields and fields["given"].metadata.get("internal"):
        kwargs["given"] = frozenset(kwargs)
    return cls(**kwargs)


def parse_overrides(overrides: typing.Sequence[str]) -> dict[str, str]:
    """`["data.root=x", ...]` -> `{"data.root": "x"}`; bad items fail with one line."""
    out: dict[str, str] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}")
        out[key.strip()] = value
    return out


# A recipe's top-level `inherit: OTHER.yaml` (relative to the recipe) starts from that recipe's
# keys; the recipe's own keys win, section by section. Not a config key.
INHERIT = "inherit"


def _read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's tree of keys, with the recipes it inherits from merged underneath."""
    if not path.is_file():
        raise UserError(f"config file not found: {path}" + (f" (inherited by {chain[-1]})" if chain else ""))
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f":{line + 1}" if line is not None else ""
        raise UserError(f"{path}{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: the config must be a mapping of sections")
    parent = loaded.pop(INHERIT, None)
    if parent is None:
        return loaded
    if not isinstance(parent, str) or not parent:
        raise UserError(f"{path}: '{INHERIT}' must be the path of another recipe, got {parent!r}")
    here = path.resolve()
    base = (path.parent / parent).resolve()
    if base == here or base in chain:
        raise UserError(f"{path}: '{INHERIT}: {parent}' makes a loop of recipes")
    return _merge(_read_recipe(base, (*chain, here)), loaded)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over`'s keys on top of `base`'s; sections merge key by key (an empty section keeps base's)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(out.get(key), dict) and (value is None or isinstance(value, dict)):
            out[key] = _merge(out[key], value or {})
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load YAML (optional), apply dotted overrides, validate, return the typed config."""
    tree: dict[str, Any] = _read_recipe(Path(path)) if path is not None else {}
    raw_keys = set()
    valid = set(all_keys())
    for key, value in parse_overrides(overrides).items():
        if key not in valid:
            raise _unknown_key(key)
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
        raw_keys.add(key)
    return _build(Config, tree, "", raw_keys)


def keys_text(values: dict[str, Any], section: str = "eval") -> str:
    """`{"num_beams": 4}` -> `eval.num_beams=4`, comma-separated (for notes naming settings)."""
    return ", ".join(f"{section}.{k}={v}" for k, v in values.items())


# The sections a checkpoint may recommend keys of (ModelInfo.fine_tuning): how to fine-tune and
# decode it, never where the data or the outputs are.
RECOMMENDABLE = ("model", "train", "eval")


def with_recommended(
    cfg: Config, recommended: typing.Mapping[str, Any], source: str
) -> tuple[Config, dict[str, Any]]:
    """`cfg` with a checkpoint's recommended fine-tuning (dotted `model.*`, `train.*`, `eval.*` keys)
    for every key still at its default that neither the YAML nor the command line set; and the
    keys it took."""
    valid = set(all_keys())
    hints = typing.get_type_hints(Config)
    changes: dict[str, dict[str, Any]] = {}
    taken: dict[str, Any] = {}
    for key, value in recommended.items():
        section, _, name = key.partition(".")
        if section not in RECOMMENDABLE or key not in valid:
            raise UserError(f"{source} recommends {key!r}, which is not a model, train or eval key")
        part = getattr(cfg, section)
        # Set by the YAML or the command line, or changed by code (dataclasses.replace): kept.
        if name in part.given or getattr(part, name) != getattr(type(part)(), name):
            continue
        tp = typing.get_type_hints(hints[section])[name]
        changes.setdefault(section, {})[name] = taken[key] = _coerce(value, tp, key, False)
    if not changes:
        return cfg, {}
    sections = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in changes.items()}
    return dataclasses.replace(cfg, **sections), taken


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config as nested dicts of its keys (bookkeeping fields left out)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        value = getattr(cfg, f.name)
        out[f.name] = config_to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again by `load_config`)."""
    return atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True))
