"""Tiny on-disk replicas of every dataset layout, each with the malformed cases users meet."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not SHARED_DATA.is_dir():
        skip = pytest.mark.skip(reason=f"real data not found at {SHARED_DATA}")
        for item in items:
            if "realdata" in item.keywords:
                item.add_marker(skip)


def line_image(path: Path, text: str, size: tuple[int, int] | None = None, mode: str = "L") -> Path:
    """Write a small image of `text` (black on light paper)."""
    width, height = size or (max(32, 9 * len(text) + 10), 32)
    im = Image.new(mode, (width, height), 235 if mode == "L" else (235, 230, 220))
    ImageDraw.Draw(im).text((5, 8), text, fill=0 if mode == "L" else (20, 20, 20))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


PAGE_WORDS = (
    "the quick brown fox",
    "jumps over a lazy dog",
    "pack my box with",
    "five dozen liquor jugs",
    "sphinx",
)


def scanned_page(
    path: Path, columns: int = 2, rotate: float = 0.0
) -> list[list[tuple[float, float, float, float]]]:
    """A grey page with ruled lines, a dark scan border and `columns` columns of five text lines;
    returns each column's text boxes (before rotation)."""
    width, pitch = 420 * columns + 80, 56
    im = Image.new("L", (width, 480), 214)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=26)
    for y in range(70, 470, pitch):  # ruled paper, across the whole page
        draw.line([(0, y + 34), (width, y + 34)], fill=150, width=2)
    draw.rectangle([0, 0, 6, 479], fill=20)  # the scanner lid's edge
    boxes: list[list[tuple[float, float, float, float]]] = []
    for c in range(columns):
        column = []
        for i, text in enumerate(PAGE_WORDS):
            x, y = 40 + c * 420, 70 + i * pitch
            draw.text((x, y), text, fill=35, font=font)
            column.append(tuple(float(v) for v in draw.textbbox((x, y), text, font=font)))
        boxes.append(column)
    if rotate:
        im = im.rotate(rotate, resample=Image.Resampling.BICUBIC, fillcolor=214)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return boxes  # type: ignore[return-value]


def corrupt_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return path


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    """Kaggle handwriting-recognition replica: good rows, NaN/empty/UNREADABLE labels,
    a missing image, a corrupt image, and a validation CSV in latin-1 (not UTF-8)."""
    root = tmp_path / "kaggle"
    rows = {
        "train": [
            ("TRAIN_00001.jpg", "BALTHAZAR"),
            ("TRAIN_00002.jpg", "SIMON"),
            ("TRAIN_00003.jpg", ""),  # empty label
            ("TRAIN_00004.jpg", "NaN"),  # pandas-style NaN
            ("TRAIN_00005.jpg", "UNREADABLE"),
            ("TRAIN_00006.jpg", "MISSING"),  # image file missing
            ("TRAIN_00007.jpg", "CORRUPT"),  # image bytes corrupt
            ("TRAIN_00008.jpg", "benjamin"),
        ],
        "validation": [("VALIDATION_0001.jpg", "JOSÉ"), ("VALIDATION_0002.jpg", "LUCIE")],
        "test": [("TEST_0001.jpg", "KEVIN"), ("TEST_0002.jpg", "EMPTY")],
    }
    for split, items in rows.items():
        folder = root / f"{split}_v2" / split
        for name, text in items:
            if text == "MISSING":
                continue
            if text == "CORRUPT":
                corrupt_image(folder / name)
            else:
                line_image(folder / name, text or "x")
        lines = ["FILENAME,IDENTITY"] + [f"{n},{t}" for n, t in items]
        encoding = "latin-1" if split == "validation" else "utf-8"
        (root / f"written_name_{split}_v2.csv").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return root


@pytest.fixture
def rodrigo_dir(tmp_path: Path) -> Path:
    """Rodrigo replica: '_' and 'ç' in texts, a line without text, a transcription whose image
    is missing, an id in no partition, a partition id without transcription."""
    root = tmp_path / "rodrigo"
    texts = {
        "Rodrigo_00006_00": "el_rey_don_rodrigo",
        "Rodrigo_00006_01": "de_la_çibdad",
        "Rodrigo_00007_00": "fue_en_toledo",
        "Rodrigo_00007_01": "capitulo_primero",
        "Rodrigo_00008_00": "sin_imagen",
        "Rodrigo_00009_00": "fuera_de_particion",
    }
    for sample_id, text in texts.items():
        if sample_id != "Rodrigo_00008_00":
            line_image(root / "images" / f"{sample_id}.png", text)
    lines = [f"{k} {v}" for k, v in texts.items()] + ["Rodrigo_00010_00"]
    (root / "text").mkdir(parents=True)
    (root / "text" / "transcriptions.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    parts = root / "partitions"
    parts.mkdir()
    (parts / "train.txt").write_text("Rodrigo_00006_00\nRodrigo_00006_01\nRodrigo_00008_00\n")
    (parts / "validation.txt").write_text("Rodrigo_00007_00\n")
    (parts / "test.txt").write_text("Rodrigo_00007_01\nRodrigo_00099_00\n")
    return root


ALTO_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>{image}</fileName></sourceImageInformation></Description>
  <Tags>
    <OtherTag ID="LT1" LABEL="DefaultLine:Handwritten"/>
    <OtherTag ID="LT2" LABEL="DefaultLine:Typewritten"/>
  </Tags>
  <Layout><Page WIDTH="400" HEIGHT="200"><PrintSpace>
    <TextBlock ID="b1">
      <TextLine ID="l1" TAGREFS="LT1" HPOS="10" VPOS="10" WIDTH="200" HEIGHT="30">
        <Shape><Polygon POINTS="10 10 210 10 210 40 10 40"/></Shape>
        <String CONTENT="first"/><SP/><String CONTENT="line"/>
      </TextLine>
      <TextLine ID="l2" TAGREFS="LT2" HPOS="10" VPOS="60" WIDTH="150" HEIGHT="30">
        <String CONTENT="typed line"/>
      </TextLine>
      <TextLine ID="l3" TAGREFS="LT1" HPOS="10" VPOS="100" WIDTH="150" HEIGHT="30">
        <String CONTENT=""/>
      </TextLine>
      <TextLine ID="l4" TAGREFS="LT1" HPOS="900" VPOS="900" WIDTH="50" HEIGHT="30">
        <String CONTENT="outside the page"/>
      </TextLine>
      <TextLine ID="l5" TAGREFS="LT1">
        <Shape><Polygon POINTS="20,140 220,140 220,175 20,175"/></Shape>
        <String CONTENT="polygon only"/>
      </TextLine>
    </TextBlock>
  </PrintSpace></Page></Layout>
</alto>
"""


def _page_image(path: Path) -> None:
    im = Image.new("RGB", (400, 200), (230, 225, 210))
    draw = ImageDraw.Draw(im)
    for y, text in ((15, "first line"), (65, "typed line"), (145, "polygon only")):
        draw.text((15, y), text, fill=(30, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture
def alto_dir(tmp_path: Path) -> Path:
    """Two manuscripts; ms1 has a page transcribed twice (page1.xml + page1.alt.xml), a line
    outside the page, an empty line and a polygon-only line; ms2 has an XML without image."""
    root = tmp_path / "alto"
    for ms, page in (("ms1", "page1"), ("ms1", "page2"), ("ms2", "page3")):
        _page_image(root / ms / f"{page}.jpg")
        (root / ms / f"{page}.xml").write_text(ALTO_TEMPLATE.format(image=f"{page}.jpg"), encoding="utf-8")
    (root / "ms1" / "page1.alt.xml").write_text(ALTO_TEMPLATE.format(image="page1.jpg"), encoding="utf-8")
    (root / "ms2" / "lost.xml").write_text(ALTO_TEMPLATE.format(image="lost.jpg"), encoding="utf-8")
    (root / "ms2" / "broken.xml").write_text("<alto><unclosed>", encoding="utf-8")
    return root


PAGE_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15">
  <Page imageFilename="{image}" imageWidth="400" imageHeight="200">
    <TextRegion id="r1" type="paragraph">
      <Coords points="0,0 400,0 400,200 0,200"/>
      <TextLine id="l1"><Coords points="10,10 210,10 210,40 10,40"/>
        <TextEquiv><Unicode>first line</Unicode></TextEquiv></TextLine>
      <TextLine id="l2" custom="structure {{type:heading;}}"><Coords points="10,60 160,60 160,90 10,90"/>
        <TextEquiv index="1"><Unicode>wrong variant</Unicode></TextEquiv>
        <TextEquiv index="0"><Unicode>typed line</Unicode></TextEquiv></TextLine>
      <TextLine id="l3"><Coords points="20,140 220,140 220,175 20,175"/>
        <Word id="w1"><Coords points="20,140 80,140 80,175 20,175"/>
          <TextEquiv><Unicode>polygon</Unicode></TextEquiv></Word>
        <Word id="w2"><Coords points="90,140 220,140 220,175 90,175"/>
          <TextEquiv><Unicode>only</Unicode></TextEquiv></Word>
      </TextLine>
      <TextLine id="l4"><TextEquiv><Unicode>no coords</Unicode></TextEquiv></TextLine>
    </TextRegion>
  </Page>
</PcGts>
"""


@pytest.fixture
def page_dir(tmp_path: Path) -> Path:
    root = tmp_path / "page"
    _page_image(root / "p1.png")
    (root / "p1.xml").write_text(PAGE_TEMPLATE.format(image="p1.png"), encoding="utf-8")
    return root


@pytest.fixture
def notary_dir(tmp_path: Path) -> Path:
    """One page (R7, Img5): a margin Copete, a main column of Dispositio / Scope / Scope /
    Disallowance boxes (XML order shuffled), a duplicated box; sentences for 5 plus a page 6."""
    root = tmp_path / "notary"
    images = root / "Images"
    images.mkdir(parents=True)
    Image.new("L", (1000, 800), 220).save(images / "5.jpg")
    boxes = [
        ("R7,Img5_Scope of deed", (300, 400, 900, 500)),
        ("R7,Img5_Copete_summary", (10, 20, 250, 200)),
        ("R7,Img5_Dispositio", (300, 20, 900, 150)),
        ("R7,Img5_Scope of deed", (300, 200, 900, 300)),
        ("R7,Img5_Dissalowance", (300, 600, 900, 700)),
        ("R7,Img5_Dissalowance", (301, 601, 899, 699)),  # labelImg double-click duplicate
        ("R7,Img5_Mandate", (300, 720, 900, 790)),  # no sentence of this class
    ]
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for name, (a, b, c, d) in boxes
    )
    (images / "5.xml").write_text(
        f"<annotation><filename>5.jpg</filename>{objects}</annotation>", encoding="utf-8"
    )
    records = [
        (1, 5, ["Copete"], "poder para cobrar"),
        (2, 5, ["Dispositio"], "otorgo que doy todo mi poder"),
        (3, 5, ["Scope"], "para que por mi"),
        (4, 5, ["Scope"], "y que me deven"),
        (5, 5, ["Disallowance"], "y si las pagas"),
        (6, 5, ["year"], "año de mill"),
        (7, 6, ["Scope"], "otra pagina"),
    ]
    data = {
        "records": [
            {
                "id": str(i),
                "rollo_number": 7,
                "image_number": img,
                "class_label": labels,
                "extended_class_label": labels,
                "content": text,
            }
            for i, img, labels, text in records
        ]
    }
    (root / "Labeled Data.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.fixture
def iam_dir(tmp_path: Path) -> Path:
    root = tmp_path / "iam"
    lines = [
        "#--- lines.txt ---",
        "# format: a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from",
        "a01-000u-00 ok 154 19 408 746 1661 89 A|MOVE|to|stop|Mr.|Gaitskell|from",
        "a01-000u-01 err 156 19 395 932 1850 105 nominating|any|more|Labour",
        "a01-000x-00 ok 157 16 408 1106 1986 104 life|Peers|is|to|be|made|at|a",
        "a01-000x-01 ok 157",  # malformed
        "b02-010-00 ok 160 10 400 700 1500 90 missing|image",
    ]
    (root / "ascii").mkdir(parents=True)
    (root / "ascii" / "lines.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "ascii" / "forms.txt").write_text(
        "# comment\na01-000u 000 2 prt 7 5 52 36\na01-000x 001 2 prt 7 5 52 36\n", encoding="utf-8"
    )
    for line_id in ("a01-000u-00", "a01-000u-01", "a01-000x-00"):
        form = line_id.rsplit("-", 1)[0]
        line_image(root / "lines" / "a01" / form / f"{line_id}.png", line_id)
    return root


@pytest.fixture
def manifest_dir(tmp_path: Path) -> Path:
    """Images plus a JSONL, a CSV and a TSV manifest, with a bad JSON line, a missing image,
    an unknown split and a relative + an absolute image path."""
    root = tmp_path / "manifest"
    for i, text in enumerate(["uno", "dos", "tres", "cuatro"]):
        line_image(root / "img" / f"{i}.png", text)
    rows = [
        {"image": "img/0.png", "text": "uno", "split": "train", "id": "a"},
        {
            "image": str(root / "img" / "1.png"),
            "text": "dos",
            "split": "valid",
            "id": "b",
            "meta": {"writer": "w1"},
        },
        {"image": "img/2.png", "text": "tres", "split": "test"},
        {"image": "img/9.png", "text": "missing", "split": "train"},
        {"image": "img/3.png", "text": "cuatro", "split": "holdout"},
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines.insert(2, "{not json")
    (root / "lines.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "lines.csv").write_text(
        'path,transcription\nimg/0.png,uno\nimg/1.png,"dos, con coma"\n', encoding="utf-8"
    )
    (root / "lines.tsv").write_text("image\ttext\tsplit\nimg/2.png\ttres\ttest\n", encoding="utf-8")
    return root


@pytest.fixture
def folder_dir(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    line_image(root / "a" / "l1.png", "hello")
    (root / "a" / "l1.gt.txt").write_text("hello\n", encoding="utf-8")
    line_image(root / "a" / "l2.png", "world")
    (root / "a" / "l2.gt.txt").write_text("  world  ", encoding="utf-8")
    line_image(root / "b" / "l3.jpg", "no sidecar")
    (root / "b" / "l4.gt.txt").write_text("no image", encoding="utf-8")
    line_image(root / "b" / "l5.png", "latin")
    (root / "b" / "l5.gt.txt").write_bytes("niño".encode("latin-1"))
    return root


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    datasets = pytest.importorskip("datasets")
    images = [Image.new("L", (60, 24), 200 + i) for i in range(5)]
    texts = ["alpha", "beta", "", "delta", "epsilon"]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    train = datasets.Dataset.from_dict({"image": images[:3], "text": texts[:3]}, features=features)
    test = datasets.Dataset.from_dict({"image": images[3:], "text": texts[3:]}, features=features)
    root = tmp_path / "hf"
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "disk"))
    (root / "parquet").mkdir(parents=True)
    train.to_parquet(str(root / "parquet" / "train-00000-of-00001.parquet"))
    test.to_parquet(str(root / "parquet" / "test-00000-of-00001.parquet"))
    return root


def trocr_tune_bin() -> str:
    """The installed console script (the real entry point users run)."""
    candidate = Path(sys.executable).parent / "trocr-tune"
    found = str(candidate) if candidate.exists() else shutil.which("trocr-tune")
    if not found:
        pytest.skip("trocr-tune console script not installed")
    return found


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="160", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [trocr_tune_bin(), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def run_main(*args: str) -> subprocess.CompletedProcess[str]:
    """The console-script function (`trocr_tune.cli:main`) in this process, read as run_cli reads
    the installed script: exit code, stdout, stderr. For the second and later calls of a test to a
    command that loads a model (each new interpreter imports torch and Transformers again: ~8 s)."""
    from trocr_tune.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as ended:
            code = ended.code
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    return subprocess.CompletedProcess(["trocr-tune", *args], returncode, out.getvalue(), err.getvalue())


TINY_MODEL = [
    "model.preset=tiny",
    "model.image_height=32",
    "model.image_width=128",
    "train.num_workers=0",
    "train.logging_steps=5",
]


@pytest.fixture(scope="session")
def words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rendered words as a manifest: 12 train lines, the first 4 again as validation and test."""
    from builders import word_manifest

    return word_manifest(tmp_path_factory.mktemp("words"))


@pytest.fixture(scope="session")
def tiny_run(words: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short training run (tiny preset) shared by evaluation, optimization and benchmark tests."""
    from trocr_tune.config import load_config
    from trocr_tune.train import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        None,
        [
            "data.layout=manifest",
            f"data.root={words}",
            *TINY_MODEL,
            "train.max_steps=30",
            "train.eval_steps=15",
            "model.dropout=0",
            "train.learning_rate=3e-3",
            f"train.output_dir={out}",
        ],
    )
    train(cfg)
    return out
