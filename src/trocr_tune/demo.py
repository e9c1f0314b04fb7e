"""`trocr-tune demo` / `make demo`: the whole mission offline, on a laptop CPU, in minutes.

Stages: data (the embedded real handwritten lines, or with `--synthetic` rendered font lines) ->
train (fine-tune the shipped base on the real lines, or a compact TrOCR from scratch on the
synthetic ones) under a wall-clock budget -> evaluate on the held-out hands (or fonts) -> prune-l1
with a short fine-tune -> benchmark the CPU variants -> report.md. Every stage records its completion in
`demo-state.json`; after Ctrl-C the same command continues where the run stopped (training
resumes from its last checkpoint).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .config import Config, load_config, save_config
from .errors import UserError

STATE_FILE = "demo-state.json"
# The embedded recipes (also shipped as configs/demo.yaml and configs/demo-synthetic.yaml).
RECIPES = {"real": "demo.yaml", "synthetic": "demo-synthetic.yaml"}
# Real handwritten lines shipped with the package (their README names source and licence).
REAL_LINES = "demo-lines/poilus"
DEMO_KINDS = {"name": 3.0, "date": 1.0, "amount": 1.0}


def recipe_text(data: str = "real") -> str:
    """The embedded recipe of the real-line demo (default) or of the synthetic-font demo."""
    return resources.files("trocr_tune.resources").joinpath(RECIPES[data]).read_text(encoding="utf-8")


def copy_real_lines(dest: Path) -> dict[str, Any]:
    """Copy the embedded real lines to `dest`; returns counts and hands (writers) per split."""
    import shutil

    src = resources.files("trocr_tune.resources").joinpath(REAL_LINES)
    with resources.as_file(src) as folder:
        shutil.copytree(folder, dest, dirs_exist_ok=True)
    counts: dict[str, int] = {}
    hands: dict[str, set[str]] = {}
    for line in (dest / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        counts[row["split"]] = counts.get(row["split"], 0) + 1
        hands.setdefault(row["split"], set()).add(row.get("manuscript", ""))
    return {"counts": counts, "hands": {k: sorted(v) for k, v in hands.items()}, "source": REAL_LINES}


# The least a demo is given (at most half its --minutes) when a slow set-up used them up (it then runs over).
MIN_DEMO_MINUTES = 3.0


@dataclass
class DemoSettings:
    """Knobs of the demo that are not model/training settings (those live in the recipe)."""

    minutes: float = 15.0
    out: Path = Path("demo-run")
    # "real": fine-tune the shipped base on the embedded real lines; "synthetic": train from
    # scratch on rendered font lines.
    data: str = "real"
    seed: int = 0
    lines: int | None = None  # synthetic lines; default scales with the budget
    workers: int | None = None
    # What the synthesizer writes: names like the Kaggle form set, dates, amounts (text kind ->
    # weight), plus a share of lines composed of real handwritten digits.
    kinds: dict[str, float] = field(default_factory=lambda: dict(DEMO_KINDS))
    digits_fraction: float = 0.1
    val_fraction: float = 0.01
    test_fraction: float = 0.05
    # Rendered a little larger than the demo's 16 px input: glyphs keep their shape when resized.
    synth_height: int = 24
    # When the clock of `minutes` started (epoch seconds; `make demo` passes its own start), so that
    # setting up the environment comes out of the budget; None = when the demo starts.
    started: float | None = None

    def setup_minutes(self) -> float:
        """Minutes between `started` and now: what the set-up before the demo took."""
        return 0.0 if self.started is None else max(0.0, (time.time() - self.started) / 60)

    def synth_lines(self) -> int:
        return self.lines or int(min(40_000, max(2_000, 2_700 * self.minutes)))

    def benchmark_lines(self) -> int:
        return 300 if self.minutes >= 10 else max(24, int(30 * self.minutes))


@dataclass
class DemoState:
    """Completed stages and their results, persisted after each stage."""

    settings: dict[str, Any] = field(default_factory=dict)
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    train_minutes: float | None = None  # fixed when training first starts, kept on resume

    @classmethod
    def load(cls, folder: Path) -> DemoState:
        path = folder / STATE_FILE
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            raw.get("settings", {}),
            raw.get("done", {}),
            raw.get("seconds", {}),
            raw.get("train_minutes"),
        )

    def save(self, folder: Path) -> None:
        (folder / STATE_FILE).write_text(json.dumps(asdict(self), indent=2, default=str), encoding="utf-8")


class Stages:
    """Prints `[stage i/n] name` lines with elapsed time against the budget."""

    NAMES = ("data", "train", "evaluate", "prune-l1", "benchmark", "report")

    def __init__(self, minutes: float, stream: Any = None) -> None:
        self.minutes = minutes
        self.start = time.perf_counter()
        self.stream = stream or sys.stderr

    def elapsed_minutes(self) -> float:
        return (time.perf_counter() - self.start) / 60

    def announce(self, name: str, detail: str = "") -> None:
        i = self.NAMES.index(name) + 1
        clock = f"({self.elapsed_minutes():.1f}/{round(self.minutes, 1):g} min)"
        print(
            f"[stage {i}/{len(self.NAMES)}] {name} {detail}  {clock}",
            file=self.stream,
            flush=True,
        )


def demo_config(settings: DemoSettings, manifest: Path, overrides: list[str]) -> Config:
    """The embedded recipe pointed at the demo's data and the run folder."""
    path = settings.out / "recipe.yaml"
    path.write_text(recipe_text(settings.data), encoding="utf-8")
    base = [
        "data.layout=manifest",
        f"data.root={manifest}",
        f"train.output_dir={settings.out / 'run'}",
        f"train.seed={settings.seed}",
        f"data.seed={settings.seed}",
    ]
    return load_config(path, [*base, *overrides])


def run_demo(settings: DemoSettings, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run (or continue) every stage; returns the final summary (also in report.md)."""
    from .benchmark import Settings as BenchSettings
    from .benchmark import benchmark, markdown
    from .data.reader import read_dataset
    from .data.synth import synthesize
    from .evaluate import evaluate_bundle, write_report
    from .model.loading import load_bundle
    from .optimize.run import optimize_model
    from .report import write_demo_report
    from .runtime import cpu_has_native_bf16
    from .train import train

    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    state = DemoState.load(out)
    if settings.data not in RECIPES:
        raise UserError(f"demo data {settings.data!r} is not one of: {', '.join(RECIPES)}")
    wanted: dict[str, Any] = {"minutes": settings.minutes, "seed": settings.seed, "data": settings.data}
    if settings.data == "synthetic":
        wanted["lines"] = settings.synth_lines()
    if state.settings and state.settings != wanted:
        raise UserError(f"{out} holds a demo run with other settings {state.settings}; use another --out")
    state.settings = wanted
    if setup := settings.setup_minutes():
        # The stages keep to what the set-up left; every reserve below scales with it.
        left = max(min(MIN_DEMO_MINUTES, settings.minutes / 2), settings.minutes - setup)
        print(
            f"set-up took {setup:.1f} min: the demo keeps to the {left:.1f} of "
            f"{settings.minutes:g} minutes left",
            file=sys.stderr,
            flush=True,
        )
        settings = replace(settings, minutes=left, started=None, lines=settings.synth_lines())
        state.seconds["set-up"] = setup * 60  # the report's total counts from the same start
    stages = Stages(settings.minutes)
    overrides = overrides or []

    def finish(name: str, result: dict[str, Any], started: float) -> None:
        state.done[name] = result
        state.seconds[name] = state.seconds.get(name, 0.0) + time.perf_counter() - started
        state.save(out)

    data_dir = out / "data"
    manifest = data_dir / "manifest.jsonl"
    cfg = demo_config(settings, manifest, overrides)
    save_config(cfg, out / "config.yaml")
    if "data" not in state.done and settings.data == "real":
        stages.announce("data", "real handwritten lines (Testaments de Poilus, CC-BY 4.0)")
        t = time.perf_counter()
        finish("data", copy_real_lines(data_dir), t)
    if "data" not in state.done:
        stages.announce("data", f"synthesize {settings.synth_lines()} lines")
        t = time.perf_counter()
        synth = synthesize(
            data_dir,
            settings.synth_lines(),
            seed=settings.seed,
            height=max(settings.synth_height, cfg.model.image_height),
            kinds=settings.kinds,
            digits_fraction=settings.digits_fraction,
            val_fraction=settings.val_fraction,
            test_fraction=settings.test_fraction,
            workers=settings.workers or _cores(),
        )
        finish(
            "data",
            {"counts": synth.counts, "fonts": synth.fonts, "lines_per_second": synth.lines_per_second},
            t,
        )
    if "train" not in state.done:
        if state.train_minutes is None:
            reserve = _post_training_minutes(settings.minutes)
            state.train_minutes = max(0.2, settings.minutes - stages.elapsed_minutes() - reserve)
            state.save(out)
        budget = state.train_minutes
        resume = (Path(cfg.train.output_dir) / "checkpoints").is_dir()
        stages.announce("train", f"budget {budget:.1f} min{' (resuming)' if resume else ''}")
        t = time.perf_counter()
        train_cfg = replace(cfg, train=replace(cfg.train, max_minutes=budget, resume=resume))
        result = train(train_cfg)
        if result.metrics["train"]["interrupted"]:
            state.seconds["train"] = state.seconds.get("train", 0.0) + time.perf_counter() - t
            state.save(out)
            raise UserError(f"interrupted: a checkpoint was saved; run the same command to continue ({out})")
        finish("train", {"metrics": result.metrics["train"], "model": str(result.model_dir)}, t)
    model_dir = Path(state.done["train"]["model"])

    test_cfg = replace(cfg, data=replace(cfg.data, split="test"))
    if "evaluate" not in state.done:
        held_out = "hands" if settings.data == "real" else "fonts"
        stages.announce("evaluate", f"held-out {held_out} (test split)")
        t = time.perf_counter()
        samples = read_dataset(test_cfg.data).split("test")
        evaluation = evaluate_bundle(load_bundle(model_dir), samples, cfg.eval)
        write_report(evaluation, out / "test", test_cfg)
        scores: dict[str, Any] = {"metrics": evaluation.summary(), "lines": len(samples)}
        if cfg.model.name_or_path:  # the starting point on the same lines: what fine-tuning bought
            zero = evaluate_bundle(load_bundle(cfg.model.name_or_path), samples, cfg.eval)
            write_report(zero, out / "test-base", test_cfg)
            scores["base_metrics"] = zero.summary()
        finish("evaluate", scores, t)

    variants_dir = out / "variants"
    if "prune-l1" not in state.done:
        stages.announce("prune-l1", f"{cfg.optimize.prune_amount:.0%} L1 pruning + short fine-tune")
        t = time.perf_counter()
        ft_minutes = max(0.1, 0.04 * settings.minutes)
        finetune = replace(
            cfg,
            train=replace(
                cfg.train,
                max_minutes=ft_minutes,
                resume=False,
                eval_steps=10**6,
                ctc_warmup=0.0,  # the decoder already reads: fine-tune both losses from the start
            ),
        )
        pruned = optimize_model(str(model_dir), "prune-l1", variants_dir / "prune-l1", cfg, finetune)
        finish(
            "prune-l1",
            {
                "sparsity": pruned["sparsity"]["overall"],
                "seconds_per_epoch": pruned["finetune"]["train"]["seconds_per_epoch"],
            },
            t,
        )

    if "benchmark" not in state.done:
        variants = ["int8-dynamic"]
        if cpu_has_native_bf16():
            variants.append("bf16")
        # Compiling takes ~0.5 minute on two cores: left out of short budgets, and out of this one
        # when the stages before ran late (a slow machine), so the demo keeps to its minutes.
        left = settings.minutes - stages.elapsed_minutes()
        compile_note = None
        if settings.minutes < 5:
            compile_note = "not run in this budget"
        elif left < COMPILE_MIN_LEFT:
            compile_note = f"not run: {left:.1f} of {round(settings.minutes, 1):g} minutes left"
        else:
            variants.append("compile-default")
        # benchmark skips them, saying why, without onnxruntime / openvino
        variants += ["onnx", "onnx-int8", "openvino"]
        variants.append(f"prune-l1={variants_dir / 'prune-l1'}")
        stages.announce("benchmark", ", ".join(["fp32", *(v.split("=")[0] for v in variants)]))
        t = time.perf_counter()
        # Every variant decodes greedily (with the recipe's CTC prefix scores) and without the
        # language model here: the table compares speed and parity, and beam search would multiply
        # each variant's decoding time alike (the test stage above uses the recipe's beams, so its
        # CER is the model's best reading).
        bench_cfg = replace(
            test_cfg,
            data=replace(test_cfg.data, limit=settings.benchmark_lines()),
            eval=replace(test_cfg.eval, num_beams=1, lm_fusion=0.0),
        )
        runs = 3 if settings.minutes >= 5 else 1
        table = benchmark(
            str(model_dir),
            bench_cfg,
            variants,
            out / "benchmark",
            BenchSettings(
                batch_size=32, runs=runs, warmup=1, latency_lines=16 if settings.minutes >= 5 else 4
            ),
        )
        skipped = {"compile-default": compile_note} if compile_note else {}
        finish("benchmark", {"table": markdown(table), "skipped": {**table.skipped, **skipped}}, t)

    stages.announce("report")
    t = time.perf_counter()
    summary = write_demo_report(out, state, cfg)
    finish("report", {"path": str(out / "report.md")}, t)
    return summary


# The benchmark with compile-default took 4.6 minutes on two cores in the real-line demo (155 s of
# compilation warm-up for the 32 x 512 base; a fresh-clone `make demo` at --minutes 13 then ended at
# 15.0 of 13 minutes); without it ~2 minutes. The synthetic demo's took up to 2.1.
COMPILE_MIN_LEFT = 5.5


def _post_training_minutes(minutes: float) -> float:
    """Time kept for the end of training, evaluation, pruning, benchmark and report.

    Measured on two cores at --minutes 12.5 (fresh-clone `make demo` runs): the final evaluation
    and save 0.2 min past the training budget, 8-beam evaluation 0.7, prune-l1 with its fine-tune
    0.7, the report a few seconds; the benchmark took 1.9-2.2 while each variant paid ~5 s of
    imports in a fresh process and onnx-int8 exported its own graphs, ~1.2 since (fork server, one
    shared export): ~3.0 minutes of 3.5 kept at 12.5.
    """
    return 0.9 if minutes < 3 else min(6.0, 1.0 + 0.2 * minutes)


def _cores() -> int:
    import os

    return os.cpu_count() or 1
