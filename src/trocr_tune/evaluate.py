"""`trocr-tune evaluate`: metrics, per-sample CSV, worst errors, character confusions, speed."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from .config import Config, EvalConfig, save_config
from .data.records import DropLog, LineSample
from .decoding import Prediction, pick_device, transcribe
from .decoding.settings import model_decoding
from .errors import UserError
from .files import atomic_open, atomic_write_text
from .metrics import MetricNormalizer, Metrics, compute_metrics, score_sample
from .model.loading import ModelBundle, decoding_budget
from .model.tokenizer import check_coverage
from .predict import readable_images

EMPTY = "∅"


@dataclass
class SampleResult:
    id: str
    image: str
    reference: str
    prediction: str
    cer: float
    similarity: float
    confidence: float


@dataclass
class EvalReport:
    metrics: Metrics
    samples: list[SampleResult]
    seconds: float
    lines_per_second: float
    confusions: list[tuple[str, str, int]] = field(default_factory=list)  # (reference, predicted, count)
    # Lines of the split that were not scored (dropped when read, or images that do not decode).
    unscored: DropLog = field(default_factory=DropLog)
    notes: list[str] = field(default_factory=list)

    def worst(self, n: int = 20) -> list[SampleResult]:
        return sorted(self.samples, key=lambda r: (-r.cer, r.id))[:n]

    def summary(self) -> dict[str, Any]:
        return {
            **self.metrics.as_dict(),
            "seconds": self.seconds,
            "lines_per_second": self.lines_per_second,
            "unscored": self.unscored.total(),
            "unscored_by_reason": dict(self.unscored.by_reason().most_common()),
            "notes": self.notes,
        }


def metric_normalizer(cfg: EvalConfig) -> MetricNormalizer:
    return MetricNormalizer(cfg.metric_unicode_form, cfg.metric_collapse_whitespace)


def confusion_table(pairs: Sequence[tuple[str, str]], top: int = 30) -> list[tuple[str, str, int]]:
    """Most frequent character edits (reference char -> predicted char; ∅ for insert/delete)."""
    counts: Counter[tuple[str, str]] = Counter()
    for pred, ref in pairs:
        for op in Levenshtein.editops(ref, pred):
            if op.tag == "replace":
                counts[(ref[op.src_pos], pred[op.dest_pos])] += 1
            elif op.tag == "delete":
                counts[(ref[op.src_pos], EMPTY)] += 1
            else:
                counts[(EMPTY, pred[op.dest_pos])] += 1
    return [(r, p, n) for (r, p), n in counts.most_common(top)]


def score_predictions(
    samples: Sequence[LineSample], predictions: Sequence[Prediction], cfg: EvalConfig, seconds: float
) -> EvalReport:
    """Metrics and per-sample results, all through the one metric normaliser."""
    norm = metric_normalizer(cfg)
    refs = [s.text for s in samples]
    preds = [p.text for p in predictions]
    metrics = compute_metrics(preds, refs, norm)
    results = []
    for s, p in zip(samples, predictions, strict=True):
        sc = score_sample(norm(p.text), norm(s.text))
        results.append(SampleResult(s.id, s.image, s.text, p.text, sc.cer, sc.similarity, p.confidence))
    confusions = confusion_table([(norm(p), norm(r)) for p, r in zip(preds, refs, strict=True)])
    return EvalReport(metrics, results, seconds, len(samples) / seconds if seconds > 0 else 0.0, confusions)


def evaluate_model(
    model: str,
    cfg: Config,
    device: str = "auto",
    num_workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Score `model` (a checkpoint or an `optimize` artifact) on cfg.data's cfg.data.split; the
    lines dropped when the split was read count as unscored."""
    from .data.reader import read_dataset
    from .data.splits import SPLIT_ONE_BY_ONE
    from .optimize import load_runner

    result = read_dataset(cfg.data)
    samples = result.split(cfg.data.split)
    if not samples:
        raise UserError(f"split '{cfg.data.split}' is empty for this dataset (set data.split)")
    bundle, runner = load_runner(model, pick_device(device), cfg.optimize)
    # The model's recorded decoding fills the keys not given; cfg then says how it was read.
    cfg.eval, note = model_decoding(cfg.eval, bundle, runner)
    unscored = result.log.only(cfg.data.split)
    report = evaluate_bundle(
        bundle, samples, cfg.eval, device, num_workers, runner=runner, unscored=unscored, progress=progress
    )
    # A score on hands the model may have trained on says so.
    shared = [n for n in result.log.notes if n.startswith(SPLIT_ONE_BY_ONE)]
    report.notes[:0] = ([note] if note else []) + shared
    return report


def evaluate_bundle(
    bundle: ModelBundle,
    samples: Sequence[LineSample],
    cfg: EvalConfig,
    device: str = "auto",
    num_workers: int = 0,
    runner: Any = None,
    unscored: DropLog | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """Transcribe `samples` (greedy or beam search, never teacher forcing) and score them.

    Lines whose image does not decode are left out and counted in the report's `unscored`,
    beside what `unscored` (e.g. the split's drops when it was read) already holds.
    """
    unscored = unscored if unscored is not None else DropLog()
    by_image = {s.image: s for s in samples}
    _, bad = readable_images([s.image for s in samples])
    for image, reason in bad:
        unscored.drop(reason, by_image[image].source, by_image[image].split)
    broken = {image for image, _ in bad}
    samples = [s for s in samples if s.image not in broken]
    if not samples:
        raise UserError(f"no line could be scored: {unscored.describe() or 'the split is empty'}")
    texts = [s.text for s in samples]
    notes = []
    # Labels longer than the checkpoint's budget must still be reachable, up to what it can emit.
    budget, cut = decoding_budget(bundle, texts)
    if cut:
        notes.append(
            f"{cut} references are longer than the model can emit ({budget} tokens): "
            "their predictions stop there"
        )
    coverage = check_coverage(bundle.tokenizer, texts)
    if not coverage.ok:
        notes.append(f"the tokenizer cannot encode {coverage.describe()}: they always count as errors")
    predictions, seconds = transcribe(
        bundle,
        [s.image for s in samples],
        cfg,
        pick_device(device),
        num_workers,
        budget,
        progress=progress,
        runner=runner,
    )
    report = score_predictions(samples, predictions, cfg, seconds)
    report.unscored, report.notes = unscored, notes
    return report


def write_report(report: EvalReport, out: Path, config: Config | None = None) -> dict[str, Path]:
    """metrics.json, predictions.csv, worst.csv, confusions.csv (and config.yaml) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": out / "metrics.json",
        "predictions": out / "predictions.csv",
        "worst": out / "worst.csv",
        "confusions": out / "confusions.csv",
    }
    atomic_write_text(paths["metrics"], json.dumps(report.summary(), indent=2, ensure_ascii=False))
    for key, rows in (("predictions", report.samples), ("worst", report.worst())):
        with atomic_open(paths[key], newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(SampleResult.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    with atomic_open(paths["confusions"], newline="") as fh:
        table = csv.writer(fh)
        table.writerow(["reference", "predicted", "count"])
        table.writerows(report.confusions)
    if config is not None:
        paths["config"] = save_config(config, out / "config.yaml")
    return paths


def print_report(report: EvalReport, console: Any = None) -> None:
    """Metrics, the worst 20 lines and the top character confusions as Rich tables."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    m = report.metrics
    table = Table(title=f"{m.n} lines, {report.seconds:.1f} s, {report.lines_per_second:.1f} lines/s")
    for col in ("metric", "value", "case-insensitive"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for name in ("cer", "wer", "mean_cer", "mean_similarity", "exact_match", "similarity_above_08"):
        table.add_row(name, f"{getattr(m, name):.4f}", f"{getattr(m, name + '_ci'):.4f}")
    con.print(table)
    worst = Table(title="worst 20 lines (by CER)")
    for col in ("id", "CER", "reference", "prediction"):
        worst.add_column(col, overflow="fold")
    for r in report.worst():
        worst.add_row(r.id, f"{r.cer:.2f}", r.reference, r.prediction)
    con.print(worst)
    if report.confusions:
        conf = "  ".join(f"{r}→{p}:{n}" for r, p, n in report.confusions[:20])
        con.print(f"[bold]top character confusions[/bold] (reference→predicted): {conf}", highlight=False)
    if report.unscored.total():
        con.print(
            f"not scored: {report.unscored.total()} lines of the split: {report.unscored.describe()}",
            highlight=False,
        )
    for note in report.notes:
        con.print(f"note: {note}", highlight=False)
