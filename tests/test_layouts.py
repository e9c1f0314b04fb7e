"""One test (or a few) per dataset layout: records, counts and drop reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from trocr_tune.config import load_config
from trocr_tune.data.check import write_manifest
from trocr_tune.data.layouts import LAYOUTS
from trocr_tune.data.reader import MISSING_IMAGE, UNREADABLE_IMAGE, read_dataset
from trocr_tune.data.text import EMPTY
from trocr_tune.errors import UserError


def read(*overrides: str):
    return read_dataset(load_config(None, list(overrides)).data)


def texts(result, split=None):
    return sorted(s.text for s in result.samples if split is None or s.split == split)


def test_kaggle_names_counts_every_drop_and_never_shifts_labels(kaggle_dir: Path) -> None:
    r = read("data.layout=kaggle-names", f"data.root={kaggle_dir}")
    assert texts(r, "train") == ["BALTHAZAR", "SIMON", "benjamin"]
    # Validation CSV is latin-1: the UTF-8 reader keeps the ASCII row, counts the other.
    assert texts(r, "validation") == ["LUCIE"]
    assert texts(r, "test") == ["KEVIN"]
    train = r.log.by_reason("train")
    assert train["empty or NaN label"] == 2
    assert train["label UNREADABLE"] == 1
    assert train[MISSING_IMAGE] == 1
    assert train[UNREADABLE_IMAGE] == 1
    assert r.log.by_reason("test")["label EMPTY"] == 1
    assert r.log.by_reason("validation")["line not decodable as utf-8 (see data.encoding)"] == 1
    # Each label sits on its own image: the file name carries the id.
    by_id = {s.id: s for s in r.samples}
    assert by_id["train/TRAIN_00008.jpg"].text == "benjamin"
    assert by_id["train/TRAIN_00008.jpg"].image.endswith("train_v2/train/TRAIN_00008.jpg")
    assert by_id["train/TRAIN_00001.jpg"].source == "written_name_train_v2.csv:2"


def test_kaggle_names_with_declared_encoding_reads_latin1(kaggle_dir: Path) -> None:
    r = read(
        "data.layout=kaggle-names",
        f"data.root={kaggle_dir}",
        "data.encoding=latin-1",
        "data.case=upper",
    )
    assert texts(r, "validation") == ["JOSÉ", "LUCIE"]
    assert texts(r, "train") == ["BALTHAZAR", "BENJAMIN", "SIMON"]


def test_kaggle_names_bad_header_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "written_name_train_v2.csv").write_text("file,label\na.jpg,X\n")
    with pytest.raises(UserError, match=r"written_name_train_v2.csv:1: expected columns FILENAME,IDENTITY"):
        read("data.layout=kaggle-names", f"data.root={tmp_path}")


def test_rodrigo_normalisation_and_partitions(rodrigo_dir: Path) -> None:
    r = read(
        "data.layout=rodrigo",
        f"data.root={rodrigo_dir}",
        'data.replacements=[["_", " "], ["ç", "z"]]',
    )
    assert texts(r, "train") == ["de la zibdad", "el rey don rodrigo"]
    assert texts(r, "validation") == ["fue en toledo"]
    assert texts(r, "test") == ["capitulo primero"]
    reasons = r.log.by_reason()
    assert reasons["image file missing"] == 1
    assert reasons["id not listed in any partition file"] == 1
    assert reasons["partition id without transcription"] == 1
    assert reasons["transcription line without 'ID text'"] == 1
    assert r.samples[0].meta["page"].startswith("Rodrigo_0000")


def test_rodrigo_resplit_uses_everything_with_an_image(rodrigo_dir: Path) -> None:
    r = read("data.layout=rodrigo", f"data.root={rodrigo_dir}", "data.resplit=true", "data.group_by=page")
    assert len(r.samples) == 5
    pages = {}
    for s in r.samples:
        pages.setdefault(s.meta["page"], set()).add(s.split)
    assert all(len(splits) == 1 for splits in pages.values())  # no page straddles splits


def test_alto_crops_filters_and_duplicate_pages(alto_dir: Path, cache_dir: Path) -> None:
    args = ("data.layout=alto", f"data.root={alto_dir}", f"data.cache_dir={cache_dir}")
    r = read(*args)
    # page1, page2, page3 each give: 'first line', 'typed line', 'polygon only'
    assert sorted(texts(r)) == sorted(["first line", "typed line", "polygon only"] * 3)
    reasons = r.log.by_reason()
    assert reasons["XML file naming an image another XML file already gave"] == 5  # page1.xml's 5 lines
    assert reasons["line box outside the page image"] == 3
    assert reasons[EMPTY] == 3
    assert reasons["page image not found"] == 5
    assert reasons["XML file unreadable or not ALTO/PAGE"] == 1
    assert any("page1.xml (same image as ms1/page1.alt.xml)" in n for n in r.log.notes)
    sample = next(s for s in r.samples if s.text == "first line")
    assert sample.size == (200 + 8, 30 + 8)  # box + 4 px padding each side
    with Image.open(sample.image) as im:
        assert im.size == sample.size
    assert sample.meta["manuscript"] in ("ms1", "ms2")
    assert "DefaultLine:Handwritten" in sample.meta["line_type"]
    polygon_only = next(s for s in r.samples if s.text == "polygon only")
    assert polygon_only.size == (208, 43)

    # Re-reading does not re-crop: the second read finds every page in the cache.
    again = read(*args)
    assert [s.image for s in again.samples] == [s.image for s in r.samples]
    assert any("0 pages cropped, 3 read from the cache" in n for n in again.log.notes)

    handwritten = read(*args, "data.line_types=[Handwritten]", "data.xml_glob=**/page*.xml")
    assert sorted(texts(handwritten)) == sorted(["first line", "polygon only"] * 3)
    assert handwritten.log.by_reason()["line type not in data.line_types"] == 3


def test_alto_duplicate_page_policy_error(alto_dir: Path, cache_dir: Path) -> None:
    with pytest.raises(UserError, match=r"transcribe the same page image; set data\.xml_glob"):
        read(
            "data.layout=alto",
            f"data.root={alto_dir}",
            f"data.cache_dir={cache_dir}",
            "data.on_duplicate_page=error",
        )


def test_alto_polygon_mask_fills_outside_with_paper(alto_dir: Path, cache_dir: Path) -> None:
    r = read(
        "data.layout=alto",
        f"data.root={alto_dir / 'ms2'}",
        f"data.cache_dir={cache_dir}",
        "data.polygon_mask=true",
        "data.crop_padding=0",
    )
    sample = next(s for s in r.samples if s.text == "first line")
    with Image.open(sample.image) as im:
        assert im.size == (200, 30)


def test_page_xml(page_dir: Path, cache_dir: Path) -> None:
    r = read("data.layout=page", f"data.root={page_dir}", f"data.cache_dir={cache_dir}")
    assert texts(r) == [
        "first line",
        "polygon only",
        "typed line",
    ]  # index 0 TextEquiv wins; words joined
    assert r.log.by_reason()["line without box or polygon"] == 1
    headings = read(
        "data.layout=page",
        f"data.root={page_dir}",
        f"data.cache_dir={cache_dir}",
        "data.line_types=[heading]",
    )
    assert texts(headings) == ["typed line"]


def test_spanish_notary_replica_alignment(notary_dir: Path, cache_dir: Path) -> None:
    r = read("data.layout=spanish-notary", f"data.root={notary_dir}", f"data.cache_dir={cache_dir}")
    pairs = {s.meta["sentence_id"]: s.meta["box_class"] for s in r.samples}
    assert pairs == {
        "1": "Copete_summary",
        "2": "Dispositio",
        "3": "Scope of deed",
        "4": "Scope of deed",
        "5": "Dissalowance",
    }
    by_sentence = {s.meta["sentence_id"]: s for s in r.samples}
    assert by_sentence["3"].size == (
        600 + 8,
        100 + 8,
    )  # the upper Scope box (y=200) takes sentence 3
    assert by_sentence["3"].text == "para que por mi"
    reasons = r.log.by_reason()
    assert reasons["box without a confidently aligned sentence"] == 1  # Mandate
    assert reasons["sentence without a confidently aligned box"] == 1  # the 'year' sentence
    assert reasons["duplicate box (same class, IoU > 0.9)"] == 1
    assert any("1 sentences" in n and "no box file" in n for n in r.log.notes)


def test_iam(iam_dir: Path) -> None:
    r = read("data.layout=iam", f"data.root={iam_dir}", "data.group_by=writer")
    assert texts(r) == [
        "A MOVE to stop Mr. Gaitskell from",
        "life Peers is to be made at a",
        "nominating any more Labour",
    ]
    assert r.log.by_reason()["lines.txt line with fewer than 9 fields"] == 1
    assert r.log.by_reason()[MISSING_IMAGE] == 1
    err = next(s for s in r.samples if s.id == "a01-000u-01")
    assert err.meta == {"page": "a01-000u", "segmentation": "err", "writer": "000"}
    writers = {}
    for s in r.samples:
        writers.setdefault(s.meta["writer"], set()).add(s.split)
    assert all(len(v) == 1 for v in writers.values())


def test_manifest_jsonl(manifest_dir: Path) -> None:
    r = read("data.layout=manifest", f"data.root={manifest_dir / 'lines.jsonl'}")
    by_text = {s.text: s for s in r.samples}
    assert set(by_text) == {"uno", "dos", "tres"}
    assert (
        by_text["uno"].split == "train"
        and by_text["dos"].split == "validation"
        and by_text["tres"].split == "test"
    )
    assert by_text["uno"].image == str(manifest_dir / "img" / "0.png")
    assert by_text["dos"].meta == {"writer": "w1"}
    assert by_text["tres"].id == "img/2.png"  # no id column value: the image path
    reasons = r.log.by_reason()
    assert reasons["invalid JSON line"] == 1
    assert reasons[MISSING_IMAGE] == 1
    assert reasons["unknown split value"] == 1


def test_manifest_csv_tsv_and_columns(manifest_dir: Path) -> None:
    r = read(
        "data.layout=manifest",
        f"data.root={manifest_dir / 'lines.csv'}",
        "data.image_column=path",
        "data.text_column=transcription",
    )
    assert texts(r) == ["dos, con coma", "uno"]
    tsv = read("data.layout=manifest", f"data.root={manifest_dir / 'lines.tsv'}")
    assert [(s.text, s.split) for s in tsv.samples] == [("tres", "test")]
    with pytest.raises(
        UserError,
        match=r"lines.csv:1: no column 'image' \(data.image_column\); columns are: path, transcription",
    ):
        read("data.layout=manifest", f"data.root={manifest_dir / 'lines.csv'}")


def test_manifest_written_by_check_reads_back_unchanged(kaggle_dir: Path, tmp_path: Path) -> None:
    first = read("data.layout=kaggle-names", f"data.root={kaggle_dir}")
    out = tmp_path / "out" / "m.jsonl"
    write_manifest(first.samples, out)
    # The images stay in the kaggle folder, outside the manifest's own: allowed explicitly.
    again = read("data.layout=manifest", f"data.root={out}", "data.allow_outside_root=true")
    key = lambda s: (s.image, s.text, s.split, s.id, dict(s.meta))  # noqa: E731
    assert [key(s) for s in again.samples] == [key(s) for s in first.samples]
    row = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert {"image", "text", "split", "id"} <= set(row)


def test_folder_sidecars(folder_dir: Path) -> None:
    r = read("data.layout=folder", f"data.root={folder_dir}", "data.split_ratios=[1, 0, 0]")
    assert texts(r) == ["hello", "world"]
    reasons = r.log.by_reason()
    assert reasons["image without .gt.txt"] == 1
    assert reasons["sidecar .gt.txt without image"] == 1
    assert reasons["sidecar not decodable with data.encoding"] == 1
    assert {s.split for s in r.samples} == {"train"}


def test_hf_save_to_disk_and_parquet(hf_dir: Path, cache_dir: Path) -> None:
    for sub in ("disk", "parquet"):
        r = read("data.layout=hf", f"data.root={hf_dir / sub}", f"data.cache_dir={cache_dir}")
        assert texts(r, "train") == ["alpha", "beta"], sub
        assert texts(r, "test") == ["delta", "epsilon"], sub
        assert r.log.by_reason("train")[EMPTY] == 1
        for s in r.samples:
            with Image.open(s.image) as im:
                assert im.size == (60, 24)


def test_every_layout_errors_in_one_line_on_an_empty_folder(tmp_path: Path) -> None:
    for name in LAYOUTS:
        if name == "hf":
            continue
        empty = tmp_path / name
        empty.mkdir()
        with pytest.raises(UserError) as info:
            read(f"data.layout={name}", f"data.root={empty}")
        assert "\n" not in str(info.value), name


def test_missing_root_names_the_key() -> None:
    with pytest.raises(UserError, match=r"data\.root is not set"):
        read("data.layout=iam")
    with pytest.raises(UserError, match=r"data\.root does not exist"):
        read("data.layout=iam", "data.root=/nonexistent/x")
