"""The pretraining set of a base model: real lines of the training hands + scan-style synthetic lines.

The TrOCR recipe is pretraining on synthetic lines, then fine-tuning on real ones. On two CPU cores
and without a hub, a few thousand real lines of *other* hands mixed into the synthetic ones are
what makes the base transfer to real scans. Only each real corpus's training split is trained on;
its validation split becomes the pretraining validation set (checkpoints are chosen for real
transfer) and its test split is never used, so the corpora's held-out hands stay unseen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import UserError
from ..files import atomic_open
from .export import save_line_image
from .reader import read_dataset
from .synth_text import load_corpus

# What the synthetic half draws: the real transcriptions and phrases (long lines), names on forms,
# dates, amounts and loose words (short fields).
PRETRAIN_KINDS: dict[str, float] = {
    "corpus": 0.55,
    "name": 0.2,
    "date": 0.08,
    "amount": 0.07,
    "word_es": 0.05,
    "word_en": 0.05,
}
PRETRAIN_STYLES: dict[str, float] = {"form": 0.3, "letter": 0.35, "parchment": 0.2, "plain": 0.15}


@dataclass
class PretrainSetReport:
    """What build_pretraining_set wrote."""

    manifest: Path
    real: dict[str, dict[str, int]]  # source -> {train, validation, skipped_test} lines
    synth: dict[str, int]
    records: dict[str, int]  # split -> manifest rows
    notes: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        """The lines `data pretrain-set` prints."""
        rows = [
            f"  real {name}: " + ", ".join(f"{k} {v}" for k, v in c.items()) for name, c in self.real.items()
        ]
        if self.synth:
            rows.append("  synthetic: " + ", ".join(f"{k} {v}" for k, v in self.synth.items()))
        rows += [f"note: {note}" for note in self.notes]
        records = ", ".join(f"{k} {v}" for k, v in self.records.items())
        return [*rows, f"manifest: {self.manifest} ({records})"]


def build_pretraining_set(
    out_dir: str | Path,
    real: Sequence[tuple[str, DataConfig]],
    synth_lines: int,
    *,
    seed: int = 0,
    height: int = 48,
    real_repeat: int = 8,
    workers: int = 1,
    kinds: Mapping[str, float] | None = None,
    styles: Mapping[str, float] | None = None,
    font_dirs: Sequence[str | Path] = (),
    progress: Callable[[str], None] | None = None,
) -> PretrainSetReport:
    """Write out_dir/manifest.jsonl: `real_repeat` x each real corpus's training lines + synthetic lines.

    `real` names each corpus and its data config (layout, root, split settings as in its recipe).
    `font_dirs` add their font files to the installed handwriting fonts (synth.font_dir_fonts).
    """
    from .synth import synthesize

    if real_repeat < 1 or synth_lines < 0:
        raise UserError("need real_repeat >= 1 and synth_lines >= 0")
    out = Path(out_dir)
    (out / "real").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    texts: list[str] = []
    report_real: dict[str, dict[str, int]] = {}
    notes: list[str] = []
    for name, cfg in real:
        if progress:
            progress(f"reading {name} ({cfg.layout} at {cfg.root})")
        result = read_dataset(cfg)
        counts = {"train": 0, "validation": 0, "skipped_test": len(result.split("test"))}
        folder = out / "real" / name
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "validation"):
            for i, sample in enumerate(result.split(split)):
                rel = f"real/{name}/{split}-{i:05d}.png"
                save_line_image(sample.image, out / rel, height)
                group = (
                    sample.meta.get("manuscript") or sample.meta.get("writer") or sample.meta.get("page", "")
                )
                copies = real_repeat if split == "train" else 1
                for copy in range(copies):
                    rows.append(
                        {
                            "image": rel,
                            "text": sample.text,
                            "split": split,
                            "id": f"{name}-{split}-{i:05d}-{copy}",
                            "meta": {"source": name, "manuscript": f"{name}/{group}"},
                        }
                    )
                counts[split] += 1
                if split == "train":
                    texts.append(sample.text)
        report_real[name] = counts
        held = sorted({s.meta.get("manuscript", "") for s in result.split("test")} - {""})
        notes.append(
            f"{name}: test split not used ({counts['skipped_test']} lines; held out: {', '.join(held)})"
        )
    synth_counts: dict[str, int] = {}
    if synth_lines:
        corpus = out / "corpus.txt"
        phrases = [*load_corpus("phrases_es"), *load_corpus("phrases_en")]
        corpus.write_text("\n".join([*texts, *phrases]) + "\n", encoding="utf-8")
        if progress:
            progress(f"rendering {synth_lines} synthetic lines from {len(texts) + len(phrases)} texts")
        synth = synthesize(
            out / "synth",
            synth_lines,
            seed=seed,
            height=height,
            val_fraction=0.02,
            test_fraction=0.0,
            kinds=kinds or PRETRAIN_KINDS,
            digits_fraction=0.05,
            workers=workers,
            corpus=corpus,
            styles=styles or PRETRAIN_STYLES,
            font_dirs=font_dirs,
        )
        synth_counts = {k: v for k, v in synth.counts.items() if v}
        notes += synth.notes
        for line in synth.manifest.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            record["image"] = "synth/" + record["image"]
            record["meta"] = {**record.get("meta", {}), "source": "synthetic"}
            rows.append(record)
    manifest = out / "manifest.jsonl"
    with atomic_open(manifest) as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    split_counts: dict[str, int] = {}
    for row in rows:
        split_counts[row["split"]] = split_counts.get(row["split"], 0) + 1
    return PretrainSetReport(manifest, report_real, synth_counts, split_counts, notes)
