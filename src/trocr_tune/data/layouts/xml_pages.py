"""ALTO and PAGE XML layouts: page images whose text lines are cropped into the cache."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import DataConfig
from ...errors import UserError
from ..crops import Crop, CropCache, Region, box_from_polygon, parse_points
from ..records import DropLog, LineSample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".jp2", ".webp")
NOT_XML = "XML file unreadable or not ALTO/PAGE"
NO_PAGE_IMAGE = "page image not found"
DUPLICATE_PAGE = "XML file naming an image another XML file already gave"
LINE_TYPE = "line type not in data.line_types"
NO_GEOMETRY = "line without box or polygon"
CHOOSE = "set data.xml_glob (e.g. '**/*.chocomufin.xml') to choose one transcription per page"


@dataclass
class PageLine:
    id: str
    text: str
    region: Region
    types: tuple[str, ...] = ()  # tag labels of the line and its block/region
    # The TextLine element itself (ElementTree or lxml), for writers that fill its text in place.
    node: Any = field(default=None, repr=False, compare=False)


@dataclass
class ParsedPage:
    image_name: str | None
    lines: list[PageLine] = field(default_factory=list)
    skipped: int = 0  # lines without geometry

    def unique_id(self, given: str | None) -> str:
        """The line's XML id, made unique within the page (some exports repeat ids)."""
        used = {ln.id for ln in self.lines}
        base = given or f"line{len(self.lines)}"
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        return candidate


def _local(tag: Any) -> str:
    # lxml also yields comments and processing instructions, whose tag is not a string.
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(node: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in node if _local(c.tag) == name]


def _descendants(node: ET.Element, name: str) -> Iterator[ET.Element]:
    return (e for e in node.iter() if _local(e.tag) == name)


def parse_alto(root: ET.Element, xml: Path) -> ParsedPage:
    """Lines of an ALTO (v2-v4) document: CONTENT of its String elements, box from HPOS/VPOS/..."""
    unit = next((e.text for e in _descendants(root, "MeasurementUnit")), "pixel")
    if (unit or "pixel").strip() != "pixel":
        raise UserError(f"{xml}: MeasurementUnit {unit!r} is not supported (only pixel)")
    name = next((e.text for e in _descendants(root, "fileName") if e.text), None)
    tags = {t.get("ID"): t.get("LABEL") or "" for t in _descendants(root, "OtherTag")}
    page = ParsedPage(name.strip() if name else None)
    for block in _descendants(root, "TextBlock"):
        block_types = tuple(tags.get(r, r) for r in (block.get("TAGREFS") or "").split())
        for line in _children(block, "TextLine"):
            words = []
            for child in line:
                kind = _local(child.tag)
                if kind == "String":
                    words.append(child.get("CONTENT") or "")
                elif kind == "HYP" and words:
                    words[-1] += child.get("CONTENT") or ""
            polygon = None
            shape = next(_descendants(line, "Polygon"), None)
            if shape is not None and shape.get("POINTS"):
                polygon = parse_points(shape.get("POINTS", ""))
            try:
                x, y = float(line.get("HPOS", "")), float(line.get("VPOS", ""))
                box = (x, y, x + float(line.get("WIDTH", "")), y + float(line.get("HEIGHT", "")))
            except ValueError:
                if not polygon:
                    page.skipped += 1
                    continue
                box = box_from_polygon(polygon)
            line_types = tuple(tags.get(r, r) for r in (line.get("TAGREFS") or "").split())
            line_id = page.unique_id(line.get("ID"))
            page.lines.append(
                PageLine(
                    line_id,
                    " ".join(words),
                    Region(line_id, box, polygon),
                    line_types + block_types,
                    line,
                )
            )
    return page


def _page_text(line: ET.Element) -> str:
    """TextEquiv of the line (lowest @index first), else its words' TextEquivs joined by spaces."""
    equivs = sorted(_children(line, "TextEquiv"), key=lambda e: int(e.get("index", "0") or 0))
    for equiv in equivs:
        unicode = next(iter(_children(equiv, "Unicode")), None)
        if unicode is not None:
            return unicode.text or ""
    words = []
    for word in _children(line, "Word"):
        for equiv in _children(word, "TextEquiv"):
            unicode = next(iter(_children(equiv, "Unicode")), None)
            if unicode is not None and unicode.text:
                words.append(unicode.text)
                break
    return " ".join(words)


def _custom_type(node: ET.Element) -> str | None:
    """The `type` in a PAGE @custom attribute like 'structure {type:heading;}'."""
    custom = node.get("custom") or ""
    marker = custom.find("type:")
    if marker < 0:
        return None
    return custom[marker + 5 :].split(";")[0].split("}")[0].strip() or None


def parse_page(root: ET.Element, xml: Path) -> ParsedPage:
    """Lines of a PAGE (2013/2019) document: Coords polygon and TextEquiv/Unicode text."""
    page_el = next(_descendants(root, "Page"), None)
    if page_el is None:
        raise ValueError("no Page element")
    page = ParsedPage(page_el.get("imageFilename"))
    for region in _descendants(page_el, "TextRegion"):
        region_types = tuple(t for t in (region.get("type"), _custom_type(region)) if t)
        for line in _children(region, "TextLine"):
            coords = next(iter(_children(line, "Coords")), None)
            points = coords.get("points") if coords is not None else None
            if not points:
                page.skipped += 1
                continue
            polygon = parse_points(points)
            line_id = page.unique_id(line.get("id"))
            line_type = _custom_type(line)
            types = ((line_type,) if line_type else ()) + region_types
            page.lines.append(
                PageLine(
                    line_id,
                    _page_text(line),
                    Region(line_id, box_from_polygon(polygon), polygon),
                    types,
                    line,
                )
            )
    return page


def type_matches(types: tuple[str, ...], wanted: list[str]) -> bool:
    """A tag like 'DefaultLine:Handwritten' matches 'Handwritten', 'defaultline' or the full label."""
    want = {w.lower() for w in wanted}
    for t in types:
        label = t.lower()
        if label in want or any(part in want for part in label.replace("/", ":").split(":")):
            return True
    return False


def _find_image(xml: Path, name: str | None) -> Path | None:
    """The page image an XML file names, looked up beside it (never outside its folder)."""
    folder = os.path.abspath(xml.parent)
    candidates = []
    if name:
        named = os.path.normpath(os.path.join(folder, name.replace("\\", "/")))
        if os.path.commonpath([folder, named]) == folder:  # an absolute or ../ name is not followed
            candidates.append(Path(named))
        base_name = Path(name.replace("\\", "/")).name
        candidates.append(xml.parent / base_name)
        if xml.parent.name == "page":  # Transkribus exports: page/NAME.xml beside the images
            candidates.append(xml.parent.parent / base_name)
    stem = xml.name.split(".")[0]
    candidates += [xml.parent / f"{stem}{ext}" for ext in IMAGE_EXTENSIONS]
    return next((c for c in candidates if c.is_file()), None)


def _read_pages(
    cfg: DataConfig,
    root: Path,
    log: DropLog,
    kind: str,
    parse: Callable[[ET.Element, Path], ParsedPage],
) -> Iterator[LineSample]:
    files = [root] if root.is_file() else sorted(p for p in root.glob(cfg.xml_glob) if p.is_file())
    if not files:
        raise UserError(f"{root}: no XML files match data.xml_glob={cfg.xml_glob!r}")
    base = root.parent if root.is_file() else root
    cache = CropCache(cfg.cache_dir, cfg.crop_padding, cfg.polygon_mask)
    owner: dict[Path, Path] = {}  # page image -> the XML file that gave it first
    duplicates: list[str] = []
    clamped: list[str] = []
    pages = 0
    for xml in files:
        rel = xml.relative_to(base)
        try:
            doc = ET.parse(xml).getroot()
            if _local(doc.tag) != ("alto" if kind == "alto" else "PcGts"):
                log.drop(NOT_XML, str(rel))
                continue
            page = parse(doc, xml)
        except (ET.ParseError, ValueError) as exc:
            log.drop(NOT_XML, f"{rel} ({exc})")
            continue
        image = _find_image(xml, page.image_name)
        if image is None:
            log.drop(NO_PAGE_IMAGE, str(rel), count=max(1, len(page.lines)))
            continue
        if image in owner:
            first = owner[image].relative_to(base)
            if cfg.on_duplicate_page == "error":
                raise UserError(f"{rel} and {first} transcribe the same page image; {CHOOSE}")
            log.drop(DUPLICATE_PAGE, str(rel), count=len(page.lines))
            duplicates.append(f"{rel} (same image as {first})")
            continue
        owner[image] = xml
        pages += 1
        if page.skipped:
            log.drop(NO_GEOMETRY, str(rel), count=page.skipped)
        lines = page.lines
        if cfg.line_types:
            kept = [ln for ln in lines if type_matches(ln.types, cfg.line_types)]
            if len(kept) < len(lines):
                log.drop(LINE_TYPE, str(rel), count=len(lines) - len(kept))
            lines = kept
        if not lines:
            continue
        crops = cache.crops(image, [ln.region for ln in lines])
        page_rel = str(image.relative_to(base)) if image.is_relative_to(base) else str(image)
        manuscript = str(rel.parent)
        for ln in lines:
            source = f"{rel}#{ln.id}"
            crop = crops[ln.id]
            if not isinstance(crop, Crop):
                log.drop(crop, source)
                continue
            if crop.clamped:
                clamped.append(source)
            meta = {"page": page_rel, "manuscript": manuscript, "line_type": ";".join(ln.types)}
            yield LineSample(
                crop.path,
                ln.text,
                None,
                f"{rel.with_suffix('')}#{ln.id}",
                source,
                meta=meta,
                size=crop.size,
            )
    if duplicates:
        log.note(
            f"{len(duplicates)} XML files name a page image that an earlier file (sorted order) "
            f"already gave, e.g. {duplicates[0]}: their lines were skipped; {CHOOSE}"
        )
    if clamped:
        log.note(
            f"{len(clamped)} line boxes reach past their page image and were cut to it (kept), "
            f"e.g. {', '.join(clamped[:3])}"
        )
    log.note(
        f"{kind}: {pages} pages from {len(files)} XML files; crops: {cache.pages_cropped} pages cropped, "
        f"{cache.pages_cached} read from the cache ({cache.root})"
    )


def read_alto(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """ALTO pages: one sample per TextLine, text = its String CONTENTs joined by spaces."""
    yield from _read_pages(cfg, root, log, "alto", parse_alto)


def read_page(cfg: DataConfig, root: Path, log: DropLog) -> Iterator[LineSample]:
    """PAGE XML pages: one sample per TextLine, text = its TextEquiv/Unicode."""
    yield from _read_pages(cfg, root, log, "page", parse_page)
