"""Issue 18, data rows: bad rows, labels, paths, images and XML become counted skips or one-line errors.

Each test writes a tiny replica of the case on disk and reads it through the real pipeline.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from trocr_tune.config import load_config
from trocr_tune.data.layouts.manifest import OUTSIDE_ROOT
from trocr_tune.data.reader import ReadResult, read_dataset
from trocr_tune.errors import UserError

from builders import png_claiming_size
from conftest import line_image


def read(*overrides: str) -> ReadResult:
    return read_dataset(load_config(None, list(overrides)).data)


def test_row01_unclosed_quote_drops_one_row_not_the_rest(tmp_path: Path) -> None:
    root = tmp_path / "csv"
    rows = ["image,text,split"]
    for i in range(30):
        line_image(root / "img" / f"l{i:02d}.png", f"w{i}", size=(40, 16))
        text = f'"kappa {i},train' if i == 5 else f"word {i},train"
        rows.append(f"img/l{i:02d}.png,{text}")
    rows.append("img/l01.png,two,fields,too many,train")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    r = read("data.layout=manifest", f"data.root={root}")
    texts = [s.text for s in r.samples]
    assert len(texts) == 29 and "word 6" in texts and "word 29" in texts
    assert max(len(t) for t in texts) < 10  # no row swallowed the next ones into one label
    reasons = r.log.by_reason()
    assert reasons["row with an unclosed or stray quote"] == 1
    assert reasons["row whose number of fields differs from the header"] == 1
    assert r.log.examples["row with an unclosed or stray quote"] == ["manifest.csv:7"]


def test_row03_placeholder_labels_are_dropped_in_manifests_like_kaggle(tmp_path: Path) -> None:
    root = tmp_path / "m"
    labels = ["good", "NaN", "nan", float("nan"), "UNREADABLE", "also good"]
    lines = []
    for i, label in enumerate(labels):
        line_image(root / f"{i}.png", "x", size=(40, 16))
        lines.append(json.dumps({"image": f"{i}.png", "text": label, "split": "train"}))  # NaN -> JSON NaN
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert '"text": NaN' in lines[3]
    r = read("data.layout=manifest", f"data.root={root}")
    assert [s.text for s in r.samples] == ["good", "also good"]
    reasons = r.log.by_reason()
    assert reasons["empty or NaN label"] == 3 and reasons["label UNREADABLE"] == 1


def test_row06_manifest_paths_stay_inside_the_dataset_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    line_image(root / "ok.png", "ok", size=(40, 16))
    outside = line_image(tmp_path / "secret.png", "secret", size=(40, 16))
    rows = [
        {"image": "ok.png", "text": "ok"},
        {"image": "../secret.png", "text": "up"},
        {"image": "../../../../../../etc/passwd", "text": "passwd"},
        {"image": str(outside), "text": "absolute"},
    ]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    common = ["data.layout=manifest", f"data.root={root}", "data.split_ratios=[1, 0, 0]"]
    r = read(*common)
    assert [s.text for s in r.samples] == ["ok"]
    assert (
        r.log.by_reason()["image path outside the dataset folder (data.allow_outside_root=true allows it)"]
        == 3
    )
    allowed = read(*common, "data.allow_outside_root=true")
    assert [s.text for s in allowed.samples] == ["ok", "up", "absolute"]  # passwd is no image


def test_row06_data_check_manifest_reads_its_own_images(kaggle_dir: Path, tmp_path: Path) -> None:
    from trocr_tune.data.check import check_dataset

    cfg = load_config(None, ["data.layout=kaggle-names", f"data.root={kaggle_dir}"])
    out = tmp_path / "elsewhere" / "names.jsonl"
    check_dataset(cfg, out)  # images stay in the kaggle folder, named by names.config.yaml
    again = read("data.layout=manifest", f"data.root={out}")
    assert again.samples and len(again.samples) == len(read_dataset(cfg.data).samples)
    # A sidecar naming the filesystem root (or the home folder) opens nothing outside.
    sidecar = out.with_name("names.config.yaml")
    sidecar.write_text("data:\n  root: /\n  cache_dir: /\n", encoding="utf-8")
    with pytest.raises(UserError, match=f"5 {re.escape(OUTSIDE_ROOT)}"):
        read("data.layout=manifest", f"data.root={out}")


def test_row17_drop_examples_are_filed_per_split(kaggle_dir: Path) -> None:
    from trocr_tune.config import Config
    from trocr_tune.data.check import check_dataset

    (kaggle_dir / "written_name_test_v2.csv").write_text(
        "FILENAME,IDENTITY\nTEST_0001.jpg,KEVIN\nTEST_0009.jpg,NaN\n", encoding="utf-8"
    )
    cfg = Config()
    cfg.data = load_config(None, ["data.layout=kaggle-names", f"data.root={kaggle_dir}"]).data
    report = check_dataset(cfg)
    by_split = report.drop_examples_by_split
    assert by_split["test"]["empty or NaN label"] == ["written_name_test_v2.csv:3"]
    assert all("train" in e for e in by_split["train"]["empty or NaN label"])


def test_row02_transparent_and_16_bit_images_reach_the_model_readable(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from trocr_tune.data.dataset import load_rgb

    rgba = Image.new("RGBA", (60, 20), (0, 0, 0, 0))  # transparent background, black ink
    ImageDraw.Draw(rgba).rectangle((10, 5, 30, 15), fill=(0, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    la = rgba.convert("LA")
    la.save(tmp_path / "la.png")
    palette = rgba.convert("P")
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((0, 0)))
    scan = np.full((20, 60), 4000, dtype=np.uint16)  # 12-bit paper level in a 16-bit file
    scan[5:15, 10:30] = 300  # ink
    Image.fromarray(scan).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    for name in ("rgba", "la", "p", "i16"):
        pixels = load_rgb(str(tmp_path / f"{name}.png"))
        assert pixels.shape == (20, 60, 3), name
        assert pixels[0, 0].tolist() == [255, 255, 255], name  # paper is white, not black
        assert pixels[10, 20].max() < 60, name  # ink stays dark, not clipped to white


def test_row10_decompression_bombs_are_counted_skips(tmp_path: Path) -> None:
    root = tmp_path / "m"
    line_image(root / "ok.png", "ok", size=(40, 16))
    png_claiming_size(root / "bomb.png", 20000, 20000)  # DecompressionBombError
    png_claiming_size(root / "huge.png", 10000, 10000)  # 100 MP: Pillow only warns
    rows = [{"image": n, "text": n, "split": "train"} for n in ("ok.png", "bomb.png", "huge.png")]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's raw DecompressionBombWarning
        r = read("data.layout=manifest", f"data.root={root}")
    assert [s.text for s in r.samples] == ["ok.png"]
    assert r.log.by_reason()["image over Pillow's decompression-bomb pixel limit"] == 2
    # A bomb as an ALTO page image: the page's lines are counted, nothing raises.
    pages = tmp_path / "alto"
    _alto(pages / "p.xml", "p.png", [("l1", "10", "10", "100", "20", "a line")])
    png_claiming_size(pages / "p.png", 20000, 20000)
    with pytest.raises(UserError, match=r"page image unreadable \(image over Pillow"):
        read("data.layout=alto", f"data.root={pages}", f"data.cache_dir={tmp_path / 'cache'}")


ALTO = """<?xml version="1.0" encoding="UTF-8"?>
<alto xmlns="http://www.loc.gov/standards/alto/ns-v4#">
  <Description><MeasurementUnit>pixel</MeasurementUnit>
    <sourceImageInformation><fileName>{image}</fileName></sourceImageInformation></Description>
  <Layout><Page WIDTH="400" HEIGHT="100"><PrintSpace><TextBlock ID="b1">{lines}</TextBlock>
  </PrintSpace></Page></Layout>
</alto>
"""


def _alto(path: Path, image: str, lines: list[tuple[str, str, str, str, str, str]]) -> Path:
    body = "".join(
        f'<TextLine ID="{i}" HPOS="{x}" VPOS="{y}" WIDTH="{w}" HEIGHT="{h}">'
        f'<String CONTENT="{t}"/></TextLine>'
        for i, x, y, w, h, t in lines
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ALTO.format(image=image, lines=body), encoding="utf-8")
    return path


def _alto_page(root: Path, lines: list[tuple[str, str, str, str, str, str]]) -> Path:
    line_image(root / "p.png", "a page", size=(400, 100))
    return _alto(root / "p.xml", "p.png", lines)


def test_row12_nan_and_inf_alto_coordinates_skip_the_line(tmp_path: Path) -> None:
    root = tmp_path / "alto"
    _alto_page(
        root,
        [
            ("good", "10", "10", "200", "30", "good line"),
            ("nan", "NaN", "10", "200", "30", "nan line"),
            ("inf", "10", "50", "inf", "30", "inf line"),
        ],
    )
    r = read("data.layout=alto", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.resplit=true")
    assert [s.text for s in r.samples] == ["good line"]
    assert r.log.by_reason()["line box with NaN or infinite coordinates"] == 2


def test_row18_zero_size_boxes_drop_and_clamped_boxes_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "alto"
    _alto_page(
        root,
        [
            ("good", "10", "10", "200", "30", "good line"),
            ("flat", "10", "50", "200", "0", "zero height"),
            ("thin", "10", "50", "0", "30", "zero width"),
            ("edge", "300", "60", "200", "30", "past the edge"),
        ],
    )
    r = read("data.layout=alto", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.resplit=true")
    assert sorted(s.text for s in r.samples) == ["good line", "past the edge"]
    assert r.log.by_reason()["line box of zero width or height"] == 2
    note = next(n for n in r.log.notes if "reach past their page" in n)
    assert note.startswith("1 line boxes") and "p.xml#edge" in note
    again = read(
        "data.layout=alto", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.resplit=true"
    )
    assert any("reach past their page" in n for n in again.log.notes)  # also from the crop cache


def test_row19_directory_and_bad_xml_messages_name_the_reason(tmp_path: Path) -> None:
    root = tmp_path / "m"
    line_image(root / "ok.png", "ok", size=(40, 16))
    (root / "folder.png").mkdir()
    rows = [{"image": n, "text": n, "split": "train"} for n in ("ok.png", "folder.png")]
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    r = read("data.layout=manifest", f"data.root={root}")
    assert r.log.by_reason() == {"image path is not a file (a directory?)": 1}
    broken = tmp_path / "broken.xml"
    broken.write_text("<alto><TextLine></alto>", encoding="utf-8")
    with pytest.raises(UserError, match=r"XML file unreadable.*broken.xml \(mismatched tag: line 1"):
        read("data.layout=alto", f"data.root={broken}")


def test_row13_non_utf8_yaml_and_non_string_keys_are_one_line_errors(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("data:\n  root: niño\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.yaml: not UTF-8 text \(byte 16\)"):
        load_config(latin)
    numbered = tmp_path / "numbered.yaml"
    numbered.write_text("data:\n  1: x\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"config key data.1 must be a name, got int"):
        load_config(numbered)
    top = tmp_path / "top.yaml"
    top.write_text("true: 1\n", encoding="utf-8")
    with pytest.raises(UserError, match="must be a name, got bool"):
        load_config(top)


def test_row01_tsv_text_starting_with_a_quote_is_read_as_written(tmp_path: Path) -> None:
    root = tmp_path / "tsv"
    line_image(root / "a.png", "a", size=(40, 16))
    line_image(root / "b.png", "b", size=(40, 16))
    lines = ["image\ttext\tsplit", 'a.png\t"Yes," he said\ttrain', 'b.png\t"open\ttrain\textra']
    (root / "manifest.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = read("data.layout=manifest", f"data.root={root}")
    assert [s.text for s in r.samples] == ['"Yes," he said']
    assert r.log.by_reason() == {"row with an unclosed or stray quote": 1}


def test_row06_xml_page_image_names_stay_in_the_xml_folder(tmp_path: Path) -> None:
    outside = line_image(tmp_path / "secret.png", "secret", size=(400, 100))
    lines = [("l1", "10", "10", "200", "30", "a line")]
    for name in (str(outside), "../secret.png"):
        root = tmp_path / f"alto-{len(name)}"
        _alto(root / "p.xml", name, lines)
        with pytest.raises(UserError, match="page image"):
            read("data.layout=alto", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}")
    # Transkribus exports keep the XML in page/ beside the images: that parent is looked in.
    root = tmp_path / "transkribus"
    line_image(root / "p.png", "a page", size=(400, 100))
    _alto(root / "page" / "p.xml", "p.png", lines)
    r = read("data.layout=alto", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.resplit=true")
    assert [s.text for s in r.samples] == ["a line"]
