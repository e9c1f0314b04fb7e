"""`data check`: per-split counts, drops by reason, alphabet, text and image-size percentiles."""

from __future__ import annotations

import json
import os
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import SPLITS, Config, save_config
from .reader import read_dataset
from .records import ALL, LineSample

PERCENTILES = (0, 5, 50, 95, 100)


@dataclass
class SplitStats:
    samples: int
    dropped: dict[str, int]
    alphabet: dict[str, int]
    text_length: dict[str, float]
    image_width: dict[str, float]
    image_height: dict[str, float]


@dataclass
class CheckReport:
    layout: str
    root: str
    seconds: float
    splits: dict[str, SplitStats]
    dropped_before_split: dict[str, int]
    drop_examples: dict[str, list[str]]
    notes: list[str] = field(default_factory=list)
    manifest: str | None = None
    # split (or "all" before splitting) -> reason -> the first sources dropped for it there
    drop_examples_by_split: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2)


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


def split_stats(samples: list[LineSample], dropped: Counter[str]) -> SplitStats:
    alphabet: Counter[str] = Counter()
    for s in samples:
        alphabet.update(s.text)
    sizes = [s.size for s in samples if s.size is not None]
    return SplitStats(
        samples=len(samples),
        dropped=dict(dropped.most_common()),
        alphabet=dict(sorted(alphabet.items(), key=lambda kv: (-kv[1], kv[0]))),
        text_length=_percentiles([len(s.text) for s in samples]),
        image_width=_percentiles([w for w, _ in sizes]),
        image_height=_percentiles([h for _, h in sizes]),
    )


def write_manifest(samples: list[LineSample], path: Path) -> None:
    """JSONL with image (absolute path, readable from anywhere), text, split, id, source, meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for s in samples:
            row: dict[str, object] = {
                "image": os.path.abspath(s.image),
                "text": s.text,
                "split": s.split,
                "id": s.id,
                "source": s.source,
            }
            if s.meta:
                row["meta"] = dict(s.meta)
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def check_dataset(cfg: Config, manifest: str | Path | None = None) -> CheckReport:
    """Read and clean the configured dataset; optionally write the cleaned records as a manifest."""
    start = time.perf_counter()
    result = read_dataset(cfg.data)
    by_split = {name: result.split(name) for name in SPLITS}
    report = CheckReport(
        layout=cfg.data.layout,
        root=str(cfg.data.root),
        seconds=0.0,
        splits={name: split_stats(samples, result.log.by_reason(name)) for name, samples in by_split.items()},
        dropped_before_split=dict(result.log.by_reason(ALL).most_common()),
        drop_examples=result.log.examples,
        notes=result.log.notes,
        drop_examples_by_split=result.log.split_examples,
    )
    if manifest is not None:
        out = Path(manifest)
        write_manifest(result.samples, out)
        save_config(cfg, out.with_name(out.stem + ".config.yaml"))
        report.manifest = str(out)
    report.seconds = time.perf_counter() - start
    return report


def print_check_report(report: CheckReport, console: object | None = None, alphabet_limit: int = 120) -> None:
    """Render the report as Rich tables (counts, drops by reason, percentiles, alphabet)."""
    from rich.console import Console
    from rich.table import Table

    con = console if isinstance(console, Console) else Console()
    con.print(f"[bold]{report.layout}[/bold] dataset at {report.root}  ({report.seconds:.1f} s)")
    counts = Table(title="samples per split")
    for col in (
        "split",
        "kept",
        "dropped",
        "text length min/p50/p95/max",
        "width p5/p50/p95",
        "height p5/p50/p95",
    ):
        counts.add_column(col, justify="left" if col == "split" else "right", overflow="fold")

    def fmt(values: dict[str, float], keys: tuple[str, ...]) -> str:
        return "/".join(f"{values[k]:.0f}" for k in keys) if values else "-"

    for name, st in report.splits.items():
        counts.add_row(
            name,
            str(st.samples),
            str(sum(st.dropped.values())),
            fmt(st.text_length, ("p0", "p50", "p95", "p100")),
            fmt(st.image_width, ("p5", "p50", "p95")),
            fmt(st.image_height, ("p5", "p50", "p95")),
        )
    con.print(counts)
    drops = Table(title="dropped samples by reason")
    for col in ("split", "reason", "count", "e.g."):
        drops.add_column(col, overflow="fold")
    rows = [(ALL, r, n) for r, n in report.dropped_before_split.items()]
    rows += [(name, r, n) for name, st in report.splits.items() for r, n in st.dropped.items()]
    for split, reason, n in rows:
        examples = report.drop_examples_by_split.get(split, {}).get(reason, [])
        drops.add_row(split, reason, str(n), ", ".join(examples[:2]))
    con.print(drops if rows else "nothing dropped")
    for name, st in report.splits.items():
        if st.alphabet:
            shown = list(st.alphabet.items())[:alphabet_limit]
            chars = "  ".join(f"{_visible(c)}:{n}" for c, n in shown)
            more = f"  (+{len(st.alphabet) - len(shown)} more)" if len(st.alphabet) > len(shown) else ""
            con.print(
                f"[bold]alphabet {name}[/bold] ({len(st.alphabet)} characters): {chars}{more}",
                highlight=False,
            )
    for note in report.notes:
        con.print(f"note: {note}", highlight=False)
    if report.manifest:
        con.print(f"manifest written: {report.manifest}")


def _visible(char: str) -> str:
    """A printable form of one character: space as ␠, combining marks on a dotted circle."""
    if char == " ":
        return "␠"
    if unicodedata.combining(char):
        return "◌" + char
    if not char.isprintable():
        return f"U+{ord(char):04X}"
    return char
