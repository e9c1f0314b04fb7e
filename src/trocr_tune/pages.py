"""ALTO/PAGE in -> every TextLine read by the model -> the same document out, IDs kept.

Lines are found and cropped exactly as the `alto` and `page` training layouts do (their parsers,
data.line_types, data.crop_padding, data.polygon_mask and the same crop cache), decoded in
batches by decoding.transcribe, and written back into the parsed document. Only text and its
confidence change; lxml keeps namespaces, prefixes, attribute order, comments and the XML
declaration. docs/transcribe.md lists what is kept and what is replaced.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lxml import etree
from PIL import Image, ImageOps

from .config import Config, DataConfig
from .data.crops import PAGE_IMAGE_UNREADABLE, Crop, CropCache
from .data.images import UNREADABLE_IMAGE, ImageProblem, decoded, open_image, to_rgb
from .data.layouts.xml_pages import (
    IMAGE_EXTENSIONS,
    NO_GEOMETRY,
    NO_PAGE_IMAGE,
    PageLine,
    ParsedPage,
    _find_image,
    parse_alto,
    parse_page,
    type_matches,
)
from .data.records import DropLog
from .distributed import Ranks
from .errors import UserError
from .files import atomic_write_bytes

if TYPE_CHECKING:
    from .decoding import Prediction

FORMATS = ("alto", "page", "txt", "jsonl")
SCAN = "scan"  # a planned input that is a page image, segmented before it is read
NO_LINES_FOUND = "page image where the segmenter found no text line"
EXIF_ORIENTATION = 0x0112  # the tag that turns a phone photo for display
PAGE_FILES = (*IMAGE_EXTENSIONS, ".pdf")
PDF_DPI = 300  # PDF pages without a scanned image are rendered at this resolution ...
PDF_DPI_RANGE = (72, 600)  # ... and scanned ones (an image over half the page) at the image's own
PDF_MAX_SIDE = 10_000  # px: the longest side a rendered page may have
ALTO_NAMESPACE = "http://www.loc.gov/standards/alto/"  # + ns-v2#, ns-v3#, ns-v4#
PAGE_NAMESPACE = "http://schema.primaresearch.org/PAGE/gts/pagecontent/"  # + 2013-07-15, 2019-07-15
JSONL_NAME = "transcriptions.jsonl"
XML_UNREADABLE = "XML file unreadable"
NOT_PIXELS = "ALTO coordinates not in pixels"
# Lines decoded together before their pages are written (bounds the documents held in memory).
LINES_PER_FLUSH = 512

# Text of an ALTO TextLine that the reading replaces, and the String attributes and children that
# describe the old text only (per-character confidences, hyphenation, alternatives, glyphs).
ALTO_TEXT_CHILDREN = ("String", "SP", "HYP")
ALTO_STALE_ATTRIBUTES = ("CC", "SUBS_CONTENT", "SUBS_TYPE")
ALTO_STALE_CHILDREN = ("ALTERNATIVE", "Glyph")
# PAGE elements that follow TextEquiv inside a TextLine / Word (schema order).
PAGE_AFTER_TEXT_EQUIV = ("TextStyle", "UserDefined", "Labels")
_BLANK = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")  # a byte-order mark, then white space
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass
class TranscribeOptions:
    """Where and how `transcribe_pages` writes its results."""

    out: Path | None = None  # output folder (inputs' relative paths are kept below it)
    fmt: str | None = None  # alto / page / txt / jsonl; None = each document in its own format
    in_place: bool = False  # overwrite the input XML files (alto / page output only)
    num_workers: int = 0  # DataLoader workers that decode the line crops
    segment: bool = False  # inputs are bare page images: find their lines (segment.py), write ALTO


@dataclass
class LineReading:
    """One transcribed line, as written to the JSONL output."""

    page: str
    line: str
    text: str
    confidence: float  # exp(mean token log-probability), 0-1, as ALTO WC and PAGE conf
    box: tuple[float, float, float, float]


@dataclass
class TranscribeReport:
    files: int = 0  # ALTO/PAGE files (or, segmenting, page images) found
    segmented: bool = False  # the inputs were page images cut into lines by segment.py
    pages: int = 0  # documents written
    lines: int = 0  # lines read by the model
    untouched: int = 0  # lines left as they were: their type is not in data.line_types
    log: DropLog = field(default_factory=DropLog)  # skipped pages and lines, by reason
    ignored: list[str] = field(default_factory=list)  # XML files that are neither ALTO nor PAGE
    outputs: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)  # e.g. the model's recorded decoding, when used
    copies: list[Path] = field(default_factory=list)  # pages read from copies (turned, TIFF, PDF)

    def summary(self) -> list[str]:
        """The closing lines the command prints."""
        rows = [
            *self.notes,
            f"{self.pages} pages of {self.files} {'page images' if self.segmented else 'ALTO/PAGE files'}, "
            f"{self.lines} lines {'found and ' if self.segmented else ''}read "
            f"in {self.seconds:.1f} s; {self.log.total()} lines skipped",
        ]
        if self.untouched:
            rows.append(f"  {self.untouched} lines of other types (data.line_types) left as they were")
        if self.copies:
            rows.append(
                f"  {len(self.copies)} pages read from copies (photos turned upright by their EXIF "
                f"orientation, pages of multi-page TIFFs and PDFs), e.g. {self.copies[0]}"
            )
        for reason, n in self.log.by_reason().most_common():
            rows.append(f"  skipped {n}: {reason}, e.g. {', '.join(self.log.examples.get(reason, []))}")
        if self.ignored:
            rows.append(
                f"  {len(self.ignored)} XML files are neither ALTO nor PAGE and were ignored, "
                f"e.g. {', '.join(self.ignored[:3])}"
            )
        return rows


@dataclass
class Document:
    """A parsed ALTO/PAGE file: the lxml tree to write back and its lines (as the layouts read them)."""

    path: Path
    kind: str  # alto or page
    tree: Any
    page: ParsedPage
    # What surrounds the root element (declaration, comments, DOCTYPE, blank lines), byte for
    # byte: lxml keeps the nodes but not the whitespace between them.
    prolog: bytes = b""
    epilog: bytes = b""
    crlf: bool = False  # Windows line ends (the parser reads them as \n)

    def to_bytes(self) -> bytes:
        encoding = self.tree.docinfo.encoding or "UTF-8"
        if encoding.lower().replace("-", "").startswith(("utf16", "utf32", "ucs")):
            # Not ASCII-compatible: the prolog cannot be cut out as bytes; lxml writes it all.
            return bytes(etree.tostring(self.tree, encoding=encoding, xml_declaration=True))
        body = etree.tostring(self.tree.getroot(), encoding=encoding, xml_declaration=False)
        if self.crlf:
            body = body.replace(b"\n", b"\r\n")
        return bytes(self.prolog + body + self.epilog)


def _split_prolog(raw: bytes) -> tuple[int, int]:
    """Byte offsets where the root element starts and ends: what lies outside is kept as it was."""
    start = 0
    while True:
        blank = _BLANK.match(raw, start)
        start = blank.end() if blank else start
        if raw.startswith(b"<?", start):
            start = raw.index(b"?>", start) + 2
        elif raw.startswith(b"<!--", start):
            start = raw.index(b"-->", start) + 3
        elif raw.startswith(b"<!DOCTYPE", start):
            close, subset = raw.index(b">", start), raw.find(b"[", start)
            if -1 < subset < close:  # an internal subset may hold '>' of its own
                close = raw.index(b">", raw.index(b"]", subset))
            start = close + 1
        else:
            break
    end = len(raw.rstrip())
    while raw[:end].endswith((b"-->", b"?>")):
        opener = b"<!--" if raw[:end].endswith(b"-->") else b"<?"
        end = len(raw[: raw.rindex(opener, 0, end)].rstrip())
    return start, end


def _parser() -> Any:
    # No entities, DTDs or network: a page file cannot make the parser read other files.
    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False, remove_blank_text=False
    )


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _namespace(tag: str) -> str:
    return tag[1:].split("}", 1)[0] if tag.startswith("{") else ""


def xml_kind(source: Path | bytes) -> str | None:
    """'alto' or 'page' from the root element and its namespace; None for other or broken XML.

    `source` is a file or the document's bytes (an upload)."""
    try:
        for _, element in etree.iterparse(
            io.BytesIO(source) if isinstance(source, bytes) else str(source),
            events=("start",),
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
        ):
            local, ns = _local(element.tag), _namespace(element.tag)
            if local == "alto" and (not ns or ns.startswith(ALTO_NAMESPACE)):
                return "alto"
            if local == "PcGts" and ns.startswith(PAGE_NAMESPACE):
                return "page"
            return None
    except (etree.XMLSyntaxError, OSError):
        return None
    return None


def read_document(path: Path, kind: str) -> Document:
    """Parse `path` with lxml and find its lines with the training layout's parser."""
    return parse_document(path.read_bytes(), kind, path)


def parse_document(raw: bytes, kind: str, path: Path) -> Document:
    """A document from its bytes (e.g. an upload); `path` names it and locates its page image."""
    tree = etree.parse(io.BytesIO(raw), _parser())
    parse = parse_alto if kind == "alto" else parse_page
    page = parse(tree.getroot(), path)
    start, end = _split_prolog(raw)
    return Document(path, kind, tree, page, raw[:start], raw[end:], b"\r\n" in raw)


def confidence_of(logprob: float) -> float:
    """A prediction's mean token log-probability as a 0-1 confidence (geometric mean probability)."""
    return min(1.0, max(0.0, math.exp(logprob)))


def _new_child(parent: Any, name: str, index: int) -> Any:
    """A new element in the parent's namespace at `index`, indented like its neighbours."""
    ns = _namespace(parent.tag)
    child = etree.Element(f"{{{ns}}}{name}" if ns else name)
    if index > 0:
        child.tail = parent[index - 1].tail
    elif len(parent):
        child.tail = parent.text
    parent.insert(index, child)
    return child


def _remove(element: Any) -> None:
    parent = element.getparent()
    previous = element.getprevious()
    # Keep the layout of what follows: the removed element's tail goes to its predecessor.
    if previous is not None:
        previous.tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)


def _set_string(string: Any, content: str, wc: str) -> None:
    string.set("CONTENT", content)
    string.set("WC", wc)
    for name in ALTO_STALE_ATTRIBUTES:
        string.attrib.pop(name, None)
    for child in list(string):
        if _local(child.tag) in ALTO_STALE_CHILDREN:
            _remove(child)


def fill_alto_line(line: Any, text: str, confidence: float) -> None:
    """Put the reading into an ALTO TextLine's String elements (CONTENT + WC).

    As many Strings as words in the reading: word i goes into String i (every ID kept).
    Otherwise the first String takes the whole reading, keeping its ID and attributes, and the
    other Strings, SP and HYP of the line go; a line without a String gets one with its box.
    """
    wc = f"{confidence:.4f}"
    strings = [c for c in line if _local(c.tag) == "String"]
    words = text.split()
    if len(strings) > 1 and len(words) == len(strings):
        for string, word in zip(strings, words, strict=True):
            _set_string(string, word, wc)
        for child in [c for c in line if _local(c.tag) == "HYP"]:
            _remove(child)
        return
    if strings:
        first = strings[0]
        for child in [c for c in line if _local(c.tag) in ALTO_TEXT_CHILDREN and c is not first]:
            _remove(child)
    else:
        shapes = [i for i, c in enumerate(line) if _local(c.tag) == "Shape"]
        first = _new_child(line, "String", shapes[0] + 1 if shapes else 0)
        for name in ("HPOS", "VPOS", "WIDTH", "HEIGHT"):
            if line.get(name) is not None:
                first.set(name, line.get(name))
    _set_string(first, text, wc)


def _set_text_equiv(element: Any, text: str, conf: str) -> None:
    """Make the primary TextEquiv of a PAGE TextLine/Word hold `text` (Unicode, PlainText) and `conf`."""
    equivs = [c for c in element if _local(c.tag) == "TextEquiv"]
    if equivs:
        # The one the page layout reads (lowest @index); the others are old alternative readings.
        primary = min(equivs, key=lambda e: int(e.get("index", "0") or 0))
        for other in equivs:
            if other is not primary:
                _remove(other)
    else:
        after = [i for i, c in enumerate(element) if _local(c.tag) in PAGE_AFTER_TEXT_EQUIV]
        primary = _new_child(element, "TextEquiv", after[0] if after else len(element))
    primary.set("conf", conf)
    unicode = next((c for c in primary if _local(c.tag) == "Unicode"), None)
    if unicode is None:
        unicode = _new_child(primary, "Unicode", len(primary))
    unicode.text = text
    for plain in (c for c in primary if _local(c.tag) == "PlainText"):
        plain.text = text


def _drop_text_equivs(element: Any) -> None:
    for equiv in [e for e in element.iter() if _local(e.tag) == "TextEquiv"]:
        _remove(equiv)


def fill_page_line(line: Any, text: str, confidence: float) -> None:
    """Put the reading into a PAGE TextLine's TextEquiv/Unicode with @conf.

    Words of the line keep their IDs and coordinates; they get the reading's words when there
    are as many, otherwise their (old) TextEquivs go, as do those of their Glyphs.
    """
    conf = f"{confidence:.4f}"
    words_el = [c for c in line if _local(c.tag) == "Word"]
    words = text.split()
    for i, word_el in enumerate(words_el):
        for glyph in (c for c in word_el if _local(c.tag) == "Glyph"):
            _drop_text_equivs(glyph)
        if len(words) == len(words_el):
            _set_text_equiv(word_el, words[i], conf)
        else:
            for equiv in [c for c in word_el if _local(c.tag) == "TextEquiv"]:
                _remove(equiv)
    _set_text_equiv(line, text, conf)


def fill_line(doc: Document, line: PageLine, text: str, confidence: float) -> None:
    """Write one reading into its TextLine element (XML-invalid characters dropped)."""
    text = _XML_INVALID.sub("", text)
    (fill_alto_line if doc.kind == "alto" else fill_page_line)(line.node, text, confidence)


def find_xml_files(
    inputs: Sequence[str | Path], glob: str = "**/*.xml", segment: bool = False
) -> list[tuple[Path, Path]]:
    """(XML file, folder its output path is relative to) for files and folders (searched with `glob`);
    with `segment`, page images instead (folders searched for every image extension)."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(os.path.expanduser(str(item)))
        if path.is_dir():
            if segment:
                files = sorted(p for p in path.rglob("*") if p.is_file() and is_page_file(p))
                if not files:
                    raise UserError(f"{path}: no page images ({', '.join(PAGE_FILES)}) in this folder")
            else:
                files = sorted(p for p in path.glob(glob) if p.is_file())
                if not files:
                    raise UserError(f"{path}: no XML files match {glob!r} in this folder (set data.xml_glob)")
            found += [(p, path) for p in files]
        elif path.is_file():
            if segment and not is_page_file(path):
                raise UserError(f"{path}: --segment reads page images ({', '.join(PAGE_FILES)})")
            if not segment and is_page_file(path):
                raise UserError(
                    f"{path} is a page image: pass --segment to find its lines with the built-in segmenter, "
                    f"or give the ALTO/PAGE file that holds its lines"
                )
            found.append((path, path.parent))
        else:
            raise UserError(f"not found: {path}")
    if segment and any(p.suffix.lower() == ".pdf" for p, _ in found):
        try:
            import pypdfium2  # noqa: F401
        except ImportError:
            raise UserError("reading PDF pages needs the extra pdf: pip install 'trocr-tune[pdf]'") from None
    return found


def is_page_file(path: Path) -> bool:
    """A file --segment reads pages from: an image, or a PDF (its pages rendered)."""
    return path.suffix.lower() in PAGE_FILES


def _output_path(xml: Path, base: Path, options: TranscribeOptions) -> Path | None:
    fmt = options.fmt
    if options.in_place:
        return xml
    assert options.out is not None
    if fmt == "jsonl":
        return None
    rel = xml.relative_to(base)
    if fmt == "txt":
        return options.out / rel.with_suffix(".txt")
    return options.out / (rel.with_suffix(".xml") if options.segment else rel)


def _check_options(options: TranscribeOptions, data: DataConfig) -> None:
    if options.fmt is not None and options.fmt not in FORMATS:
        raise UserError(f"unknown format {options.fmt!r}; choose from: {', '.join(FORMATS)}")
    if options.in_place and options.out is not None:
        raise UserError("--in-place writes over the input files: give it or --out DIR, not both")
    if options.in_place and options.fmt in ("txt", "jsonl"):
        raise UserError(f"--in-place rewrites the ALTO/PAGE files; --format {options.fmt} needs --out DIR")
    if not options.in_place and options.out is None:
        raise UserError("give --out DIR for the transcribed files (or --in-place to overwrite the inputs)")
    if options.segment and options.in_place:
        raise UserError("--segment writes new ALTO files: give --out DIR instead of --in-place")
    if options.segment and options.fmt == "page":
        raise UserError("--segment writes ALTO: choose --format alto, txt or jsonl")
    if options.segment and data.line_types:
        raise UserError("--segment finds lines without types: data.line_types (--line-types) cannot pick")


def _region_ranks(root: Any) -> dict[str, int]:
    """PAGE ReadingOrder as region id -> position (ordered groups by @index, nested groups inline)."""
    page = next((e for e in root if _local(e.tag) == "Page"), None)
    order = next((e for e in page if _local(e.tag) == "ReadingOrder"), None) if page is not None else None
    ranks: dict[str, int] = {}

    def index(element: Any) -> int:
        try:
            return int(element.get("index", "0"))
        except ValueError:
            return 0

    def walk(group: Any) -> None:
        if group.get("regionRef"):
            ranks.setdefault(group.get("regionRef"), len(ranks))
        children = [c for c in group if _local(c.tag).startswith(("Ordered", "Unordered", "RegionRef"))]
        if _local(group.tag).startswith("Ordered"):
            children.sort(key=index)
        for child in children:
            walk(child)

    for group in order if order is not None else ():
        walk(group)
    return ranks


def in_reading_order(doc: Document, lines: list[tuple[PageLine, Crop]]) -> list[tuple[PageLine, Crop]]:
    """Lines in document order, their regions ordered by PAGE's ReadingOrder where it has one."""
    ranks = _region_ranks(doc.tree.getroot()) if doc.kind == "page" else {}
    if not ranks:
        return lines

    def rank(line: PageLine) -> int:
        ids = (a.get("id") for a in line.node.iterancestors())
        return next((ranks[i] for i in ids if i in ranks), len(ranks))

    return sorted(lines, key=lambda item: rank(item[0]))  # stable: document order within a region


@dataclass
class _Pending:
    doc: Document
    rel: str  # the XML file as reports name it
    output: Path | None
    lines: list[tuple[PageLine, Crop]]


def _plan(
    files: Sequence[tuple[Path, Path]], options: TranscribeOptions, report: TranscribeReport
) -> list[tuple[Path, Path, str, Path | None]]:
    """(xml, base, kind, output) for every ALTO/PAGE file; refuses clashes before anything is read."""
    planned: list[tuple[Path, Path, str, Path | None]] = []
    targets: dict[Path, Path] = {}
    for xml, base in files:
        kind = SCAN if options.segment else xml_kind(xml)
        if kind is None:
            report.ignored.append(str(xml))
            continue
        if options.fmt in ("alto", "page") and kind not in (options.fmt, SCAN):
            raise UserError(
                f"{xml} is {kind.upper()} XML: --format {options.fmt} cannot convert between ALTO "
                f"and PAGE (leave --format out to keep each file's own format)"
            )
        output = _output_path(xml, base, options)
        if output is not None:
            target = output.resolve()
            if not options.in_place and target == xml.resolve():
                raise UserError(
                    f"{output} would overwrite its input: choose another --out or pass --in-place"
                )
            if target in targets:
                raise UserError(f"{xml} and {targets[target]} would both be written to {output}")
            targets[target] = xml
        planned.append((xml, base, kind, output))
    report.files = len(planned)
    report.segmented = options.segment
    return planned


def _pages(
    planned: Sequence[tuple[Path, Path, str, Path | None]],
    cfg: Config,
    report: TranscribeReport,
) -> Iterator[_Pending]:
    """Each readable page with its croppable lines; everything else skipped into report.log."""
    data = cfg.data
    cache = CropCache(data.cache_dir, data.crop_padding, data.polygon_mask)
    for xml, _, kind, output in planned:
        rel = str(xml)
        if kind == SCAN:
            # The ALTO names the copy it was read from, so that goes beside it; txt and jsonl name none.
            if output is not None and output.suffix == ".xml":
                folder = output.parent
            else:
                folder = (
                    cache.root.parent / "pages" / hashlib.sha1(str(xml.resolve()).encode()).hexdigest()[:16]
                )
            try:
                sources = page_images(xml, folder)
            except ImageProblem as problem:
                report.log.drop(f"{PAGE_IMAGE_UNREADABLE} ({problem.reason})", rel)
                continue
            report.copies += [source for source in sources if source != xml]
            for n, source in enumerate(sources):
                # The later pages of a multi-page file are named as PDF pages are (RFC 8118).
                name, written = (rel, output) if n == 0 else (f"{rel}#page={n + 1}", _nth(output, n))
                scanned = _segmented(source, report.log, name)
                if scanned is not None:
                    lines, untouched = page_lines(scanned, source, data, cache, report.log, name)
                    yield _Pending(scanned, name, written, lines)
            continue
        try:
            doc = read_document(xml, kind)
        except etree.XMLSyntaxError as exc:
            report.log.drop(XML_UNREADABLE, f"{rel} ({exc})")
            continue
        except (UserError, ValueError) as exc:  # a non-pixel ALTO, a PAGE file without Page
            report.log.drop(NOT_PIXELS if isinstance(exc, UserError) else XML_UNREADABLE, f"{rel} ({exc})")
            continue
        if doc.page.skipped:
            report.log.drop(NO_GEOMETRY, rel, count=doc.page.skipped)
        image = _find_image(xml, doc.page.image_name)
        if image is None:
            named = f" ({doc.page.image_name})" if doc.page.image_name else ""
            report.log.drop(NO_PAGE_IMAGE, f"{rel}{named}", count=max(1, len(doc.page.lines)))
            continue
        lines, untouched = page_lines(doc, image, data, cache, report.log, rel)
        report.untouched += untouched
        yield _Pending(doc, rel, output, lines)


def scan_alto(image: Path, image_name: str | None = None) -> bytes | None:
    """ALTO v4 of the lines segment.py finds on a page image, naming it `image_name` (default the
    file's name); None when it finds no line. Raises ImageProblem for an unreadable image."""
    from .segment import alto_for, segment_page

    with open_image(image) as opened:  # opened as the crops are (no EXIF rotation): the boxes fit them
        picture = to_rgb(decoded(opened))
    lines = segment_page(picture)
    return alto_for(image_name or image.name, picture.size, lines) if lines else None


def page_images(image: Path, folder: Path) -> list[Path]:
    """The pages of a page image file, each as a file whose stored pixels are upright: the file
    itself where it holds one page stored upright; otherwise copies written to `folder`:
    `NAME.upright.EXT` for a photo that its EXIF orientation turns for display (as phones store
    them), `NAME.p2.EXT` ... for the later pages of a multi-page TIFF, `NAME.pN.jpg` for the
    pages of a PDF. Lines are found and read on the page as every viewer shows it, and the ALTO
    names a file its coordinates fit (kraken reads the stored pixels, never the tag). Raises
    ImageProblem for an unreadable image."""
    if image.suffix.lower() == ".pdf":
        return _pdf_pages(image, folder)
    pages: list[Path] = []
    with open_image(image) as opened:
        # Reduced-resolution copies of a page (TIFF NewSubfileType bit 0) are no pages of their own.
        frames = [0]
        if opened.format == "TIFF":
            try:
                frames = []
                for k in range(getattr(opened, "n_frames", 1)):
                    opened.seek(k)
                    if not int(getattr(opened, "tag_v2", {}).get(254, 0)) & 1:
                        frames.append(k)
            except (OSError, EOFError, ValueError):  # a broken page directory
                raise ImageProblem(str(image), UNREADABLE_IMAGE) from None
            frames = frames or [0]
        for n, k in enumerate(frames):
            opened.seek(k)
            try:
                orientation = opened.getexif().get(EXIF_ORIENTATION, 1)
            except (OSError, ValueError, SyntaxError):  # a broken EXIF block: the pixels as stored
                orientation = 1
            turned = orientation in range(2, 9)
            if n == 0 and k == 0 and not turned:
                pages.append(image)
                continue
            page = decoded(opened)
            page = ImageOps.exif_transpose(page) if turned else page.copy()
            # Never the input's own name: the copy may go to the input's folder.
            name = f"{image.stem}{f'.p{n + 1}' if n or k else ''}{'.upright' if turned else ''}{image.suffix}"
            pages.append(_write_image(page, folder / name))
    return pages


def _pdf_pages(pdf: Path, folder: Path) -> list[Path]:
    """Each page of a PDF rendered to `NAME.pN.jpg` in `folder`, at the resolution of the page's
    scanned image where it has one (a scanned document), else at PDF_DPI."""
    import pypdfium2 as pdfium

    pages: list[Path] = []
    try:
        document = pdfium.PdfDocument(str(pdf))
    except pdfium.PdfiumError:  # corrupt, encrypted
        raise ImageProblem(str(pdf), UNREADABLE_IMAGE) from None
    try:
        for n in range(len(document)):
            page = document[n]
            width, height = page.get_size()  # points (1/72 inch)
            dpi = float(PDF_DPI)
            scans = [
                (obj.get_px_size()[0], obj.get_bounds())
                for obj in page.get_objects(filter=[pdfium.raw.FPDF_PAGEOBJ_IMAGE])
            ]
            if scans:  # a scanned page: its image's own pixels, neither blurred nor blown up
                px, (x0, y0, x1, y1) = max(scans, key=lambda s: (s[1][2] - s[1][0]) * (s[1][3] - s[1][1]))
                if x1 > x0 and (x1 - x0) * (y1 - y0) >= 0.5 * width * height:
                    dpi = min(max(px / (x1 - x0) * 72, PDF_DPI_RANGE[0]), PDF_DPI_RANGE[1])
            scale = min(dpi / 72, PDF_MAX_SIDE / max(width, height, 1))
            picture = page.render(scale=scale, grayscale=False).to_pil().convert("RGB")
            pages.append(_write_image(picture, folder / f"{pdf.stem}.p{n + 1}.jpg"))
            page.close()
    except pdfium.PdfiumError:
        raise ImageProblem(str(pdf), UNREADABLE_IMAGE) from None
    finally:
        document.close()
    if not pages:
        raise ImageProblem(str(pdf), "a PDF without pages")
    return pages


def _write_image(image: Image.Image, target: Path) -> Path:
    buffer = io.BytesIO()
    kind = Image.registered_extensions().get(target.suffix.lower(), "PNG")
    image.save(buffer, format=kind, **({"quality": 95} if kind == "JPEG" else {}))
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _nth(output: Path | None, n: int) -> Path | None:
    """Where page n + 1 (> 1) of a multi-page image file goes: NAME.pN.xml / .txt."""
    return None if output is None else output.with_name(f"{output.stem}.p{n + 1}{output.suffix}")


def _segmented(image: Path, log: DropLog, rel: str) -> Document | None:
    """The page image's lines as an ALTO document; None (logged as `rel`) when unreadable or blank."""
    try:
        raw = scan_alto(image)
    except ImageProblem as problem:
        log.drop(f"{PAGE_IMAGE_UNREADABLE} ({problem.reason})", rel)
        return None
    if raw is None:
        log.drop(NO_LINES_FOUND, rel)
        return None
    return parse_document(raw, "alto", image.with_suffix(".xml"))


def page_lines(
    doc: Document, image: Path, data: DataConfig, cache: CropCache, log: DropLog, rel: str
) -> tuple[list[tuple[PageLine, Crop]], int]:
    """The lines of `doc` to read, cropped out of `image`, in reading order, and how many lines
    data.line_types leaves untouched; lines that cannot be cropped are dropped into `log`."""
    lines = doc.page.lines
    untouched = 0
    if data.line_types:
        kept = [ln for ln in lines if type_matches(ln.types, data.line_types)]
        untouched = len(lines) - len(kept)
        lines = kept
    crops = cache.crops(image, [ln.region for ln in lines]) if lines else {}
    usable = []
    for ln in lines:
        crop = crops[ln.id]
        if isinstance(crop, Crop):
            usable.append((ln, crop))
        else:  # outside the page image, a degenerate box, an unreadable page image
            log.drop(crop, f"{rel}#{ln.id}")
    return in_reading_order(doc, usable), untouched


def fill_lines(
    doc: Document, rel: str, lines: Sequence[tuple[PageLine, Crop]], predictions: Sequence[Prediction]
) -> list[LineReading]:
    """Write each line's prediction into `doc`; the readings in the same order."""
    readings = []
    for (line, _), prediction in zip(lines, predictions, strict=True):
        confidence = confidence_of(prediction.confidence)
        fill_line(doc, line, prediction.text, confidence)
        readings.append(LineReading(rel, line.id, prediction.text, confidence, line.region.box))
    return readings


def transcribe_files(
    bundle: Any,
    runner: Any,
    inputs: Sequence[str | Path],
    cfg: Config,
    options: TranscribeOptions,
    progress: Callable[[str], None] | None = None,
    ranks: Ranks | None = None,
) -> TranscribeReport:
    """Read every TextLine of the ALTO/PAGE `inputs` with the loaded model and write the results.

    Under torchrun (`ranks`), each process reads and writes its contiguous slice of the documents;
    every process returns the merged report, and rank 0 writes the JSONL in input order.
    Raises UserError when no line at all could be transcribed.
    """
    from .decoding import transcribe

    ranks = ranks or Ranks()
    _check_options(options, cfg.data)
    start = time.perf_counter()
    report = TranscribeReport()
    planned = ranks.part(_plan(find_xml_files(inputs, cfg.data.xml_glob, options.segment), options, report))
    readings: list[LineReading] = []

    def flush(batch: list[_Pending]) -> None:
        crops = [crop.path for page in batch for _, crop in page.lines]
        predictions, _ = transcribe(bundle, crops, cfg.eval, num_workers=options.num_workers, runner=runner)
        done = iter(predictions)
        for page in batch:
            filled = fill_lines(page.doc, page.rel, page.lines, [next(done) for _ in page.lines])
            readings.extend(filled)
            texts = [r.text for r in filled]
            report.lines += len(page.lines)
            report.pages += 1
            if page.output is None:
                continue
            if options.fmt == "txt":
                atomic_write_bytes(page.output, "".join(t + "\n" for t in texts).encode("utf-8"))
            else:
                atomic_write_bytes(page.output, page.doc.to_bytes())
            report.outputs.append(page.output)
            if progress:
                progress(f"{ranks.tag()}{page.rel}: {len(page.lines)} lines -> {page.output}")

    batch: list[_Pending] = []
    for page in _pages(planned, cfg, report):
        batch.append(page)
        if sum(len(p.lines) for p in batch) >= LINES_PER_FLUSH:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    report.seconds = time.perf_counter() - start
    if ranks.world > 1:
        report, readings = _merge(ranks.gather((report, readings)))
    if options.fmt == "jsonl" and options.out is not None and ranks.main:
        path = options.out / JSONL_NAME
        rows = [json.dumps(r.__dict__, ensure_ascii=False) + "\n" for r in readings]
        atomic_write_bytes(path, "".join(rows).encode("utf-8"))
        report.outputs.append(path)
    if report.lines == 0:
        found = f"{report.files} ALTO/PAGE files" + (
            f", {len(report.ignored)} other XML" if report.ignored else ""
        )
        why = report.log.describe() or "no text lines"
        raise UserError(f"nothing transcribed ({found}): {why}")
    return report


def _merge(
    parts: Sequence[tuple[TranscribeReport, list[LineReading]]],
) -> tuple[TranscribeReport, list[LineReading]]:
    """The ranks' reports and readings as one, in rank (= input) order."""
    first = parts[0][0]
    # Every rank planned all files.
    merged = TranscribeReport(files=first.files, segmented=first.segmented, ignored=first.ignored)
    readings: list[LineReading] = []
    for report, part in parts:
        merged.pages += report.pages
        merged.lines += report.lines
        merged.untouched += report.untouched
        merged.copies += report.copies
        merged.log.merge(report.log)
        merged.outputs += report.outputs
        merged.seconds = max(merged.seconds, report.seconds)
        readings += part
    return merged, readings


def transcribe_pages(
    model: str,
    inputs: Sequence[str | Path],
    cfg: Config,
    options: TranscribeOptions,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    ranks: Ranks | None = None,
) -> TranscribeReport:
    """Load `model` (a checkpoint or an `optimize` artifact) and transcribe the ALTO/PAGE `inputs`."""
    from .decoding import pick_device
    from .decoding.settings import model_decoding
    from .optimize import load_runner

    ranks = ranks or Ranks()
    _check_options(options, cfg.data)  # bad options and paths fail before the model loads
    find_xml_files(inputs, cfg.data.xml_glob, options.segment)
    bundle, runner = load_runner(model, pick_device(ranks.device(device)), cfg.optimize)
    eval_cfg, note = model_decoding(cfg.eval, bundle, runner)
    report = transcribe_files(bundle, runner, inputs, replace(cfg, eval=eval_cfg), options, progress, ranks)
    report.notes[:0] = [note] if note else []
    return report


@dataclass
class FilledPage:
    """One uploaded page after `fill_page`: the document's bytes with the readings in."""

    xml: bytes
    kind: str  # alto or page
    lines: list[LineReading]
    untouched: int  # lines of other types (data.line_types), left as they were
    log: DropLog  # lines that could not be cropped, by reason


def fill_page(
    raw: bytes,
    image: Path,
    cfg: Config,
    decode: Callable[[list[str]], Sequence[Prediction]],
    name: str = "page.xml",
    cache_dir: Path | None = None,
) -> FilledPage:
    """Fill one ALTO/PAGE document given as bytes, with `image` as its page image (the name the
    XML gives is not looked up), by the rules `transcribe` follows.

    `decode` reads line crop files into predictions (e.g. the service's batching queue); crops
    go to `cache_dir` (default data.cache_dir). Raises UserError for XML that is neither ALTO nor
    PAGE, broken, or not in pixels.
    """
    kind = xml_kind(raw)
    if kind is None:
        raise UserError(f"{name}: not ALTO or PAGE XML (or broken)")
    try:
        doc = parse_document(raw, kind, Path(name))
    except etree.XMLSyntaxError as exc:
        raise UserError(f"{name}: {XML_UNREADABLE} ({exc})") from None
    except UserError as exc:
        raise UserError(f"{name}: {NOT_PIXELS} ({exc})") from None
    except ValueError as exc:
        raise UserError(f"{name}: {XML_UNREADABLE} ({exc})") from None
    log = DropLog()
    if doc.page.skipped:
        log.drop(NO_GEOMETRY, name, count=doc.page.skipped)
    data = cfg.data
    cache = CropCache(cache_dir or data.cache_dir, data.crop_padding, data.polygon_mask)
    lines, untouched = page_lines(doc, image, data, cache, log, name)
    predictions = decode([crop.path for _, crop in lines]) if lines else []
    readings = fill_lines(doc, name, lines, predictions)
    return FilledPage(doc.to_bytes(), kind, readings, untouched, log)
