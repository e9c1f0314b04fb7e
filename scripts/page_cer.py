"""Page CER of `transcribe --format jsonl` output against hand-transcribed ALTO pages.

    python scripts/page_cer.py GOLD_DIR OUT/transcriptions.jsonl

Each page's reference is its gold lines' text in file order, the reading is its lines' text in
the order transcribe wrote them; both with white space collapsed to single spaces. `all` counts
every line read; `in-gold` only read lines whose box lies at least 25% inside the gold lines'
boxes (text the annotators left out, e.g. a clerk's note or a stamp, is not counted against
the reading); `matched` gives each such read line to the gold line it overlaps most and scores
every gold line against the lines given to it (left to right), so it counts merged, split, cut
and misread lines but not the order of blocks. Used for docs/transcribe.md's segmenter figures.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from rapidfuzz.distance import Levenshtein

from trocr_tune.data.layouts.xml_pages import parse_alto


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _area(a: list[float], b: tuple[float, float, float, float]) -> float:
    """Area of the intersection of two (x0, y0, x1, y1) boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _inside(box: list[float], golds: list[tuple[float, float, float, float]]) -> float:
    area = max(1e-9, (box[2] - box[0]) * (box[3] - box[1]))
    return sum(_area(box, g) for g in golds) / area


def _matched(texts: list[str], golds: list[tuple[float, float, float, float]], read: list[dict]) -> int:
    given: list[list[dict]] = [[] for _ in golds]
    for r in read:
        overlaps = [_area(r["box"], g) for g in golds]
        best = max(range(len(golds)), key=overlaps.__getitem__)
        given[best].append(r)
    return sum(
        Levenshtein.distance(
            _norm(text), _norm(" ".join(r["text"] for r in sorted(lines, key=lambda r: r["box"][0])))
        )
        for text, lines in zip(texts, given, strict=True)
    )


def main(gold_dir: Path, jsonl: Path) -> None:
    rows = [json.loads(line) for line in jsonl.open(encoding="utf-8")]
    totals = {"all": [0, 0], "in-gold": [0, 0], "matched": [0, 0]}
    for xml in sorted(gold_dir.glob("*.xml")):
        page = parse_alto(ET.parse(xml).getroot(), xml)
        reference = _norm(" ".join(line.text for line in page.lines))
        golds = [line.region.box for line in page.lines]
        stem = xml.name.split(".")[0]
        read = [r for r in rows if Path(r["page"]).name.split(".")[0] == stem]
        kept = {"all": read, "in-gold": [r for r in read if _inside(r["box"], golds) >= 0.25]}
        parts = []
        for name, lines in kept.items():
            errors = Levenshtein.distance(reference, _norm(" ".join(r["text"] for r in lines)))
            totals[name][0] += errors
            totals[name][1] += len(reference)
            parts.append(f"{name} {errors / max(1, len(reference)):.3f} ({len(lines)} lines)")
        errors = _matched([line.text for line in page.lines], golds, kept["in-gold"])
        chars = sum(len(_norm(line.text)) for line in page.lines)
        totals["matched"][0] += errors
        totals["matched"][1] += chars
        parts.append(f"matched {errors / max(1, chars):.3f}")
        print(f"{stem}: {len(page.lines)} gold lines; " + "; ".join(parts))
    print("page CER " + "; ".join(f"{k} {e / max(1, n):.4f}" for k, (e, n) in totals.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
