"""Load a pretrained TrOCR or build a preset, keep special tokens consistent, save loadable checkpoints."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transformers import GenerationConfig, TrOCRProcessor, VisionEncoderDecoderModel

from .. import __version__
from ..config import Config, ModelConfig, with_recommended
from ..decoding.charlm import CHAR_LM_FILE, CharNgramLM
from ..errors import UserError
from ..files import atomic_write_text
from .alphabet import adapt_alphabet
from .geometry import (
    encoder_image_size,
    geometry_image_processor,
    resample_position_embeddings,
    target_size,
)
from .presets import PRESETS, build_preset_model, grow_encoder
from .tokenizer import build_char_tokenizer, encode_label

INFO_FILE = "trocr_tune.json"


@dataclass
class ModelInfo:
    """What trocr-tune records beside a checkpoint (plain Transformers ignores this file)."""

    source: str  # hub id / directory / "preset:tiny"
    geometry: str
    image_height: int
    image_width: int
    max_new_tokens: int
    trocr_tune_version: str = __version__
    extra: dict[str, object] = field(default_factory=dict)
    # How the model reads best (eval.* decoding keys, e.g. num_beams and ctc_joint): predict,
    # evaluate, transcribe and serve use these for every decoding key the user does not set.
    decoding: dict[str, Any] = field(default_factory=dict)
    # How to fine-tune it (dotted model.*, train.* and eval.* keys, e.g. the learning rate its recipe
    # was tuned with): `train` takes these for every key the user does not set, and the models it
    # writes carry them on.
    fine_tuning: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelBundle:
    """A model with its processor (image processor + tokenizer) and trocr-tune's metadata."""

    model: VisionEncoderDecoderModel
    processor: TrOCRProcessor
    info: ModelInfo
    # The training transcripts' character n-gram model (char_lm.json beside the checkpoint), for
    # eval.lm_weight; None for checkpoints without one (hub models, train.char_lm_order=0).
    char_lm: CharNgramLM | None = None

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_processor(self) -> Any:
        return self.processor.image_processor


def _with_headroom(tokens: int) -> int:
    """A generation budget for labels of up to `tokens` tokens: 10% more, at least 2."""
    return tokens + max(2, math.ceil(0.1 * tokens))


def max_new_tokens_for(tokenizer: Any, texts: Sequence[str]) -> int:
    """Longest label in tokens (eos included) plus 10% headroom: never the library default of 20."""
    return _with_headroom(max((len(encode_label(tokenizer, t)) for t in texts), default=1))


def decoding_budget(bundle: ModelBundle, texts: Sequence[str]) -> tuple[int, int]:
    """(budget, lines cut): enough new tokens for the longest of `texts`, but no more than the
    decoder's position table can emit (past it, generate fails with an IndexError); the second
    value counts the texts longer than that cap."""
    tokenizer = bundle.tokenizer
    wanted = max(bundle.info.max_new_tokens, max_new_tokens_for(tokenizer, texts))
    cap = emit_limit(bundle.model)
    if cap is None or wanted <= cap:
        return wanted, 0
    return cap, sum(len(encode_label(tokenizer, t)) > cap for t in texts)


def emit_limit(model: VisionEncoderDecoderModel) -> int | None:
    """The most new tokens the decoder's position table allows (build_for_training's rule: the
    start token and room for eos), None when the decoder has no such table."""
    decoder_config: Any = model.config.decoder
    positions = getattr(decoder_config, "max_position_embeddings", None)
    return positions - 2 if isinstance(positions, int) else None


def set_generation_budget(model: VisionEncoderDecoderModel, max_new_tokens: int) -> None:
    """Store the budget as `max_length` = 1 decoder-start token + `max_new_tokens`.

    One length setting only (Transformers warns when both are set, and the Seq2SeqTrainer
    pads generated ids to `max_length`); plain `generate` then stops at the same place.
    """
    model.generation_config.max_new_tokens = None
    model.generation_config.max_length = max_new_tokens + 1


def resolve_special_tokens(model: VisionEncoderDecoderModel, tokenizer: Any) -> None:
    """Make config and generation config agree on pad / eos / decoder start.

    The decoder start comes from the generation config when it has one (that is what
    `generate` uses), else the model config, else the decoder config, else eos (fairseq TrOCR).
    Training (`shift_tokens_right`) and `generate` then use the same token.
    """
    gen = model.generation_config
    start = next(
        v
        for v in (
            gen.decoder_start_token_id if gen is not None else None,
            getattr(model.config, "decoder_start_token_id", None),
            getattr(model.config.decoder, "decoder_start_token_id", None),
            tokenizer.eos_token_id,
        )
        if v is not None
    )
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise UserError("the tokenizer has no pad or eos token; TrOCR fine-tuning needs both")
    model.config.decoder_start_token_id = start
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    decoder_config: Any = model.config.decoder
    model.config.vocab_size = decoder_config.vocab_size
    if gen is None:
        gen = model.generation_config = GenerationConfig()
    gen.decoder_start_token_id = start
    gen.pad_token_id = tokenizer.pad_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.bos_token_id = tokenizer.bos_token_id


def check_special_tokens(model: VisionEncoderDecoderModel, tokenizer: Any) -> None:
    """Fail with one clear line when training and generation would disagree on special tokens."""
    cfg: Any = model.config
    gen = model.generation_config
    problems = []
    start = getattr(cfg, "decoder_start_token_id", None)
    if start is None:
        problems.append("model.config.decoder_start_token_id is not set")
    if gen.decoder_start_token_id not in (None, start):
        problems.append(
            f"generate starts decoding with token {gen.decoder_start_token_id} but training uses {start}"
        )
    if getattr(cfg, "pad_token_id", None) != tokenizer.pad_token_id:
        problems.append(
            f"model pad token {getattr(cfg, 'pad_token_id', None)} != tokenizer pad token "
            f"{tokenizer.pad_token_id}"
        )
    if gen.eos_token_id not in (tokenizer.eos_token_id, [tokenizer.eos_token_id]):
        problems.append(
            f"generation eos token {gen.eos_token_id} != tokenizer eos token {tokenizer.eos_token_id}"
        )
    if len(tokenizer) > cfg.decoder.vocab_size:
        problems.append(
            f"tokenizer has {len(tokenizer)} tokens but the decoder only {cfg.decoder.vocab_size}"
        )
    label = encode_label(tokenizer, "a")
    if tokenizer.bos_token_id is not None and label[0] == tokenizer.bos_token_id:
        problems.append("the tokenizer puts <s> at the start of labels (the double <s> bug)")
    if problems:
        raise UserError("inconsistent special tokens: " + "; ".join(problems))


# Checkpoints shipped inside the package, loadable offline by these names as model.name_or_path.
BUILTIN_MODELS: dict[str, str] = {
    # Pretrained by configs/pretrain-base.yaml on scan-style synthetic lines + real training hands
    # (docs/pretrained-base.md): the default starting point of the real-handwriting recipes.
    "trocr-tune/base-htr": "resources/models/base-htr",
}
# What `train` fine-tunes when a config names neither model.name_or_path nor model.preset.
DEFAULT_MODEL = "trocr-tune/base-htr"


def resolve_model_name(name: str) -> str:
    """The folder of a built-in model name (BUILTIN_MODELS); any other name unchanged."""
    if name in BUILTIN_MODELS:
        from importlib import resources

        folder = Path(str(resources.files("trocr_tune").joinpath(BUILTIN_MODELS[name])))
        if not (folder / "config.json").is_file():
            raise UserError(f"the built-in model {name!r} is missing from this installation ({folder})")
        return str(folder)
    if _looks_like_path(name) and not os.path.isdir(os.path.expanduser(name)):
        raise UserError(f"model folder {name} does not exist (not looking it up on the hub)")
    return os.path.expanduser(name) if name.startswith("~") else name


def _looks_like_path(name: str) -> bool:
    """A local folder, not a hub id: absolute, ./ ../ ~, or a parent folder that exists here."""
    if os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    parent = os.path.dirname(name.rstrip("/\\"))
    return bool(parent) and os.path.isdir(parent)


def _load_pretrained(name: str) -> tuple[VisionEncoderDecoderModel, TrOCRProcessor]:
    name = resolve_model_name(name)
    try:
        model = VisionEncoderDecoderModel.from_pretrained(name)
        processor = TrOCRProcessor.from_pretrained(name)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load checkpoint {name!r}: {first}") from None
    except pickle.UnpicklingError:
        # torch.load(weights_only=True) met pickled Python objects beyond tensors: never run them.
        raise UserError(
            f"cannot load checkpoint {name!r}: its pytorch_model.bin holds pickled Python objects, "
            "not just weights, and is refused; convert it to model.safetensors where it is trusted"
        ) from None
    return model, processor


def build_for_training(cfg: ModelConfig, train_texts: Sequence[str], all_texts: Sequence[str]) -> ModelBundle:
    """The model to fine-tune: a pretrained checkpoint adapted to the geometry, or a fresh preset."""
    height, width = target_size(cfg.geometry, cfg.image_height, cfg.image_width)
    extra: dict[str, object] = {}
    decoding: dict[str, Any] = {}
    fine_tuning: dict[str, Any] = {}
    if cfg.preset:
        tokenizer = build_char_tokenizer(train_texts)
        max_new = cfg.max_new_tokens or max_new_tokens_for(tokenizer, all_texts)
        image_processor = geometry_image_processor(cfg.geometry, height, width)
        special = {
            "pad": tokenizer.pad_token_id,
            "bos": tokenizer.bos_token_id,
            "eos": tokenizer.eos_token_id,
            "start": tokenizer.bos_token_id,
        }
        positions = max(64, 2 ** math.ceil(math.log2(max_new + 2)))
        model = build_preset_model(cfg.preset, len(tokenizer), height, width, positions, special, cfg.dropout)
        processor = TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer)
        source = f"preset:{cfg.preset}"
    elif cfg.name_or_path:
        model, processor = _load_pretrained(cfg.name_or_path)
        if cfg.add_encoder_layers:
            extra["encoder_layers"] = grow_encoder(model, cfg.add_encoder_layers)
        # Before the token budget: adapting the alphabet can change label lengths in tokens.
        extra["alphabet"] = adapt_alphabet(model, processor, train_texts, cfg.new_characters).as_dict()
        tokenizer = processor.tokenizer
        max_new = cfg.max_new_tokens or max_new_tokens_for(tokenizer, all_texts)
        if cfg.geometry != "processor":
            resample_position_embeddings(model, height, width)
            mean = getattr(processor.image_processor, "image_mean", None)
            std = getattr(processor.image_processor, "image_std", None)
            image_processor = geometry_image_processor(cfg.geometry, height, width, mean, std)
            processor = TrOCRProcessor(image_processor=image_processor, tokenizer=tokenizer)
        else:
            height, width = encoder_image_size(model) or (cfg.image_height, cfg.image_width)
        decoder_config: Any = model.config.decoder
        positions = getattr(decoder_config, "max_position_embeddings", None)
        if positions is not None and max_new + 2 > positions:
            # The longest line that fits for a character tokenizer: its characters + eos, with the
            # budget's headroom and two positions for the start and end tokens.
            fits = max((n for n in range(positions) if _with_headroom(n + 1) + 2 <= positions), default=0)
            raise UserError(
                f"labels need {max_new} tokens but the decoder has only {positions} positions: drop the "
                f"longest lines with data.max_text_length={fits} (dropped lines are counted) or start "
                "from a model with more decoder positions"
            )
        source = cfg.name_or_path
        decoding = recorded_decoding(cfg.name_or_path)
        fine_tuning = recorded_fine_tuning(cfg.name_or_path)
    else:
        raise UserError(
            f"set model.name_or_path (hub id or directory) or model.preset ({', '.join(PRESETS)})"
        )
    resolve_special_tokens(model, processor.tokenizer)
    set_generation_budget(model, max_new)
    info = ModelInfo(
        source, cfg.geometry, height, width, max_new, extra=extra, decoding=decoding, fine_tuning=fine_tuning
    )
    return ModelBundle(model, processor, info)


def _recorded(name: str, entry: str) -> dict[str, Any]:
    """One mapping of a trocr-tune checkpoint folder's trocr_tune.json ({} for hub models, older folders)."""
    path = Path(resolve_model_name(name)) / INFO_FILE
    if not path.is_file():
        return {}
    value = json.loads(path.read_text(encoding="utf-8")).get(entry)
    return dict(value) if isinstance(value, dict) else {}


def recorded_decoding(name: str) -> dict[str, Any]:
    """The decoding a trocr-tune checkpoint folder records ({} for hub models and older folders)."""
    return _recorded(name, "decoding")


def recorded_fine_tuning(name: str) -> dict[str, Any]:
    """The fine-tuning keys a trocr-tune checkpoint folder recommends ({} for hub models, folders without)."""
    return _recorded(name, "fine_tuning")


def training_config(cfg: Config) -> tuple[Config, list[str]]:
    """The config `train` runs: from the shipped base when it names no model, with the fine-tuning
    its checkpoint recommends (trocr_tune.json `fine_tuning`) for every key not set; and one-line
    notes of what it took."""
    notes = []
    if not cfg.model.name_or_path and not cfg.model.preset:
        model = replace(cfg.model, name_or_path=DEFAULT_MODEL)
        cfg = replace(cfg, model=model)
        notes.append(f"model.name_or_path={DEFAULT_MODEL} (no model named): the shipped base")
    name = cfg.model.name_or_path
    if name:
        cfg, taken = with_recommended(cfg, recorded_fine_tuning(name), name)
        if taken:
            keys = ", ".join(f"{key}={value}" for key, value in taken.items())
            notes.append(f"fine-tuning as {name} recommends: {keys} (set these keys to train otherwise)")
    return cfg, notes


def save_bundle(bundle: ModelBundle, directory: str | Path) -> Path:
    """Write model (safetensors), processor and trocr_tune.json; plain Transformers loads the folder."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    bundle.model.save_pretrained(out)
    bundle.processor.save_pretrained(out)
    atomic_write_text(out / INFO_FILE, json.dumps(asdict(bundle.info), indent=2))
    if bundle.char_lm is not None:
        bundle.char_lm.save(out / CHAR_LM_FILE)
    return out


def load_bundle(path: str | os.PathLike[str]) -> ModelBundle:
    """Load a checkpoint for evaluation/prediction (a trocr-tune run's model/ or any TrOCR)."""
    name = resolve_model_name(str(path))
    model, processor = _load_pretrained(name)
    info_path = Path(name) / INFO_FILE
    if info_path.is_file():
        raw = json.loads(info_path.read_text(encoding="utf-8"))
        info = ModelInfo(**{k: v for k, v in raw.items() if k in ModelInfo.__dataclass_fields__})
    else:
        height, width = encoder_image_size(model) or (384, 384)
        max_new = model.generation_config.max_new_tokens or 128
        info = ModelInfo(name, "processor", height, width, max_new)
    limit = emit_limit(model)
    if limit is not None:  # a budget past the position table ends in an IndexError mid-generate
        info.max_new_tokens = min(info.max_new_tokens, limit)
    resolve_special_tokens(model, processor.tokenizer)
    set_generation_budget(model, info.max_new_tokens)
    check_special_tokens(model, processor.tokenizer)
    model.eval()
    lm_path = Path(name) / CHAR_LM_FILE
    char_lm = CharNgramLM.load(lm_path) if lm_path.is_file() else None
    return ModelBundle(model, processor, info, char_lm)
