"""The built-in line segmenter for bare page scans, and `transcribe --segment` over it."""

from __future__ import annotations

import itertools
import json
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from PIL import Image, ImageDraw, ImageFont

from trocr_tune import segment
from trocr_tune.config import load_config
from trocr_tune.data.layouts.xml_pages import parse_alto
from trocr_tune.errors import UserError
from trocr_tune.pages import JSONL_NAME, NO_LINES_FOUND, TranscribeOptions, transcribe_files
from trocr_tune.segment import alto_for, reading_order, segment_page

from conftest import SHARED_DATA, corrupt_image, run_cli, scanned_page

MODEL = "trocr-tune/base-htr"
SCHEMAS = Path(__file__).parent / "data" / "schemas"
WORDS = (
    "the quick brown fox",
    "jumps over a lazy dog",
    "pack my box with",
    "five dozen liquor jugs",
    "sphinx",
)
Box = tuple[float, float, float, float]


def iou(a: Box, b: Box) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_columns_and_lines_in_reading_order_without_the_rules(tmp_path: Path) -> None:
    truth = scanned_page(tmp_path / "page.png")
    lines = segment_page(Image.open(tmp_path / "page.png"))
    # Five lines per column, column by column, top to bottom; the ruled lines and the border are not lines.
    assert [ln.column for ln in lines] == [0] * 5 + [1] * 5
    expected = [box for column in truth for box in column]
    for line, box in zip(lines, expected, strict=True):
        # The band holds its text line and no more than one line pitch (56 px).
        x0, y0, x1, y1 = line.box
        assert x0 <= box[0] + 2 and y0 <= box[1] + 2 and x1 >= box[2] - 2 and y1 >= box[3] - 2, (
            line.box,
            box,
        )
        assert y1 - y0 <= 58 and x1 - x0 <= box[2] - box[0] + 8, (line.box, box)
        (x0, y0), (x1, y1) = line.baseline
        assert x0 < x1 and box[1] < y0 < box[3] + 8


def test_reading_order_column_by_column_unless_a_line_spans_them() -> None:
    left = [(0, 100 + 50 * i, 300, 140 + 50 * i) for i in range(3)]
    right = [(400, 105 + 50 * i, 700, 145 + 50 * i) for i in range(3)]
    # Interleaved as a row-by-row scan finds them: left, right, left, right, ...
    boxes = [box for pair in zip(left, right, strict=True) for box in pair]
    assert reading_order(boxes) == [0, 2, 4, 1, 3, 5]
    # A heading above both columns comes first; a line across both below them splits the page:
    # the columns above it are read before it, the lines under it after it.
    heading, across, under = (100, 20, 600, 60), (0, 260, 700, 300), (0, 320, 300, 360)
    boxes = [*boxes, under, across, heading]
    assert reading_order(boxes) == [8, 0, 2, 4, 1, 3, 5, 7, 6]
    # Two runs of one row (a gap split the line) stay in the row's place.
    row = [(0, 0, 200, 40), (350, 2, 700, 42), (0, 50, 700, 90)]
    assert reading_order(row) == [0, 1, 2]
    assert reading_order([]) == [] and reading_order([(0, 0, 1, 1)]) == [0]


def test_two_columns_read_one_after_the_other_where_no_gutter_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scanned_page(tmp_path / "page.png")
    # A gutter hidden by a decorated border or show-through: the page stays one column.
    monkeypatch.setattr(segment, "_columns", lambda mask, pitch: [(0, mask.shape[1])])
    lines = segment_page(Image.open(tmp_path / "page.png"))
    assert {ln.column for ln in lines} == {0} and len(lines) == 10
    starts = [ln.box[0] for ln in lines]
    assert max(starts[:5]) < 200 < min(starts[5:]), starts
    assert all(a.box[1] < b.box[1] for a, b in itertools.pairwise(lines[:5]))


def test_skewed_page_keeps_one_line_per_text_line(tmp_path: Path) -> None:
    scanned_page(tmp_path / "page.png", columns=1, rotate=2.0)
    lines = segment_page(Image.open(tmp_path / "page.png"))
    assert len(lines) == 5
    tops = [ln.box[1] for ln in lines]
    assert tops == sorted(tops)
    # The polygon follows the skew: its left and right ends differ in height.
    left, right = lines[0].polygon[0], lines[0].polygon[1]
    assert abs(left[1] - right[1]) > 5


def test_short_images_a_line_or_a_snippet() -> None:
    # Rules and blobs are judged in absolute sizes too: the letters of a short image stay writing.
    font = ImageFont.load_default(size=30)
    line = Image.new("L", (800, 100), 230)
    ImageDraw.Draw(line).text((10, 30), "a single line image here", fill=0, font=font)
    assert len(segment_page(line)) == 1
    snippet = Image.new("L", (700, 200), 230)
    draw = ImageDraw.Draw(snippet)
    draw.text((10, 20), "two lines of text", fill=0, font=font)
    draw.text((10, 90), "on a small snippet", fill=0, font=font)
    found = segment_page(snippet)
    assert len(found) == 2 and found[0].box[3] <= found[1].box[1] + 2


def test_real_line_images_are_one_line_each() -> None:
    # The committed handwritten lines (two unseen wills): a line image has no repeat in its rows, so
    # it is one line of its own height, read whole: not shattered into letters at a guessed pitch.
    root = Path(str(resources.files("trocr_tune").joinpath("resources/demo-lines/poilus")))
    rows = [json.loads(row) for row in (root / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]
    found = []
    for row in rows:
        if row["split"] == "test":
            with Image.open(root / row["image"]) as im:
                found.append((segment_page(im), im.width))
    # The found line spans the writing, most of the image's width.
    widths = sorted((lines[0].box[2] - lines[0].box[0]) / width for lines, width in found if len(lines) == 1)
    assert len(widths) >= 0.95 * len(found), (len(widths), len(found))
    assert widths[len(widths) // 2] > 0.85


def test_blank_page_has_no_lines() -> None:
    assert segment_page(Image.new("L", (600, 800), 220)) == []


def test_alto_is_valid_v4_and_reads_back(tmp_path: Path) -> None:
    scanned_page(tmp_path / "page.png")
    with Image.open(tmp_path / "page.png") as im:
        lines = segment_page(im)
        raw = alto_for("page.png", im.size, lines)
    schema = etree.XMLSchema(etree.parse(str(SCHEMAS / "alto-4-2.xsd")))
    document = etree.fromstring(raw)
    assert schema.validate(document), schema.error_log
    page = parse_alto(ET.fromstring(raw), tmp_path / "page.xml")
    assert page.image_name == "page.png"
    assert [ln.region.polygon is not None for ln in page.lines] == [True] * len(lines)
    assert [ln.region.box for ln in page.lines] == [pytest.approx(line.box, abs=1.0) for line in lines]
    assert len(document.findall(".//{*}TextBlock")) == 2


@pytest.fixture(scope="module")
def engine() -> tuple[Any, Any]:
    import torch

    from trocr_tune.optimize import load_runner

    return load_runner(MODEL, torch.device("cpu"))


def _cfg(tmp_path: Path) -> Any:
    return load_config(
        None, [f"data.cache_dir={tmp_path / 'cache'}", "eval.batch_size=8", "eval.num_beams=1"]
    )


def test_transcribe_segment_writes_alto_txt_and_jsonl(tmp_path: Path, engine: Any) -> None:
    scans = tmp_path / "scans"
    scanned_page(scans / "a.png")
    scanned_page(scans / "sub" / "b.jpg", columns=1)
    Image.new("L", (300, 400), 220).save(scans / "blank.png")
    corrupt_image(scans / "broken.png")
    (scans / "notes.txt").write_text("not an image")
    cfg = _cfg(tmp_path)
    report = transcribe_files(*engine, [scans], cfg, TranscribeOptions(out=tmp_path / "alto", segment=True))
    assert (report.files, report.pages, report.lines) == (4, 2, 15)
    reasons = report.log.by_reason()
    assert reasons[NO_LINES_FOUND] == 1
    assert sum(n for reason, n in reasons.items() if reason.startswith("page image unreadable")) == 1
    assert "2 pages of 4 page images, 15 lines found and read" in report.summary()[0]
    written = tmp_path / "alto" / "sub" / "b.xml"
    page = parse_alto(ET.parse(written).getroot(), written)
    assert page.image_name == "b.jpg" and len(page.lines) == 5
    assert all(ln.text for ln in page.lines)  # every found line was read

    txt = transcribe_files(
        *engine, [scans / "a.png"], cfg, TranscribeOptions(tmp_path / "txt", "txt", segment=True)
    )
    assert [p.name for p in txt.outputs] == ["a.txt"]
    assert len((tmp_path / "txt" / "a.txt").read_text(encoding="utf-8").splitlines()) == 10
    transcribe_files(
        *engine, [scans / "a.png"], cfg, TranscribeOptions(tmp_path / "j", "jsonl", segment=True)
    )
    assert len((tmp_path / "j" / JSONL_NAME).read_text(encoding="utf-8").splitlines()) == 10


def test_phone_photo_turned_by_exif_is_read_upright(tmp_path: Path, engine: Any) -> None:
    # A phone stores the pixels sideways and an EXIF orientation that turns them for display.
    scanned_page(tmp_path / "page.png", columns=1)
    upright = Image.open(tmp_path / "page.png").convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    scans = tmp_path / "scans"
    scans.mkdir()
    upright.rotate(90, expand=True).save(scans / "photo.jpg", quality=95, exif=exif.tobytes())
    cfg = _cfg(tmp_path)
    out = tmp_path / "alto"
    report = transcribe_files(*engine, [scans], cfg, TranscribeOptions(out, segment=True))
    assert (report.pages, report.lines) == (1, 5)
    assert "1 pages read from copies (photos turned upright" in "\n".join(report.summary())
    # The ALTO names the upright copy written beside it, whose pixels its coordinates fit.
    page = parse_alto(ET.parse(out / "photo.xml").getroot(), out / "photo.xml")
    assert page.image_name == "photo.upright.jpg"
    with Image.open(out / "photo.upright.jpg") as copy:
        assert copy.size == upright.size and copy.getexif().get(0x0112, 1) == 1
    found = [ln.box for ln in segment_page(upright)]
    assert all(max(iou(ln.region.box, box) for box in found) > 0.8 for ln in page.lines)
    # Read again from the ALTO (no --segment), the lines are the same.
    again = transcribe_files(*engine, [out / "photo.xml"], cfg, TranscribeOptions(tmp_path / "again"))
    assert again.lines == 5 and not again.copies
    # txt names no image: the copy goes to the cache, not beside the text.
    transcribe_files(*engine, [scans], cfg, TranscribeOptions(tmp_path / "txt", "txt", segment=True))
    assert sorted(p.name for p in (tmp_path / "txt").iterdir()) == ["photo.txt"]
    lines = (tmp_path / "txt" / "photo.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5


def test_multi_page_tiff_is_read_page_by_page(tmp_path: Path, engine: Any) -> None:
    scanned_page(tmp_path / "one.png")
    scanned_page(tmp_path / "two.png", columns=1)
    first, second = (Image.open(tmp_path / name) for name in ("one.png", "two.png"))
    scans = tmp_path / "scans"
    scans.mkdir()
    first.save(scans / "register.tif", save_all=True, append_images=[second], compression="tiff_lzw")
    cfg = _cfg(tmp_path)
    report = transcribe_files(*engine, [scans], cfg, TranscribeOptions(tmp_path / "alto", segment=True))
    assert (report.files, report.pages, report.lines) == (1, 2, 15)
    # Page 1 is the file itself; page 2 is read from its own copy, which its ALTO names.
    alto = tmp_path / "alto"
    pages = [
        parse_alto(ET.parse(alto / name).getroot(), alto / name)
        for name in ("register.xml", "register.p2.xml")
    ]
    assert [p.image_name for p in pages] == ["register.tif", "register.p2.tif"]
    assert [len(p.lines) for p in pages] == [10, 5]
    with Image.open(alto / "register.p2.tif") as copy:
        assert copy.size == second.size and getattr(copy, "n_frames", 1) == 1
    transcribe_files(*engine, [scans], cfg, TranscribeOptions(tmp_path / "j", "jsonl", segment=True))
    rows = [json.loads(row) for row in (tmp_path / "j" / JSONL_NAME).read_text(encoding="utf-8").splitlines()]
    named = [row["page"] for row in rows]
    assert named == [str(scans / "register.tif")] * 10 + [f"{scans / 'register.tif'}#page=2"] * 5


def test_pdf_pages_are_rendered_and_read(
    tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pypdfium2")
    scanned_page(tmp_path / "one.png")
    scanned_page(tmp_path / "two.png", columns=1)
    first, second = (Image.open(tmp_path / name).convert("RGB") for name in ("one.png", "two.png"))
    scans = tmp_path / "scans"
    scans.mkdir()
    # A scanned document: each page one image at 100 dpi, rendered back at its own pixels.
    first.save(scans / "letters.pdf", save_all=True, append_images=[second], resolution=100)
    (scans / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    cfg = _cfg(tmp_path)
    report = transcribe_files(*engine, [scans], cfg, TranscribeOptions(tmp_path / "alto", segment=True))
    assert (report.files, report.pages, report.lines) == (2, 2, 15)
    assert sum(n for reason, n in report.log.by_reason().items() if "unreadable" in reason) == 1
    alto = tmp_path / "alto"
    pages = [
        parse_alto(ET.parse(alto / name).getroot(), alto / name) for name in ("letters.xml", "letters.p2.xml")
    ]
    assert [p.image_name for p in pages] == ["letters.p1.jpg", "letters.p2.jpg"]
    assert [len(p.lines) for p in pages] == [10, 5]
    with Image.open(alto / "letters.p2.jpg") as page:
        assert abs(page.width - second.width) <= 2 and abs(page.height - second.height) <= 2
    # Without the extra, one line says what to install.
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    with pytest.raises(UserError, match=r"pip install 'trocr-tune\[pdf\]'"):
        transcribe_files(*engine, [scans], cfg, TranscribeOptions(tmp_path / "again", segment=True))


def test_segment_option_errors(tmp_path: Path, engine: Any) -> None:
    scanned_page(tmp_path / "a.png", columns=1)
    cfg = _cfg(tmp_path)
    out = tmp_path / "out"
    for inputs, options, message in (
        ([tmp_path / "a.png"], TranscribeOptions(out), "is a page image: pass --segment"),
        ([tmp_path / "a.png"], TranscribeOptions(in_place=True, segment=True), "instead of --in-place"),
        ([tmp_path / "a.png"], TranscribeOptions(out, "page", segment=True), "--segment writes ALTO"),
        ([tmp_path / "cfg.xml"], TranscribeOptions(out, segment=True), "not found"),
    ):
        with pytest.raises(UserError, match=message):
            transcribe_files(*engine, inputs, cfg, options)
    (tmp_path / "x.xml").write_text("<alto/>")
    with pytest.raises(UserError, match="--segment reads page images"):
        transcribe_files(*engine, [tmp_path / "x.xml"], cfg, TranscribeOptions(out, segment=True))


def test_cli_transcribe_segment_through_the_entry_point(tmp_path: Path, engine: Any) -> None:
    scanned_page(tmp_path / "scans" / "letter.png")
    out = tmp_path / "out"
    args = ["--device", "cpu", f"data.cache_dir={tmp_path / 'cache'}", "eval.num_beams=1"]
    result = run_cli(
        "transcribe", MODEL, str(tmp_path / "scans"), "--segment", "--out", str(out), *args, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "1 pages of 1 page images, 10 lines found and read" in result.stdout
    assert (out / "letter.xml").is_file()
    # The written ALTO, put beside its image, is an input like any other segmented page.
    (tmp_path / "scans" / "letter.xml").write_bytes((out / "letter.xml").read_bytes())
    again = transcribe_files(
        *engine, [tmp_path / "scans" / "letter.xml"], _cfg(tmp_path), TranscribeOptions(tmp_path / "o2")
    )
    assert again.summary()[0].startswith("1 pages of 1 ALTO/PAGE files, 10 lines read")
    first = parse_alto(ET.parse(out / "letter.xml").getroot(), out / "letter.xml")
    second = parse_alto(ET.parse(tmp_path / "o2" / "letter.xml").getroot(), tmp_path / "o2" / "letter.xml")
    assert [(ln.id, ln.region.box) for ln in second.lines] == [(ln.id, ln.region.box) for ln in first.lines]
    assert all(ln.text for ln in second.lines)


def test_cli_image_without_segment_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trocr_tune.cli import main

    scanned_page(tmp_path / "letter.png", columns=1)
    with pytest.raises(SystemExit) as exit_info:
        main(["transcribe", MODEL, str(tmp_path / "letter.png"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("trocr-tune: error: ") and "is a page image: pass --segment" in last, last


# --- Real pages (skipped where ../shared/data is absent) -------------------------------------------
# Pages where the hand-drawn lines are regular; docs/transcribe.md gives the figures over every page.
REAL = (
    ("htromance-spain/bnf-esp-36/2r.chocomufin.xml", 2),  # two columns, 80 lines
    ("poilus-wills/TestamentsDePoilus_will_AN_0008/TestamentsDePoilus_will_AN_0008-2.xml", 1),  # 30 lines
)


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "columns"), REAL)
def test_real_pages_lines_found(name: str, columns: int) -> None:
    from trocr_tune.data.layouts.xml_pages import _find_image

    xml = SHARED_DATA / name
    gold = parse_alto(ET.parse(xml).getroot(), xml)
    image = _find_image(xml, gold.image_name)
    assert image is not None
    with Image.open(image) as im:
        lines = segment_page(im)
    boxes = [ln.region.box for ln in gold.lines]
    matched = sum(max(iou(box, line.box) for line in lines) >= 0.5 for box in boxes)
    assert matched >= 0.9 * len(boxes), (matched, len(boxes))
    assert len(lines) <= 1.15 * len(boxes)
    assert len({ln.column for ln in lines}) == columns


def test_ranks_merged_report_keeps_the_segmented_wording() -> None:
    from trocr_tune.pages import TranscribeReport, _merge

    parts = [(TranscribeReport(files=2, segmented=True, pages=1, lines=n), []) for n in (3, 2)]
    merged, _ = _merge(parts)
    assert merged.summary()[0].startswith("2 pages of 2 page images, 5 lines found and read")
