"""`trocr-tune transcribe` (pages.py): ALTO/PAGE in, text filled in, everything else kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from PIL import Image, ImageDraw

from trocr_tune.cli import TRANSCRIBE_FORMATS
from trocr_tune.config import load_config
from trocr_tune.data.crops import OUTSIDE_PAGE, ZERO_SIZE
from trocr_tune.data.layouts.xml_pages import NO_PAGE_IMAGE
from trocr_tune.errors import UserError
from trocr_tune.pages import (
    FORMATS,
    JSONL_NAME,
    XML_UNREADABLE,
    TranscribeOptions,
    fill_alto_line,
    transcribe_files,
    xml_kind,
)

from conftest import SHARED_DATA, run_cli

MODEL = "trocr-tune/base-htr"  # the shipped 0.9M-parameter base: real decoding, fast on CPU
ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
PAGE_NS = "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
# Text-bearing parts that transcribe may change; everything else must come back identical.
TEXT_ATTRIBUTES = {"CONTENT", "WC", "CC", "conf"}
TEXT_ELEMENTS = {"TextEquiv", "Unicode", "PlainText"}

ALTO = """<?xml version="1.0" encoding="UTF-8"?>
<!-- exported by a segmenter -->
<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#" xmlns:xlink="http://www.w3.org/1999/xlink"
      xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
      xsi:schemaLocation="http://www.loc.gov/standards/alto/ns-v4# http://www.loc.gov/standards/alto/v4/alto-4-2.xsd">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>{image}</fileName></sourceImageInformation></Description>
  <Tags>
    <OtherTag ID="LT1" LABEL="Handwritten"/>
    <OtherTag ID="LT2" LABEL="Typewritten"/>
  </Tags>
  <Layout><Page ID="p1" WIDTH="400" HEIGHT="200" PHYSICAL_IMG_NR="1"><PrintSpace>
    <TextBlock ID="b1" HPOS="0" VPOS="0" WIDTH="400" HEIGHT="200">
      <TextLine ID="l1" TAGREFS="LT1" HPOS="10" VPOS="10" WIDTH="200" HEIGHT="30" BASELINE="10 35 210 35">
        <Shape><Polygon POINTS="10 10 210 10 210 40 10 40"/></Shape>
        <String ID="s1a" CONTENT="old" WC="0.1" CC="9 9 9" HPOS="10" VPOS="10" WIDTH="60" HEIGHT="30"/>
        <SP ID="sp1" WIDTH="8"/>
        <String ID="s1b" CONTENT="text" STYLE="bold" HPOS="80" VPOS="10" WIDTH="120" HEIGHT="30"/>
      </TextLine>
      <TextLine ID="l2" TAGREFS="LT2" HPOS="10" VPOS="60" WIDTH="150" HEIGHT="30">
        <String ID="s2" CONTENT="typed line" HPOS="10" VPOS="60" WIDTH="150" HEIGHT="30"/>
      </TextLine>
      <TextLine ID="l3" TAGREFS="LT1" HPOS="20" VPOS="140" WIDTH="200" HEIGHT="35">
        <Shape><Polygon POINTS="20 140 220 140 220 175 20 175"/></Shape>
      </TextLine>
      <TextLine ID="l4" TAGREFS="LT1" HPOS="900" VPOS="900" WIDTH="50" HEIGHT="30">
        <String ID="s4" CONTENT="outside the page"/>
      </TextLine>
      <TextLine ID="l5" TAGREFS="LT1" HPOS="30" VPOS="100" WIDTH="0" HEIGHT="30">
        <String ID="s5" CONTENT="no width"/>
      </TextLine>
    </TextBlock>
  </PrintSpace></Page></Layout>
</alto>
"""

PAGE = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<pc:PcGts xmlns:pc="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15 http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15/pagecontent.xsd"
    pcGtsId="doc1">
  <pc:Metadata><pc:Creator>segmenter</pc:Creator><pc:Created>2026-01-01T00:00:00</pc:Created>
    <pc:LastChange>2026-01-01T00:00:00</pc:LastChange></pc:Metadata>
  <pc:Page imageFilename="{image}" imageWidth="400" imageHeight="200">
    <pc:ReadingOrder><pc:OrderedGroup id="ro1" caption="Regions">
      <pc:RegionRefIndexed index="1" regionRef="r0"/>
      <pc:RegionRefIndexed index="0" regionRef="r1"/></pc:OrderedGroup></pc:ReadingOrder>
    <pc:TextRegion id="r0" type="paragraph">
      <pc:Coords points="240,50 400,50 400,100 240,100"/>
      <pc:TextLine id="tl0"><pc:Coords points="250,60 390,60 390,90 250,90"/></pc:TextLine>
    </pc:TextRegion>
    <pc:TextRegion id="r1" type="paragraph" custom="readingOrder {{index:0;}}">
      <pc:Coords points="0,0 400,0 400,200 0,200"/>
      <pc:TextLine id="tl1" custom="readingOrder {{index:0;}}">
        <pc:Coords points="10,10 210,10 210,40 10,40"/>
        <pc:Baseline points="10,35 210,35"/>
        <pc:Word id="w1"><pc:Coords points="10,10 70,10 70,40 10,40"/>
          <pc:TextEquiv conf="0.2"><pc:Unicode>old</pc:Unicode></pc:TextEquiv></pc:Word>
        <pc:Word id="w2"><pc:Coords points="80,10 210,10 210,40 80,40"/>
          <pc:TextEquiv><pc:Unicode>words</pc:Unicode></pc:TextEquiv></pc:Word>
        <pc:TextEquiv index="1" conf="0.5"><pc:Unicode>an alternative</pc:Unicode></pc:TextEquiv>
        <pc:TextEquiv index="0"><pc:PlainText>old words</pc:PlainText>
          <pc:Unicode>old words</pc:Unicode></pc:TextEquiv>
      </pc:TextLine>
      <pc:TextLine id="tl2" custom="structure {{type:heading;}}">
        <pc:Coords points="20,140 220,140 220,175 20,175"/>
        <pc:TextStyle fontSize="10"/>
      </pc:TextLine>
      <pc:TextLine id="tl3"><pc:Coords points="900,900 950,900 950,930 900,930"/></pc:TextLine>
    </pc:TextRegion>
  </pc:Page>
</pc:PcGts>
"""


def _page_image(path: Path) -> Path:
    im = Image.new("RGB", (400, 200), (232, 226, 212))
    draw = ImageDraw.Draw(im)
    for y, text in ((18, "first line of ink"), (68, "typed line"), (148, "third line")):
        draw.text((16, y), text, fill=(30, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


@pytest.fixture
def pages_dir(tmp_path: Path) -> Path:
    """ALTO v4 and PAGE 2019 pages with their image, an ALTO page whose image is missing, a broken
    ALTO file and an XML file that is neither."""
    root = tmp_path / "in"
    _page_image(root / "alto" / "a1.png")
    (root / "alto" / "a1.xml").write_text(ALTO.format(image="a1.png"), encoding="utf-8")
    (root / "alto" / "lost.xml").write_text(ALTO.format(image="lost.png"), encoding="utf-8")
    (root / "alto" / "broken.xml").write_text(f'<alto xmlns="{ALTO_NS}"><Layout>', encoding="utf-8")
    _page_image(root / "page" / "p1.jpg")
    (root / "page" / "p1.xml").write_text(PAGE.format(image="p1.jpg"), encoding="utf-8")
    (root / "other.xml").write_text("<annotation><filename>x.jpg</filename></annotation>", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def engine() -> tuple[Any, Any]:
    import torch

    from trocr_tune.optimize import load_runner

    return load_runner(MODEL, torch.device("cpu"))


def _cfg(tmp_path: Path, *overrides: str) -> Any:
    return load_config(None, [f"data.cache_dir={tmp_path / 'cache'}", "eval.batch_size=8", *overrides])


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def skeleton(path: Path) -> list[tuple[str, dict[str, str], dict[str | None, str]]]:
    """Every element that is not text, with its attributes (text attributes left out) and namespaces."""
    out = []
    for el in etree.parse(str(path)).getroot().iter():
        if not isinstance(el.tag, str) or _local(el.tag) in TEXT_ELEMENTS:
            continue
        attributes = {k: v for k, v in el.attrib.items() if k not in TEXT_ATTRIBUTES}
        out.append((el.tag, attributes, dict(el.nsmap)))
    return out


def by_id(path: Path) -> dict[str, Any]:
    root = etree.parse(str(path)).getroot()
    return {el.get("ID") or el.get("id"): el for el in root.iter() if el.get("ID") or el.get("id")}


def test_formats_match_the_cli_choices() -> None:
    assert FORMATS == TRANSCRIBE_FORMATS


@pytest.mark.parametrize(
    ("root", "kind"),
    [
        ('<alto xmlns="http://www.loc.gov/standards/alto/ns-v2#"/>', "alto"),
        ('<alto xmlns="http://www.loc.gov/standards/alto/ns-v3#"/>', "alto"),
        ("<alto/>", "alto"),
        ('<pc:PcGts xmlns:pc="http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15"/>', "page"),
        ('<PcGts xmlns="http://example.org/not-page"/>', None),
        ("<annotation><alto/></annotation>", None),
        ("<alto><unclosed>", "alto"),  # named by its root; reading it then counts it unreadable
        ("plain text", None),
    ],
)
def test_format_from_the_root_and_its_namespace(tmp_path: Path, root: str, kind: str | None) -> None:
    path = tmp_path / "doc.xml"
    path.write_text(root, encoding="utf-8")
    assert xml_kind(path) == kind


def test_alto_filled_ids_and_attributes_kept(pages_dir: Path, tmp_path: Path, engine) -> None:
    out = tmp_path / "out"
    report = transcribe_files(
        *engine, [pages_dir / "alto"], _cfg(tmp_path), TranscribeOptions(out=out, fmt="alto")
    )
    assert report.files == 3 and report.pages == 1
    assert report.lines == 3  # l1, l2, l3; l4 outside the page and l5 of zero width are skipped
    reasons = report.log.by_reason()
    assert reasons[OUTSIDE_PAGE] == 1 and reasons[ZERO_SIZE] == 1
    assert reasons[NO_PAGE_IMAGE] == 5  # every line of lost.xml
    assert reasons[XML_UNREADABLE] == 1 and "broken.xml (" in report.log.examples[XML_UNREADABLE][0]
    assert report.log.examples[OUTSIDE_PAGE] == [f"{pages_dir / 'alto' / 'a1.xml'}#l4"]
    assert any("lost.xml (lost.png)" in e for e in report.log.examples[NO_PAGE_IMAGE])
    assert [p.name for p in report.outputs] == ["a1.xml"]
    assert not (out / "lost.xml").exists()

    source, filled = pages_dir / "alto" / "a1.xml", out / "a1.xml"
    before, after = by_id(source), by_id(filled)
    # The XML declaration, the comment and the namespace prefixes come back as they were.
    assert filled.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- exported')
    assert etree.parse(str(filled)).getroot().nsmap == etree.parse(str(source)).getroot().nsmap
    # l1: two Strings, the reading's word count decides; either way s1a keeps ID and geometry.
    s1a = after["s1a"]
    for name in ("HPOS", "VPOS", "WIDTH", "HEIGHT"):
        assert s1a.get(name) == before["s1a"].get(name)
    assert "CC" not in s1a.attrib and 0 <= float(s1a.get("WC")) <= 1
    # l3 had no String: it gets one after its Shape, with the line's box.
    l3 = after["l3"]
    assert [_local(c.tag) for c in l3] == ["Shape", "String"]
    assert l3[1].get("HPOS") == "20" and l3[1].get("WIDTH") == "200" and l3[1].get("CONTENT")
    assert l3[1].tag == f"{{{ALTO_NS}}}String"
    # Skipped lines are left exactly as they were.
    for line in ("l4", "l5"):
        assert etree.tostring(after[line]) == etree.tostring(before[line])
    # Every ID of the input that is not an old word of l1 is still there, with the same attributes.
    for key, el in before.items():
        if key in ("s1b", "sp1"):
            continue
        kept = {k: v for k, v in after[key].attrib.items() if k not in TEXT_ATTRIBUTES}
        assert kept == {k: v for k, v in el.attrib.items() if k not in TEXT_ATTRIBUTES}, key


def test_lines_cropped_as_the_layout_crops_them(
    pages_dir: Path, tmp_path: Path, engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trocr_tune.decoding as decoding
    from trocr_tune.data.reader import read_dataset

    decoded: list[str] = []
    real = decoding.transcribe

    def spy(bundle: Any, images: list[str], *args: Any, **kwargs: Any) -> Any:
        decoded.extend(images)
        return real(bundle, images, *args, **kwargs)

    monkeypatch.setattr(decoding, "transcribe", spy)
    crop = ("data.crop_padding=0", "data.polygon_mask=true")
    page = pages_dir / "alto" / "a1.xml"
    transcribe_files(*engine, [page], _cfg(tmp_path, *crop), TranscribeOptions(out=tmp_path / "o"))
    layout = load_config(
        None, ["data.layout=alto", f"data.root={page}", f"data.cache_dir={tmp_path / 'cache'}", *crop]
    )
    samples = read_dataset(layout.data).samples  # l1 and l2 (l3 has no text to train on)
    assert len(decoded) == 3 and len(samples) == 2
    assert {s.image for s in samples} <= set(decoded)  # the very same cached crop files


def test_alto_word_for_word_keeps_every_string() -> None:
    line = etree.fromstring(
        f'<TextLine xmlns="{ALTO_NS}" ID="l"><String ID="a" CONTENT="x"/><SP/>'
        '<String ID="b" CONTENT="y" SUBS_CONTENT="yz"/><HYP CONTENT="-"/></TextLine>'
    )
    fill_alto_line(line, "uno dos", 0.5)
    assert [(_local(c.tag), c.get("ID"), c.get("CONTENT")) for c in line] == [
        ("String", "a", "uno"),
        ("SP", None, None),
        ("String", "b", "dos"),
    ]
    assert line[2].get("WC") == "0.5000" and "SUBS_CONTENT" not in line[2].attrib
    fill_alto_line(line, "uno dos tres", 0.25)  # three words, two Strings: the first takes all
    assert [(c.get("ID"), c.get("CONTENT")) for c in line] == [("a", "uno dos tres")]


def test_line_type_filter_leaves_other_lines_untouched(pages_dir: Path, tmp_path: Path, engine) -> None:
    out = tmp_path / "out"
    report = transcribe_files(
        *engine,
        [pages_dir / "alto" / "a1.xml"],
        _cfg(tmp_path, "data.line_types=[Handwritten]"),
        TranscribeOptions(out=out),
    )
    assert report.lines == 2 and report.untouched == 1
    before, after = by_id(pages_dir / "alto" / "a1.xml"), by_id(out / "a1.xml")
    assert etree.tostring(after["l2"]) == etree.tostring(before["l2"])
    assert after["s1a"].get("WC") is not None


def test_page_filled_text_equiv_in_schema_order(pages_dir: Path, tmp_path: Path, engine) -> None:
    out = tmp_path / "out"
    report = transcribe_files(*engine, [pages_dir / "page"], _cfg(tmp_path), TranscribeOptions(out=out))
    assert report.lines == 3 and report.log.by_reason() == {OUTSIDE_PAGE: 1}
    source, filled = pages_dir / "page" / "p1.xml", out / "p1.xml"
    assert filled.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<pc:')
    assert skeleton(filled) == skeleton(source)
    after = by_id(filled)
    tl1 = after["tl1"]
    equivs = [c for c in tl1 if _local(c.tag) == "TextEquiv"]
    assert len(equivs) == 1 and equivs[0].get("index") == "0"  # the old alternative reading is gone
    text = equivs[0].findtext(f"{{{PAGE_NS}}}Unicode")
    assert equivs[0].findtext(f"{{{PAGE_NS}}}PlainText") == text and 0 <= float(equivs[0].get("conf")) <= 1
    # Words keep their ids and coordinates; their text is the reading's when the counts match.
    word_texts = [
        w.findtext(f"{{{PAGE_NS}}}TextEquiv/{{{PAGE_NS}}}Unicode") for w in tl1 if _local(w.tag) == "Word"
    ]
    assert word_texts == (text.split() if len(text.split()) == 2 else [None, None])
    # tl2 had no TextEquiv: it comes after Coords and before TextStyle, with the pc: prefix.
    tl2 = after["tl2"]
    assert [_local(c.tag) for c in tl2] == ["Coords", "TextEquiv", "TextStyle"]
    assert etree.tostring(tl2[1]).startswith(b"<pc:TextEquiv")
    assert etree.tostring(after["tl3"]) == etree.tostring(by_id(source)["tl3"])


def test_in_place_semantics(pages_dir: Path, tmp_path: Path, engine) -> None:
    source = pages_dir / "alto" / "a1.xml"
    original = source.read_bytes()
    cfg = _cfg(tmp_path)
    with pytest.raises(UserError, match="would overwrite its input"):
        transcribe_files(*engine, [pages_dir / "alto"], cfg, TranscribeOptions(out=pages_dir / "alto"))
    with pytest.raises(UserError, match="give --out DIR"):
        transcribe_files(*engine, [source], cfg, TranscribeOptions())
    with pytest.raises(UserError, match="needs --out"):
        transcribe_files(*engine, [source], cfg, TranscribeOptions(in_place=True, fmt="txt"))
    with pytest.raises(UserError, match="cannot convert between ALTO and PAGE"):
        transcribe_files(*engine, [source], cfg, TranscribeOptions(out=tmp_path / "o", fmt="page"))
    assert source.read_bytes() == original
    report = transcribe_files(*engine, [source], cfg, TranscribeOptions(in_place=True))
    assert report.outputs == [source] and source.read_bytes() != original
    assert [_local(c.tag) for c in by_id(source)["l3"]] == ["Shape", "String"]
    assert not list(source.parent.glob(".*.tmp"))


def test_windows_line_ends_and_no_declaration_kept(tmp_path: Path, engine) -> None:
    root = tmp_path / "in"
    _page_image(root / "a1.png")
    body = ALTO.format(image="a1.png").split("\n", 1)[1]  # no XML declaration
    (root / "a1.xml").write_bytes(body.replace("\n", "\r\n").encode("utf-8"))
    transcribe_files(*engine, [root], _cfg(tmp_path), TranscribeOptions(out=tmp_path / "out"))
    data = (tmp_path / "out" / "a1.xml").read_bytes()
    assert data.startswith(b"<!-- exported by a segmenter -->\r\n<alto ")
    assert data.count(b"\r\n") == data.count(b"\n") > 20


def test_txt_and_jsonl(pages_dir: Path, tmp_path: Path, engine) -> None:
    cfg = _cfg(tmp_path)
    inputs = [pages_dir / "alto" / "a1.xml", pages_dir / "page"]
    txt = transcribe_files(*engine, inputs, cfg, TranscribeOptions(out=tmp_path / "txt", fmt="txt"))
    transcribe_files(*engine, inputs, cfg, TranscribeOptions(out=tmp_path / "jsonl", fmt="jsonl"))
    assert sorted(p.name for p in txt.outputs) == ["a1.txt", "p1.txt"]
    rows = [json.loads(r) for r in (tmp_path / "jsonl" / JSONL_NAME).read_text(encoding="utf-8").splitlines()]
    assert [(Path(r["page"]).name, r["line"]) for r in rows] == [
        ("a1.xml", "l1"),
        ("a1.xml", "l2"),
        ("a1.xml", "l3"),
        ("p1.xml", "tl1"),
        ("p1.xml", "tl2"),
        ("p1.xml", "tl0"),  # its region comes first in the file, second in the ReadingOrder
    ]
    assert all(0 <= r["confidence"] <= 1 and len(r["box"]) == 4 for r in rows)
    assert rows[0]["box"] == [10.0, 10.0, 210.0, 40.0]
    # The same readings in txt and jsonl, in reading order.
    for name, rows_of_page in (("a1.txt", rows[:3]), ("p1.txt", rows[3:])):
        lines = (tmp_path / "txt" / name).read_text(encoding="utf-8").splitlines()
        assert lines == [r["text"] for r in rows_of_page]


def test_nothing_transcribed_is_an_error(tmp_path: Path, pages_dir: Path, engine) -> None:
    with pytest.raises(UserError, match=r"nothing transcribed.*page image not found"):
        transcribe_files(
            *engine, [pages_dir / "alto" / "lost.xml"], _cfg(tmp_path), TranscribeOptions(out=tmp_path / "o")
        )


def test_cli_transcribe_through_the_entry_point(pages_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "transcribe",
        MODEL,
        str(pages_dir),
        "--out",
        str(out),
        "--line-types",
        "Handwritten,paragraph",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        f"data.cache_dir={tmp_path / 'cache'}",
        "eval.num_beams=1",
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "alto" / "a1.xml").is_file() and (out / "page" / "p1.xml").is_file()
    assert "2 pages of 4 ALTO/PAGE files, 5 lines read" in result.stdout
    assert "skipped 5: page image not found, e.g." in result.stdout
    assert "skipped 1: XML file unreadable, e.g." in result.stdout
    assert "1 XML files are neither ALTO nor PAGE" in result.stdout
    assert "1 lines of other types" in result.stdout


def test_cli_errors_are_one_line_with_exit_code_2(
    pages_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trocr_tune.cli import main

    out = str(tmp_path / "out")
    for args, message in (
        ([str(pages_dir / "alto" / "lost.xml"), "--out", out], "nothing transcribed"),
        ([str(pages_dir), "--out", out, "train.max_steps=3"], "transcribe reads only eval.*"),
        ([str(pages_dir / "alto"), "--in-place", "--format", "jsonl"], "needs --out DIR"),
        ([str(tmp_path / "nowhere.xml"), "--out", out], "not found"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["transcribe", MODEL, *args, "--device", "cpu", f"data.cache_dir={tmp_path / 'cache'}"])
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("trocr-tune: error: ") and message in last, last


# --- Round trip on real pages (skipped where ../shared/data is absent) ---------------------------

HTROMANCE = SHARED_DATA / "htromance-spain"
REAL_PAGES = ("bnf-esp-368/dialogos_grado_perfecion_v5", "bnf-esp-229/laberinto_6v")  # 10 + 18 lines
SCHEMAS = Path(__file__).parent / "data" / "schemas"


def _schema(name: str) -> Any:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / name)))


def _points(text: str) -> str:
    numbers = [round(float(v)) for v in text.replace(",", " ").split()]
    return " ".join(f"{x},{y}" for x, y in zip(numbers[0::2], numbers[1::2], strict=True))


def alto_to_page(alto: Any, image: Path, with_text: bool) -> bytes:
    """The same blocks and lines (ids, polygons, baselines) as a PAGE 2019 document."""
    a, p = f"{{{ALTO_NS}}}", f"{{{PAGE_NS}}}"
    root = etree.Element(f"{p}PcGts", nsmap={None: PAGE_NS})
    meta = etree.SubElement(root, f"{p}Metadata")
    for name, value in (
        ("Creator", "trocr-tune tests"),
        ("Created", "2026-01-01T00:00:00"),
        ("LastChange", "2026-01-01T00:00:00"),
    ):
        etree.SubElement(meta, f"{p}{name}").text = value
    with Image.open(image) as im:
        width, height = im.size
    page = etree.SubElement(
        root, f"{p}Page", imageFilename=image.name, imageWidth=str(width), imageHeight=str(height)
    )
    for block in alto.iter(f"{a}TextBlock"):
        region = etree.SubElement(page, f"{p}TextRegion", id=block.get("ID"))
        etree.SubElement(
            region, f"{p}Coords", points=_points(block.find(f"{a}Shape/{a}Polygon").get("POINTS"))
        )
        for line in block.findall(f"{a}TextLine"):
            text_line = etree.SubElement(region, f"{p}TextLine", id=line.get("ID"))
            polygon = line.find(f"{a}Shape/{a}Polygon").get("POINTS")
            etree.SubElement(text_line, f"{p}Coords", points=_points(polygon))
            if line.get("BASELINE"):
                etree.SubElement(text_line, f"{p}Baseline", points=_points(line.get("BASELINE")))
            if with_text:
                equiv = etree.SubElement(text_line, f"{p}TextEquiv")
                words = [s.get("CONTENT") for s in line.findall(f"{a}String")]
                etree.SubElement(equiv, f"{p}Unicode").text = " ".join(words)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


@pytest.fixture(scope="module")
def real_pages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two HTRomance pages, each folder holding its image and: NAME.chocomufin.xml (the ground
    truth), NAME.stripped.xml and NAME.filled.xml (every String CONTENT emptied), and the same
    lines as PAGE 2019: NAME.pagegt.xml (with text) and NAME.pagestripped/.pagefilled.xml."""
    root = tmp_path_factory.mktemp("htromance")
    for name in REAL_PAGES:
        manuscript, page = name.split("/")
        folder = root / manuscript
        folder.mkdir()
        image = folder / f"{page}.jpg"
        image.symlink_to(HTROMANCE / manuscript / image.name)
        source = HTROMANCE / manuscript / f"{page}.chocomufin.xml"
        (folder / source.name).write_bytes(source.read_bytes())
        tree = etree.parse(str(source))
        (folder / f"{page}.pagegt.xml").write_bytes(alto_to_page(tree.getroot(), image, with_text=True))
        stripped_page = alto_to_page(tree.getroot(), image, with_text=False)
        for string in tree.iter(f"{{{ALTO_NS}}}String"):
            string.set("CONTENT", "")
        stripped = etree.tostring(tree, encoding="UTF-8") + b"\n"
        for suffix, data in (("stripped", stripped), ("filled", stripped)):
            (folder / f"{page}.{suffix}.xml").write_bytes(data)
        for suffix in ("pagestripped", "pagefilled"):
            (folder / f"{page}.{suffix}.xml").write_bytes(stripped_page)
    return root


def _read(layout: str, root: Path, glob: str, cache: Path) -> Any:
    from trocr_tune.data.reader import read_dataset

    cfg = load_config(
        None,
        [f"data.layout={layout}", f"data.root={root}", f"data.xml_glob={glob}", f"data.cache_dir={cache}"],
    )
    return read_dataset(cfg.data)


def _round_trip(real_pages: Path, engine: Any, kind: str, schema: str) -> None:
    from trocr_tune.evaluate import evaluate_bundle, metric_normalizer
    from trocr_tune.metrics import compute_metrics

    gt_glob, stripped, filled = (
        ("**/*.chocomufin.xml", "stripped", "filled")
        if kind == "alto"
        else ("**/*.pagegt.xml", "pagestripped", "pagefilled")
    )
    cache = real_pages / "cache"
    cfg = load_config(
        None, [f"data.cache_dir={cache}", f"data.xml_glob=**/*.{filled}.xml", "eval.batch_size=16"]
    )
    targets = sorted(real_pages.glob(f"*/*.{filled}.xml"))
    report = transcribe_files(*engine, [real_pages], cfg, TranscribeOptions(in_place=True))
    assert report.pages == 2 and report.lines == 28 and report.log.total() == 0
    assert sorted(report.outputs) == targets

    validator = _schema(schema)
    for out in targets:
        source = out.with_name(out.name.replace(filled, stripped))
        validator.assertValid(etree.parse(str(source)))
        validator.assertValid(etree.parse(str(out)))
        assert skeleton(out) == skeleton(source)  # every ID, non-text attribute, element and namespace
        assert etree.parse(str(out)).getroot().nsmap == etree.parse(str(source)).getroot().nsmap
        if kind == "alto":  # byte for byte, only the String lines differ
            before, after = source.read_bytes().splitlines(), out.read_bytes().splitlines()
            assert len(before) == len(after)
            assert all(b"<String " in a for a, b in zip(before, after, strict=True) if a != b)

    # The filled files re-read with trocr-tune's own layout: the same lines, and the same CER as
    # the evaluate path on the ground truth's lines with the same model and settings.
    truth = _read(kind, real_pages, gt_glob, cache)
    reread = _read(kind, real_pages, f"**/*.{filled}.xml", cache)
    assert len(truth.samples) == 28
    assert sorted(s.id.split("#")[1] for s in reread.samples) == sorted(
        s.id.split("#")[1] for s in truth.samples
    )
    predicted = {s.id.split("#")[1]: s.text for s in reread.samples}
    evaluated = evaluate_bundle(engine[0], truth.samples, cfg.eval, "cpu", runner=engine[1])
    assert {r.id.split("#")[1]: r.prediction for r in evaluated.samples} == predicted
    refs = [s.text for s in truth.samples]
    from_files = compute_metrics(
        [predicted[s.id.split("#")[1]] for s in truth.samples], refs, metric_normalizer(cfg.eval)
    )
    assert from_files.cer == evaluated.metrics.cer


@pytest.mark.realdata
def test_round_trip_htromance_alto(real_pages: Path, engine) -> None:
    _round_trip(real_pages, engine, "alto", "alto-4-2.xsd")


@pytest.mark.realdata
def test_round_trip_htromance_as_page(real_pages: Path, engine) -> None:
    _round_trip(real_pages, engine, "page", "pagecontent-2019-07-15.xsd")
