"""Issue 18, data rows: bad rows, labels, paths, images and XML become counted skips or one-line errors.

Each test writes a tiny replica of the case on disk and reads it through the real pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

from trocr_tune.config import load_config
from trocr_tune.data.reader import ReadResult, read_dataset

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
