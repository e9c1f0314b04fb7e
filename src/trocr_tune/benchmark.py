"""`trocr-tune benchmark`: every variant side by side on the same lines, device and metric.

Honesty rules, all enforced here:
- one device per table (a CPU table and a GPU table are never mixed);
- the same test split, preprocessed once: every variant decodes the very same pixel tensors;
- the same generation settings and the same metric normalisation for every variant;
- each variant runs in a fresh process (its own peak RSS, no compile cache or thread pool
  shared with another variant; forked from a server that has only imported the libraries; the
  ONNX graphs are exported beforehand in a process of their own), warm-up runs are excluded,
  timed runs are repeated and their median and spread reported, and ratios are to the baseline
  measured in the same run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import Config, EvalConfig, OptimizeConfig, config_to_dict, save_config
from .data.dataset import LineDataset, collate
from .data.reader import read_dataset
from .decoding import DecodeSettings, Prediction, pick_device
from .errors import UserError
from .evaluate import score_predictions
from .files import atomic_open, atomic_write_text
from .model.loading import decoding_budget, load_bundle
from .optimize import BASELINE, VARIANTS, get_variant, load_runner, variant_of
from .predict import readable_images


@dataclass
class Settings:
    batch_size: int = 16
    runs: int = 3
    warmup: int = 1
    latency_lines: int = 16
    device: str = "auto"
    threads: int | None = None
    # A variant "pays" when it reads >= pays_at x fp32's lines/s with CER within parity_cer of fp32.
    pays_at: float = 1.3
    parity_cer: float = 0.002


@dataclass
class VariantSpec:
    """`name` (applied to MODEL on the fly), `name=DIR` or `DIR` (an artifact of `optimize`)."""

    label: str
    name: str
    artifact: str | None = None

    @classmethod
    def parse(cls, text: str) -> VariantSpec:
        name, sep, path = text.partition("=")
        if sep:
            return cls(f"{name} ({Path(path).name})", get_variant(name).name, path)
        if name in VARIANTS:
            return cls(name, name)
        folder = Path(name)
        if folder.is_dir():
            bundle_variant = (
                json.loads((folder / "trocr_tune.json").read_text()).get("extra", {}).get("variant", BASELINE)
            )
            return cls(f"{bundle_variant} ({folder.name})", bundle_variant, str(folder))
        raise UserError(
            f"--variants: {text!r} is neither a variant ({', '.join(VARIANTS)}) nor an artifact folder"
        )


@dataclass
class Row:
    label: str
    variant: str
    metrics: dict[str, float]
    times: list[float]
    latency_ms: list[float]
    warmup_seconds: float
    size_bytes: int
    peak_rss_bytes: int
    train_seconds_per_epoch: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)

    def summary(self, n: int) -> dict[str, float | None]:
        lat = sorted(self.latency_ms)
        return {
            "cer": self.metrics["cer"],
            "wer": self.metrics["wer"],
            "mean_similarity": self.metrics["mean_similarity"],
            "exact_match": self.metrics["exact_match"],
            "test_seconds": self.seconds,
            "test_seconds_spread": max(self.times) - min(self.times),
            "lines_per_second": n / self.seconds,
            "latency_p50_ms": _percentile(lat, 50),
            "latency_p95_ms": _percentile(lat, 95),
            "size_mb": self.size_bytes / 2**20,
            "peak_rss_mb": self.peak_rss_bytes / 2**20,
            "train_seconds_per_epoch": self.train_seconds_per_epoch,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux: VmHWM of /proc/self/status, which belongs to the process image and starts afresh at
    exec. `ru_maxrss` does not: a spawned worker inherits the parent's high-water mark through
    fork + exec, so every variant would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux/BSD kibibytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_variant(job: dict[str, Any]) -> dict[str, Any]:
    """Run one variant (in its own process): warm-up, timed full passes, batch-1 latency."""
    settings = Settings(**job["settings"])
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    spec = VariantSpec(**job["spec"])
    ocfg = OptimizeConfig(**job["optimize"])
    if spec.artifact:
        bundle, runner = load_runner(spec.artifact, device, ocfg)
    elif spec.name in job.get("shared_graphs", {}):
        bundle = load_bundle(job["model"])
        runner = get_variant(spec.name).load(Path(job["shared_graphs"][spec.name]), bundle, device, ocfg)
    else:
        bundle = load_bundle(job["model"])
        runner = get_variant(spec.name).apply(bundle, ocfg, device)
    pixels = torch.load(job["pixels"], weights_only=True)
    decode = DecodeSettings.from_eval(bundle, EvalConfig(**job["eval"]), job["budget"])
    batches = list(torch.split(pixels, settings.batch_size))
    # Warm up on every distinct batch shape the timed runs will see (a smaller last batch would
    # otherwise make a compiled variant recompile inside the first timed run).
    shapes = [batches[0], *(b for b in batches[-1:] if b.shape != batches[0].shape)]
    start = time.perf_counter()
    for _ in range(settings.warmup):
        for batch in shapes:
            runner.generate_batch(batch, decode)
    warmup = time.perf_counter() - start
    times, predictions = [], []
    # Caches filled by the text read (LM fusion tables) would make a re-read faster than reading
    # new lines: every timed run starts without them.
    forget = getattr(runner, "forget", None)
    for _ in range(settings.runs):
        if forget:
            forget(decode)
        start = time.perf_counter()
        predictions = [p for batch in batches for p in runner.generate_batch(batch, decode)]
        times.append(time.perf_counter() - start)
    if job.get("times_only"):  # fp32 timed again after the variants (the run's drift)
        return {"times": times}
    lines = pixels[: settings.latency_lines]
    runner.generate_batch(lines[:1], decode)  # batch-1 shapes warm too
    latency = []
    for i in range(len(lines)):
        start = time.perf_counter()
        runner.generate_batch(lines[i : i + 1], decode)
        latency.append((time.perf_counter() - start) * 1000)
    stats = getattr(runner, "compile_stats", None)
    facts = (
        profile_baseline(runner, batches, decode, statistics.median(times)) if spec.name == BASELINE else None
    )
    return {
        "facts": facts,
        "predictions": [(p.text, p.confidence) for p in predictions],
        "times": times,
        "latency_ms": latency,
        "warmup_seconds": warmup,
        "size_bytes": get_variant(spec.name).saved_bytes(runner, spec.artifact or job["model"]),
        "peak_rss_bytes": peak_rss_bytes(),
        # The training that produced the weights this variant runs (fp32's when it reuses them).
        "train_seconds_per_epoch": bundle.info.extra.get(
            "finetune_seconds_per_epoch", bundle.info.extra.get("train_seconds_per_epoch")
        ),
        "notes": {"compile": stats.as_dict()} if stats is not None else {},
        "threads": torch.get_num_threads(),
    }


LINEAR_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation")
CONV_OPS = (
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::thnn_conv2d",
    "aten::cudnn_convolution",
    "aten::_nnpack_spatial_convolution",
)


def profile_baseline(
    runner: Any, batches: list[torch.Tensor], decode: DecodeSettings, seconds: float
) -> dict[str, Any]:
    """Where fp32's time goes, the facts each variant's `why_not` reasons from: the encoder's share
    of a full pass, and the shares of one profiled batch spent in Linear-layer products,
    convolutions and all operators (the rest is Python and framework overhead)."""
    from .runtime import cpu_has_int8_dot, cpu_has_native_bf16

    facts: dict[str, Any] = {
        "int8_dot": cpu_has_int8_dot(),
        "native_bf16": cpu_has_native_bf16(),
        "beams": decode.num_beams,
    }
    model = getattr(runner, "model", None)
    if model is None:
        return facts
    on_cuda = runner.device.type == "cuda"
    with torch.inference_mode():
        start = time.perf_counter()
        for batch in batches:
            model.encoder(pixel_values=batch.to(runner.device))
        if on_cuda:
            torch.cuda.synchronize(runner.device)
        facts["encoder_share"] = min(1.0, (time.perf_counter() - start) / seconds)
        if on_cuda:  # kernels run asynchronously: host-side operator times say nothing of GPU time
            return facts
        activities = [torch.profiler.ProfilerActivity.CPU]
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            runner.generate_batch(batches[0], decode)
            wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    own = {e.key: e.self_cpu_time_total for e in events}
    facts["linear_share"] = min(1.0, sum(own.get(k, 0) for k in LINEAR_OPS) / wall_us)
    facts["conv_share"] = min(1.0, sum(own.get(k, 0) for k in CONV_OPS) / wall_us)
    facts["op_share"] = min(1.0, sum(own.values()) / wall_us)
    return facts


def _fresh_process_context() -> multiprocessing.context.BaseContext:
    """Where each variant's process comes from: a fork server that has imported torch and
    Transformers once (a new process then starts in well under a second instead of ~5 s of
    imports on two cores; nothing else is shared, and the server never runs a model, so no
    thread pool or compile cache crosses over), or plain spawn where fork servers do not exist."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def export_shared_graphs(job: dict[str, Any]) -> dict[str, str]:
    """The graphs of job["names"] (variants stored as graphs, sharing one module's export) of the
    baseline, written under job["out"] (in a process of their own)."""
    import importlib

    bundle = load_bundle(job["model"])
    module = importlib.import_module(job["module"])
    folders = module.export_shared(
        bundle, OptimizeConfig(**job["optimize"]), Path(job["out"]), set(job["names"])
    )
    return {name: str(folder) for name, folder in folders.items()}


def _run_isolated(
    job: dict[str, Any], isolate: bool, fn: Callable[[dict[str, Any]], Any] = measure_variant
) -> Any:
    if not isolate:
        return fn(job)
    with ProcessPoolExecutor(max_workers=1, mp_context=_fresh_process_context()) as pool:
        return pool.submit(fn, job).result()


@dataclass
class BenchmarkResult:
    rows: list[Row]
    n: int
    environment: dict[str, Any]
    skipped: dict[str, str]
    files: dict[str, Path]


def benchmark(
    model_path: str,
    cfg: Config,
    specs: list[str],
    out: Path,
    settings: Settings | None = None,
    isolate: bool = True,
    progress: Any = None,
) -> BenchmarkResult:
    """Benchmark the baseline and each variant on `cfg.data.split`; write md/csv/json/png to `out`."""
    settings = settings or Settings()
    samples = read_dataset(cfg.data).split(cfg.data.split)
    if not samples:
        raise UserError(f"split '{cfg.data.split}' is empty for this dataset (set data.split)")
    # Images that pass the header check but do not decode (e.g. truncated) are left out, and said so.
    _, bad = readable_images([s.image for s in samples])
    left_out = {image: reason for image, reason in bad}
    samples = [s for s in samples if s.image not in left_out]
    if not samples:
        raise UserError(f"no image of split '{cfg.data.split}' decodes (e.g. {bad[0][0]}: {bad[0][1]})")
    bundle = load_bundle(model_path)
    if variant_of(bundle) != BASELINE:
        raise UserError(
            f"MODEL must be the fp32 checkpoint (the baseline), not a {variant_of(bundle)} artifact"
        )
    device = pick_device(settings.device)
    parsed = [VariantSpec.parse(s) for s in specs if s.strip()]
    skipped = {}
    runnable = [VariantSpec(BASELINE, BASELINE)]
    for spec in parsed:
        variant = get_variant(spec.name)
        reason = variant.unavailable(device) or variant.cannot_decode(cfg.eval)
        if reason:
            skipped[spec.label] = reason
        else:
            runnable.append(spec)
    out.mkdir(parents=True, exist_ok=True)
    budget, _ = decoding_budget(bundle, [s.text for s in samples])  # within the decoder positions
    with tempfile.TemporaryDirectory() as tmp:
        # The same pixels for everyone: preprocess once with the baseline's processor.
        dataset = LineDataset(samples, bundle.image_processor, bundle.tokenizer, with_labels=False)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=collate)
        pixels = torch.cat([b["pixel_values"] for b in loader])
        pixels_path = Path(tmp) / "pixels.pt"
        torch.save(pixels, pixels_path)
        # Variants stored as graphs (onnx, onnx-int8) share one export, made in a process of its
        # own before any is measured, so no row's time or peak memory includes exporting.
        shared: dict[str, set[str]] = {}
        for spec in runnable:
            variant = get_variant(spec.name)
            if variant.stored == "graphs" and not spec.artifact:
                shared.setdefault(f"trocr_tune.optimize.{variant.module}", set()).add(spec.name)
        shared_graphs: dict[str, str] = {}
        for module, names in shared.items():
            export_job = {
                "model": model_path,
                "optimize": asdict(cfg.optimize),
                "out": tmp,
                "module": module,
                "names": sorted(names),
            }
            shared_graphs.update(_run_isolated(export_job, isolate, export_shared_graphs))
        rows = []
        facts: dict[str, Any] = {}
        baseline_job: dict[str, Any] | None = None
        for spec in runnable:
            if progress:
                progress(spec.label)
            job = {
                "spec": asdict(spec),
                "model": model_path,
                "pixels": str(pixels_path),
                "settings": asdict(settings),
                "optimize": asdict(cfg.optimize),
                "eval": config_to_dict(cfg.eval),
                "budget": budget,
                "shared_graphs": shared_graphs,
            }
            result = _run_isolated(job, isolate)
            baseline_job = baseline_job or job  # runnable[0] is fp32
            predictions = [Prediction(t, c) for t, c in result["predictions"]]
            report = score_predictions(samples, predictions, cfg.eval, statistics.median(result["times"]))
            if result["facts"] is not None:
                facts = result["facts"]
            rows.append(
                Row(
                    spec.label,
                    spec.name,
                    report.metrics.as_dict(),
                    result["times"],
                    result["latency_ms"],
                    result["warmup_seconds"],
                    result["size_bytes"],
                    result["peak_rss_bytes"],
                    result["train_seconds_per_epoch"],
                    {**result["notes"], "threads": result["threads"]},
                    [p.text for p in predictions],
                )
            )
        recheck = None
        if len(rows) > 1 and baseline_job is not None:
            # fp32 once more, last: a machine whose speed moved during the run moves the ratios too.
            if progress:
                progress(f"{BASELINE} (timed again)")
            again = _run_isolated({**baseline_job, "times_only": True}, isolate)["times"]
            recheck = {"seconds_before": rows[0].seconds, "seconds_after": statistics.median(again)}
    environment = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": rows[0].notes.get("threads"),
        "torch": torch.__version__,
        "lines": len(samples),
        "split": cfg.data.split,
        "batch_size": settings.batch_size,
        "timed_runs": settings.runs,
        "warmup_runs": settings.warmup,
        "latency_lines": min(settings.latency_lines, len(samples)),
        "generation": {"num_beams": cfg.eval.num_beams, "max_new_tokens": budget},
        "metric_normalisation": {
            "unicode_form": cfg.eval.metric_unicode_form,
            "collapse_whitespace": cfg.eval.metric_collapse_whitespace,
        },
        "isolated_processes": isolate,
        "left_out": left_out,  # image -> why it was not benchmarked
        "baseline_profile": facts,  # where fp32's time goes (the "does it pay?" reasons)
        "pays_at": settings.pays_at,
        "parity_cer": settings.parity_cer,
        "baseline_recheck": recheck,  # fp32's median seconds before and after the variants
    }
    outcome = BenchmarkResult(rows, len(samples), environment, skipped, {})
    outcome.files = write_outputs(outcome, out)
    save_config(cfg, out / "config.yaml")
    return outcome


RATIO_KEYS = ("lines_per_second", "latency_p50_ms", "size_mb", "peak_rss_mb", "cer", "mean_similarity")


def table(result: BenchmarkResult) -> list[dict[str, Any]]:
    """One dict per variant: its figures and, for each key in RATIO_KEYS, its ratio to the baseline."""
    base = result.rows[0].summary(result.n)
    reference = result.rows[0].texts
    out = []
    for row in result.rows:
        s = row.summary(result.n)
        record: dict[str, Any] = {"variant": row.label, **s}
        same = sum(a == b for a, b in zip(row.texts, reference, strict=False))
        record["same_text"] = same / len(reference) if reference and row.texts else None
        for key in RATIO_KEYS:
            record[f"{key}_ratio"] = _ratio(s[key], base[key])
        record["warmup_seconds"] = row.warmup_seconds
        record["notes"] = row.notes
        out.append(record)
    return out


def verdicts(result: BenchmarkResult) -> list[tuple[str, bool, str]]:
    """(variant, pays?, one sentence) for each variant: it pays when it reads at least `pays_at` x
    fp32's lines/s with CER within `parity_cer` of fp32's; otherwise the sentence says why not,
    from the variant's own reasoning over where fp32's time went (the baseline profile)."""
    env = result.environment
    pays_at, parity = env["pays_at"], env["parity_cer"]
    facts = env.get("baseline_profile") or {}
    recheck = env.get("baseline_recheck")
    rows = table(result)
    out = []
    for record, row in zip(rows[1:], result.rows[1:], strict=True):
        speed, delta = record["lines_per_second_ratio"], record["cer"] - rows[0]["cer"]
        same = record["same_text"]
        measured = f"{_fmt(speed)}x lines/s, CER {delta:+.4f}" + (
            f", {same:.0%} of lines read as fp32 reads them" if same is not None else ""
        )
        at_parity = abs(delta) <= parity
        unsettled = ""
        if speed is not None and recheck and at_parity:
            again = recheck["seconds_after"] / row.seconds
            if (again >= pays_at) != (speed >= pays_at):
                unsettled = (
                    f" (not settled: against fp32 timed again after the variants it reads {again:.2f}x; "
                    "the machine's speed moved during the run)"
                )
        if speed is not None and speed >= pays_at and at_parity:
            out.append((record["variant"], True, f"pays: {measured}{unsettled}"))
            continue
        reasons = []
        if not at_parity:
            reasons.append(f"its CER differs from fp32's by more than {parity}")
        if speed is None or speed < pays_at:
            why = (
                get_variant(row.variant).why_not(facts)
                if {"linear_share", "op_share"} <= set(facts)
                else "operator time shares are profiled on CPU tables only"
            )
            reasons.append(f"slower than {pays_at}x" + (f": {why}" if why else ""))
        out.append(
            (record["variant"], False, f"does not pay ({measured}): " + "; ".join(reasons) + unsettled)
        )
    return out


def _ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline; 1.0 when both are zero (e.g. CER 0 vs 0), inf when only the baseline is."""
    if value is None or baseline is None:
        return None
    if baseline == 0:
        return 1.0 if value == 0 else float("inf")
    return value / baseline


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return f"{value:.{digits}f}"


COLUMNS = (
    "| variant | CER | WER | mean sim. | exact | same text as fp32 | test time s (spread) | lines/s "
    "| latency p50 / p95 ms (batch 1) | size MB | peak RSS MB | train s/epoch |"
)


def _with_ratio(r: dict[str, Any], text: str, key: str) -> str:
    """`text` followed by the row's ratio to the baseline for `key` (the baseline row shows none)."""
    return text if r["variant"] == BASELINE else f"{text} ({_fmt(r[f'{key}_ratio'])}x)"


def _markdown_row(r: dict[str, Any]) -> str:
    cells = [
        r["variant"],
        _with_ratio(r, _fmt(r["cer"], 4), "cer"),
        _fmt(r["wer"], 4),
        _fmt(r["mean_similarity"], 4),
        _fmt(r["exact_match"], 3),
        "-" if r["same_text"] is None else f"{r['same_text']:.1%}",
        f"{_fmt(r['test_seconds'], 3)} ({_fmt(r['test_seconds_spread'], 3)})",
        _with_ratio(r, _fmt(r["lines_per_second"], 1), "lines_per_second"),
        _with_ratio(r, f"{_fmt(r['latency_p50_ms'], 1)} / {_fmt(r['latency_p95_ms'], 1)}", "latency_p50_ms"),
        _with_ratio(r, _fmt(r["size_mb"], 2), "size_mb"),
        _with_ratio(r, _fmt(r["peak_rss_mb"], 0), "peak_rss_mb"),
        _fmt(r["train_seconds_per_epoch"], 1),
    ]
    return "| " + " | ".join(cells) + " |"


def markdown(result: BenchmarkResult) -> str:
    env = result.environment
    rows = table(result)
    lines = [
        f"Device: **{env['device']}** ({env['device_name']}, {env['threads']} threads, "
        f"torch {env['torch']}); {env['lines']} lines of the {env['split']} split, "
        f"batch {env['batch_size']}, "
        f"{env['generation']['num_beams']} beam(s); median of {env['timed_runs']} timed runs after "
        f"{env['warmup_runs']} warm-up run(s); latency over {env['latency_lines']} lines at batch 1. "
        "Ratios (x) are to fp32 measured in the same run.",
        "",
        COLUMNS,
        "|" + "---|" * COLUMNS.count(" | ") + "---|",
        *(_markdown_row(r) for r in rows),
        "\ntrain s/epoch: the training that produced the weights the variant runs (the fine-tune for "
        "pruned artifacts fine-tuned by `optimize --finetune`, otherwise the fp32 model's own training).",
    ]
    facts = env.get("baseline_profile") or {}
    if "op_share" in facts:
        lines.append(
            f"\nWhere fp32's time goes: encoder {facts['encoder_share']:.0%} of a full pass; in one "
            f"profiled batch, Linear-layer products {facts['linear_share']:.0%}, convolutions "
            f"{facts['conv_share']:.0%}, all operators {facts['op_share']:.0%} (the rest is Python and "
            "framework overhead). This CPU has "
            f"{'' if facts['native_bf16'] else 'no '}native bf16 and {'' if facts['int8_dot'] else 'no '}"
            "VNNI/AMX int8 instructions."
        )
    recheck = env.get("baseline_recheck")
    if recheck:
        before, after = recheck["seconds_before"], recheck["seconds_after"]
        lines.append(
            f"\nfp32 timed again after the variants: {before:.3f} s -> {after:.3f} s "
            f"({after / before - 1:+.0%}); ratios within that of a threshold are not settled."
        )
    if len(rows) > 1:
        lines.append(
            f"\nDoes it pay? (>= {env['pays_at']}x fp32's lines/s with CER within "
            f"{env['parity_cer']} of fp32's)"
        )
        lines += [f"- {label}: {text}." for label, _, text in verdicts(result)]
    lines += [f"\nSkipped {label}: {reason}." for label, reason in result.skipped.items()]
    left_out = env.get("left_out") or {}
    if left_out:
        first, why = next(iter(left_out.items()))
        lines.append(
            f"\n{len(left_out)} lines of the split left out: their images do not decode "
            f"(e.g. {first}: {why})."
        )
    for r in rows:
        c = r["notes"].get("compile")
        if c:
            lines.append(
                f"\n{r['variant']}: {sum(c['graphs'].values())} compiled graphs, {sum(c['calls'].values())} "
                f"calls into them (encoder {c['calls'].get('encoder', 0)}, "
                f"decoder {c['calls'].get('decoder', 0)}), "
                f"{c['graph_breaks']} graph breaks; compile time is in the excluded warm-up "
                f"({_fmt(r['warmup_seconds'], 1)} s)."
            )
    return "\n".join(lines) + "\n"


def write_outputs(result: BenchmarkResult, out: Path) -> dict[str, Path]:
    import csv

    rows = table(result)
    files = {name: out / f"benchmark.{name}" for name in ("md", "csv", "json", "png")}
    atomic_write_text(files["md"], markdown(result))
    columns = [k for k in rows[0] if k != "notes"]
    with atomic_open(files["csv"], newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    payload = {
        "environment": result.environment,
        "rows": rows,
        "verdicts": [{"variant": v, "pays": pays, "why": text} for v, pays, text in verdicts(result)],
        "runs": [{"variant": r.label, "times": r.times, "latency_ms": r.latency_ms} for r in result.rows],
        "skipped": result.skipped,
    }
    atomic_write_text(files["json"], json.dumps(payload, indent=2, default=str))
    plot(rows, result.environment, files["png"])
    return files


def plot(rows: list[dict[str, Any]], environment: dict[str, Any], path: Path) -> None:
    """Accuracy (CER, lower is better) against throughput (lines/s), one labelled point per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        baseline = r["variant"] == BASELINE
        ax.scatter(r["lines_per_second"], r["cer"], s=80 if baseline else 45, marker="*" if baseline else "o")
        ax.annotate(
            r["variant"],
            (r["lines_per_second"], r["cer"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=8,
        )
    ax.set_xlabel("lines per second (higher is better)")
    ax.set_ylabel("CER (lower is better)")
    ax.set_title(
        f"{environment['device']}: {environment['lines']} lines, batch {environment['batch_size']}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
