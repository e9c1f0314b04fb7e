"""`trocr-tune optimize`: turn a trained checkpoint into a variant artifact (and report on it)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..config import Config, save_config
from ..errors import UserError
from ..files import atomic_write_text
from ..model.loading import ModelBundle, load_bundle, save_bundle
from . import BASELINE, VARIANTS, artifact_size, get_variant, variant_of
from .prune import MaskKeeper

REPORT_FILE = "optimize.json"


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def generate_flops(model: Any, height: int, width: int, tokens: int = 16) -> dict[str, int]:
    """FLOPs of one encoder pass and of decoding `tokens` tokens (teacher-forced, one pass),
    counted by torch's FlopCounterMode on a single line."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model.eval()
    pixels = torch.zeros(1, 3, height, width)
    with torch.inference_mode(), FlopCounterMode(display=False) as enc:
        hidden = model.encoder(pixel_values=pixels).last_hidden_state
    ids = torch.full((1, tokens), model.config.decoder_start_token_id, dtype=torch.long)
    with torch.inference_mode(), FlopCounterMode(display=False) as dec:
        if (
            getattr(model, "enc_to_dec_proj", None) is not None
            and hidden.shape[-1] != model.config.decoder.hidden_size
        ):
            hidden = model.enc_to_dec_proj(hidden)
        model.decoder(input_ids=ids, encoder_hidden_states=hidden)
    return {"encoder": int(enc.get_total_flops()), "decoder": int(dec.get_total_flops())}


def _finetune(
    bundle: ModelBundle, finetune: Config, out: Path, keep_zero: list[str]
) -> tuple[ModelBundle, dict[str, Any]]:
    """Fine-tune the pruned model with the same geometry; pruned weights stay zero."""
    from ..train import train

    start = out / "_pruned"
    save_bundle(bundle, start)
    model_cfg = replace(
        finetune.model,
        name_or_path=str(start),
        preset=None,
        geometry=bundle.info.geometry,
        image_height=bundle.info.image_height,
        image_width=bundle.info.image_width,
        max_new_tokens=bundle.info.max_new_tokens,
    )
    cfg = replace(finetune, model=model_cfg, train=replace(finetune.train, output_dir=str(out / "finetune")))
    result = train(cfg, callbacks=[MaskKeeper(keep_zero)] if keep_zero else None)
    tuned = load_bundle(result.model_dir)
    tuned.info.source = bundle.info.source
    # The fine-tuned model becomes the artifact itself; keep the run's reports, not its copies.
    shutil.rmtree(start, ignore_errors=True)
    shutil.rmtree(out / "finetune" / "checkpoints", ignore_errors=True)
    shutil.rmtree(out / "finetune" / "model", ignore_errors=True)
    return tuned, result.metrics


def optimize_model(
    model_path: str, variant_name: str, out: Path, cfg: Config, finetune: Config | None = None
) -> dict[str, Any]:
    """Write the artifact of `variant_name` for the checkpoint at `model_path` into `out`."""
    variant = get_variant(variant_name)
    if variant_name == BASELINE:
        raise UserError("fp32 is the baseline: there is nothing to optimize")
    bundle = load_bundle(model_path)
    if variant_of(bundle) != BASELINE:
        raise UserError(
            f"{model_path} is already a {variant_of(bundle)} artifact; optimize the fp32 checkpoint"
        )
    if finetune is not None and not variant.changes_weights:
        able = ", ".join(v.name for v in VARIANTS.values() if v.changes_weights)
        raise UserError(
            f"--finetune applies to the variants that change the weights ({able}), not {variant_name}"
        )
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"variant": variant_name, "source": str(model_path), "storage": variant.storage}
    h, w = bundle.info.image_height, bundle.info.image_width
    before = {"parameters": parameter_count(bundle.model), "flops": generate_flops(bundle.model, h, w)}
    extra: dict[str, Any] = {"variant": variant_name}
    if variant.changes_weights:
        prepared, keep_zero = variant.prepare(bundle, cfg.optimize)
        report.update(prepared)
        if finetune is not None:
            bundle, report["finetune"] = _finetune(bundle, finetune, out, keep_zero)
            extra["finetune_seconds_per_epoch"] = report["finetune"]["train"]["seconds_per_epoch"]
        described, note = variant.describe(bundle, cfg.optimize)
        report.update(described)
        extra.update(note)
    report["before"] = before
    report["after"] = {
        "parameters": parameter_count(bundle.model),
        "flops": generate_flops(bundle.model, h, w),
    }
    bundle.info.extra = {**bundle.info.extra, **extra}
    save_bundle(bundle, out)
    variant.save(bundle, out, cfg.optimize)
    if variant.stored != "graphs":  # prove the artifact loads and decodes as its variant
        from . import load_runner

        load_runner(out, torch.device("cpu" if "cpu" in variant.devices else "cuda"), cfg.optimize)
    report["size_bytes"] = artifact_size(out)
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / REPORT_FILE, json.dumps(report, indent=2, default=str))
    return report
