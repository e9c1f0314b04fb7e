"""Spanish Notary Collection: labelImg (Pascal VOC) region boxes + sentence JSON, aligned.

Box names like ``R38,Img18_Scope of deed`` are section classes, not transcriptions. The
sentences of a page are the records of ``Labeled Data.json`` with that rollo and image number,
in id order, each with class labels. Boxes are put in reading order (columns left to right, top
to bottom within a column) and aligned monotonically to the sentences, pairing only boxes and
sentences whose class labels agree. A pair is kept only when it is *confident*: it belongs to
every best alignment (no other equally good alignment pairs the box differently). Everything
else is reported as unpaired.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rapidfuzz import fuzz

from ...config import DataConfig
from ...errors import UserError
from ..crops import Crop, CropCache, Region
from ..records import DropLog, LineSample

BOX_NAME = re.compile(r"^\s*R(?P<rollo>\d+)\s*,\s*Img(?P<image>\d+)_(?P<label>.*)$", re.IGNORECASE)
# Words that qualify a section class rather than name it ("Scope of deed", "name of parties").
QUALIFIERS = {
    "of",
    "and",
    "the",
    "de",
    "y",
    "deed",
    "parties",
    "party",
    "name",
    "place",
    "residence",
}
LABEL_MATCH = 85.0  # rapidfuzz ratio above which two class words are the same class (Assets/Asset)
UNPAIRED_BOX = "box without a confidently aligned sentence"
UNPAIRED_SENTENCE = "sentence without a confidently aligned box"
DUPLICATE_BOX = "duplicate box (same class, IoU > 0.9)"
BAD_BOX = "box without coordinates"


@dataclass(frozen=True)
class Box:
    index: int  # position in the XML file
    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def words(self) -> frozenset[str]:
        return class_words(self.label.split("_")[0])


@dataclass(frozen=True)
class Sentence:
    id: str
    text: str
    labels: tuple[str, ...]

    @property
    def words(self) -> frozenset[str]:
        return class_words(" ".join(self.labels))


@dataclass
class Alignment:
    """Result of aligning one page: confident pairs and what stayed unpaired."""

    pairs: list[tuple[Box, Sentence]]
    unpaired_boxes: list[Box]
    unpaired_sentences: list[Sentence]
    duplicate_boxes: list[Box]


@lru_cache(maxsize=4096)
def class_words(label: str) -> frozenset[str]:
    words = re.findall(r"[a-záéíóúñ]+", label.lower())
    return frozenset(w for w in words if w not in QUALIFIERS and len(w) > 2)


def labels_agree(box: Box, sentence: Sentence) -> bool:
    return any(fuzz.ratio(a, b) >= LABEL_MATCH for a in box.words for b in sentence.words)


def _iou(a: Box, b: Box) -> float:
    w = min(a.xmax, b.xmax) - max(a.xmin, b.xmin)
    h = min(a.ymax, b.ymax) - max(a.ymin, b.ymin)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    area = lambda x: (x.xmax - x.xmin) * (x.ymax - x.ymin)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def reading_order(boxes: Sequence[Box]) -> list[Box]:
    """Columns (boxes overlapping horizontally by > half the narrower width) left to right,
    then top to bottom within each column; a margin note forms its own column."""
    parent = list(range(len(boxes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            b = boxes[j]
            overlap = min(a.xmax, b.xmax) - max(a.xmin, b.xmin)
            narrower = min(a.xmax - a.xmin, b.xmax - b.xmin)
            if narrower > 0 and overlap > 0.5 * narrower:
                parent[find(i)] = find(j)
    columns: dict[int, list[Box]] = {}
    for i, box in enumerate(boxes):
        columns.setdefault(find(i), []).append(box)
    ordered = sorted(columns.values(), key=lambda col: min(b.xmin for b in col))
    return [b for col in ordered for b in sorted(col, key=lambda b: (b.ymin, b.xmin))]


def _best(
    ok: list[list[bool]], forbidden: tuple[int, int] | None = None
) -> tuple[int, list[tuple[int, int]]]:
    """Longest monotone matching over compatible (box, sentence) pairs, and one optimum."""
    n, m = len(ok), len(ok[0]) if ok else 0
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            take = score[i + 1][j + 1] + 1 if ok[i][j] and (i, j) != forbidden else -1
            score[i][j] = max(score[i + 1][j], score[i][j + 1], take)
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if ok[i][j] and (i, j) != forbidden and score[i][j] == score[i + 1][j + 1] + 1:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif score[i][j] == score[i + 1][j]:
            i += 1
        else:
            j += 1
    return score[0][0] if n and m else 0, pairs


def align_page(boxes: Sequence[Box], sentences: Sequence[Sentence]) -> Alignment:
    """Align a page's boxes to its sentences; keep pairs that every best alignment contains."""
    unique: list[Box] = []
    duplicates: list[Box] = []
    for box in boxes:
        if any(box.label == u.label and _iou(box, u) > 0.9 for u in unique):
            duplicates.append(box)
        else:
            unique.append(box)
    ordered = reading_order(unique)
    ok = [[labels_agree(b, s) for s in sentences] for b in ordered]
    best, pairs = _best(ok)
    confident = [(i, j) for i, j in pairs if _best(ok, forbidden=(i, j))[0] < best]
    paired_boxes = {i for i, _ in confident}
    paired_sentences = {j for _, j in confident}
    return Alignment(
        pairs=[(ordered[i], sentences[j]) for i, j in confident],
        unpaired_boxes=[b for i, b in enumerate(ordered) if i not in paired_boxes],
        unpaired_sentences=[s for j, s in enumerate(sentences) if j not in paired_sentences],
        duplicate_boxes=duplicates,
    )


def _dataset_files(root: Path) -> tuple[Path, Path]:
    for base in (root, root / "dataset"):
        json_path, images = base / "Labeled Data.json", base / "Images"
        if json_path.is_file() and images.is_dir():
            return json_path, images
    raise UserError(
        f"{root}: expected 'Labeled Data.json' and Images/ (or dataset/...) (layout spanish-notary)"
    )


def _load_sentences(path: Path) -> dict[tuple[int, int], list[Sentence]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid UTF-8 JSON ({exc})") from None
    records = data.get("records", data) if isinstance(data, dict) else data
    pages: dict[tuple[int, int], list[tuple[int, Sentence]]] = {}
    for rec in records:
        try:
            key = (int(rec["rollo_number"]), int(rec["image_number"]))
            labels = tuple(rec.get("class_label") or ()) or tuple(rec.get("extended_class_label") or ())
            sentence = Sentence(str(rec["id"]), str(rec.get("content") or ""), labels)
            order = int(rec["id"]) if str(rec["id"]).isdigit() else len(pages.get(key, []))
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: record without rollo_number/image_number/id: {str(rec)[:80]}") from None
        pages.setdefault(key, []).append((order, sentence))
    return {k: [s for _, s in sorted(v, key=lambda t: t[0])] for k, v in pages.items()}


def _load_boxes(xml: Path) -> tuple[str | None, tuple[int, int] | None, list[Box], int]:
    doc = ET.parse(xml).getroot()
    filename = doc.findtext("filename")
    boxes, keys, bad = [], [], 0
    for i, obj in enumerate(doc.iter("object")):
        name = (obj.findtext("name") or "").strip()
        match = BOX_NAME.match(name)
        if match:
            keys.append((int(match["rollo"]), int(match["image"])))
        try:
            bb = obj.find("bndbox")
            coords = [float(bb.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            bad += 1
            continue
        boxes.append(Box(i, match["label"].strip() if match else name, *coords))
    page_key = max(set(keys), key=keys.count) if keys else None
    return filename, page_key, boxes, bad


def read_spanish_notary(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """One sample per confidently aligned (region box, sentence) pair; region crops are cached."""
    json_path, images = _dataset_files(root)
    sentences = _load_sentences(json_path)
    cache = CropCache(cfg.cache_dir, cfg.crop_padding, polygon_mask=False)
    pages_seen: set[tuple[int, int]] = set()
    for xml in sorted(images.glob("*.xml")):
        try:
            filename, key, boxes, bad = _load_boxes(xml)
        except ET.ParseError as exc:
            log.drop("box XML unreadable", f"{xml.name} ({exc})")
            continue
        if bad:
            log.drop(BAD_BOX, xml.name, count=bad)
        if key is None and xml.stem.isdigit():
            rollos = [k for k in sentences if k[1] == int(xml.stem)]
            key = rollos[0] if len(rollos) == 1 else None
        if key is None:
            log.drop(UNPAIRED_BOX, f"{xml.name} (no R<rollo>,Img<n> box names)", count=len(boxes))
            continue
        pages_seen.add(key)
        image = images / (filename or f"{xml.stem}.jpg")
        if not image.is_file():
            image = next((p for p in images.glob(f"{xml.stem}.*") if p.suffix.lower() != ".xml"), image)
        alignment = align_page(boxes, sentences.get(key, []))
        rollo, number = key
        for box in alignment.duplicate_boxes:
            log.drop(DUPLICATE_BOX, f"{xml.name}#box{box.index} '{box.label}'")
        for box in alignment.unpaired_boxes:
            log.drop(UNPAIRED_BOX, f"{xml.name}#box{box.index} '{box.label}'")
        for sentence in alignment.unpaired_sentences:
            log.drop(
                UNPAIRED_SENTENCE,
                f"{json_path.name}#id{sentence.id} ({'/'.join(sentence.labels)}, page {number})",
            )
        if not alignment.pairs:
            continue
        regions = [Region(f"box{b.index}", (b.xmin, b.ymin, b.xmax, b.ymax)) for b, _ in alignment.pairs]
        crops = (
            cache.crops(image, regions)
            if image.is_file()
            else {r.key: "page image not found" for r in regions}
        )
        for box, sentence in alignment.pairs:
            source = f"{xml.name}#box{box.index}"
            crop = crops[f"box{box.index}"]
            if not isinstance(crop, Crop):
                log.drop(crop, source)
                continue
            meta = {
                "page": str(number),
                "manuscript": f"R{rollo}",
                "box_class": box.label,
                "sentence_id": sentence.id,
            }
            yield LineSample(
                crop.path,
                sentence.text,
                None,
                f"R{rollo}_Img{number}_box{box.index}",
                source,
                meta=meta,
                size=crop.size,
            )
    elsewhere = sum(len(v) for k, v in sentences.items() if k not in pages_seen)
    if elsewhere:
        log.note(
            f"{elsewhere} sentences in {json_path.name} belong to pages with no box file here (not read)"
        )
