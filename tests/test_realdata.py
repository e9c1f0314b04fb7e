"""Real handwritten ground truth from ../shared/data (skipped where it is absent)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from trocr_tune.config import load_config
from trocr_tune.data.layouts.spanish_notary import Box, align_page, reading_order
from trocr_tune.data.reader import read_dataset

from conftest import SHARED_DATA, run_cli

pytestmark = pytest.mark.realdata
HTROMANCE = SHARED_DATA / "htromance-spain"
STANFORD = SHARED_DATA / "stanford-memorials"
NOTARY = SHARED_DATA / "spanish-notary"


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crop-cache")


@pytest.fixture(scope="session")
def htromance(real_cache: Path):
    cfg = load_config(
        None,
        [
            "data.layout=alto",
            f"data.root={HTROMANCE}",
            "data.xml_glob=**/*.chocomufin.xml",
            f"data.cache_dir={real_cache}",
        ],
    )
    return read_dataset(cfg.data)


def test_htromance_every_alto_page(htromance) -> None:
    # 1,369 TextLines in the 27 chocomufin pages; 5 have no text, 2 boxes are a few pixels wide for
    # a whole line of text (vertical or broken boxes).
    assert len(htromance.samples) == 1362
    assert htromance.log.by_reason() == Counter(
        {"empty text": 5, "image narrower than its text (a vertical or broken line box)": 2}
    )
    by_id = {s.id: s for s in htromance.samples}
    first = by_id["bnf-esp-229/laberinto_2r.chocomufin#eSc_line_1b977be9"]
    assert first.text == "Las treçientas de Iuan de mena"
    assert first.meta["manuscript"] == "bnf-esp-229"
    assert Counter(s.meta["manuscript"] for s in htromance.samples) == {
        "bnf-esp-36": 467,
        "bnf-esp-229": 445,
        "bnf-esp-285": 296,
        "bnf-esp-368": 154,
    }
    texts = {s.text for s in htromance.samples}
    assert "ñl tienpo del honrrado padre boni" in texts
    # Medieval marks survive NFC: combining tilde and the Tironian et.
    alphabet = Counter(c for s in htromance.samples for c in s.text)
    assert alphabet["\u0303"] > 100 and alphabet["⁊"] > 100


def test_htromance_default_glob_detects_double_transcriptions(real_cache: Path) -> None:
    cfg = load_config(None, ["data.layout=alto", f"data.root={HTROMANCE}", f"data.cache_dir={real_cache}"])
    result = read_dataset(cfg.data)
    assert len(result.samples) == 1362  # not 2 x 1362: each page read once
    assert result.log.by_reason()["XML file naming an image another XML file already gave"] == 1369
    assert any(n.startswith("27 XML files name a page image") for n in result.log.notes)


def test_stanford_handwritten_filter(real_cache: Path) -> None:
    cfg = load_config(
        None,
        [
            "data.layout=alto",
            f"data.root={STANFORD}",
            "data.line_types=[Handwritten]",
            f"data.cache_dir={real_cache}",
        ],
    )
    result = read_dataset(cfg.data)
    # 110 DefaultLine:Handwritten + 1 InterlinearLine:Handwritten, one of them empty.
    assert len(result.samples) == 110
    reasons = result.log.by_reason()
    assert reasons["line type not in data.line_types"] == 158 + 52 + 4  # typewritten, print, signature
    assert all("Handwritten" in s.meta["line_type"] for s in result.samples)
    texts = {s.text for s in result.samples}
    assert {"Write", "Tuesday,", "March 21st, 1905", "o'clock"} <= texts


def _notary(real_cache: Path):
    cfg = load_config(
        None, ["data.layout=spanish-notary", f"data.root={NOTARY}", f"data.cache_dir={real_cache}"]
    )
    return read_dataset(cfg.data)


def test_spanish_notary_page18_pairs_all_ten_boxes(real_cache: Path) -> None:
    result = _notary(real_cache)
    page18 = sorted(
        (s for s in result.samples if s.meta["page"] == "18"),
        key=lambda s: int(s.meta["sentence_id"]),
    )
    assert [s.meta["sentence_id"] for s in page18] == [str(i) for i in range(894, 904)]
    classes = [s.meta["box_class"].split("_")[0] for s in page18]
    assert classes == [
        "Copete",
        "Notificatio",
        "Dispositio",
        "Scope of deed",
        "Assets",
        "Scope of deed",
        "Scope of deed",
        "Disallowance",
        "Scope of deed",
        "Scope of deed",
    ]
    assert page18[0].text.startswith("poder para cobrar al comiso juannabarro")
    # Box names are never used as text.
    assert not any(s.text.startswith("R38,") for s in result.samples)


def test_spanish_notary_pages_100_101_report_unpaired(real_cache: Path) -> None:
    result = _notary(real_cache)
    pairs = {
        s.meta["sentence_id"]: s.meta["box_class"] for s in result.samples if s.meta["page"] in ("100", "101")
    }
    assert pairs == {
        "148": "Notificatio_name and residence of parties",
        "149": "Circumstances of parties",
        "150": "Dispositio",
        "155": "Notificatio",
        "161": "Delegation of Authority",
    }
    reasons = result.log.by_reason()
    # page 100: 'header' box; page 101: 8 of its 10 distinct boxes.
    assert reasons["box without a confidently aligned sentence"] == 1 + 8
    assert reasons["duplicate box (same class, IoU > 0.9)"] == 1  # the twin Dissalowance box of 101
    assert reasons["sentence without a confidently aligned box"] == 15 - 2  # page 101
    unpaired = result.log.examples["box without a confidently aligned sentence"]
    assert unpaired[0] == "100.xml#box0 'header'"


def test_notary_reading_order_puts_margin_column_first() -> None:
    boxes = [
        Box(0, "Main", 1996, 77, 3596, 371),
        Box(1, "Copete", 1480, 196, 2004, 674),
        Box(2, "Main2", 1973, 393, 3683, 849),
    ]
    assert [b.index for b in reading_order(boxes)] == [1, 0, 2]
    empty = align_page(boxes, [])
    assert empty.pairs == [] and len(empty.unpaired_boxes) == 3


def test_data_check_cli_htromance_group_split_by_manuscript(
    htromance, real_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    manifest = tmp_path / "lines.jsonl"
    start = time.perf_counter()
    proc = run_cli(
        "data",
        "check",
        "data.layout=alto",
        f"data.root={HTROMANCE}",
        "data.xml_glob=**/*.chocomufin.xml",
        "data.group_by=manuscript",
        f"data.cache_dir={real_cache}",
        "--json",
        str(out),
        "--manifest",
        str(manifest),
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text(encoding="utf-8"))
    assert sum(s["samples"] for s in report["splits"].values()) == 1362
    assert "0 pages cropped, 27 read from the cache" in proc.stdout
    # No manuscript straddles two splits.
    split_of: dict[str, set[str]] = {}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        split_of.setdefault(row["meta"]["manuscript"], set()).add(row["split"])
        assert Path(row["image"]).is_file()
    assert all(len(v) == 1 for v in split_of.values()) and len(split_of) == 4
    assert {s for v in split_of.values() for s in v} == {"train", "validation", "test"}
    assert (tmp_path / "lines.config.yaml").is_file()
    assert elapsed < 60, f"data check took {elapsed:.1f} s with a warm crop cache"


def test_a_score_on_pages_split_line_by_line_says_the_hands_were_seen(real_cache: Path) -> None:
    """Stanford letters split line by line: half of them have lines in training and in validation or
    test, and both the reader's notes and evaluate's report say so, naming data.group_by."""
    from trocr_tune.evaluate import evaluate_model

    overrides = [
        "data.layout=alto",
        f"data.root={STANFORD}",
        "data.line_types=[Handwritten]",
        f"data.cache_dir={real_cache}",
        "data.limit=4",
        "eval.num_beams=1",
    ]
    [note] = [n for n in read_dataset(load_config(None, overrides).data).log.notes if "one by one" in n]
    assert note.startswith("lines were split one by one: 3 of 6 manuscripts have lines in training")
    assert note.endswith("data.group_by=manuscript keeps each manuscript in one split")
    report = evaluate_model("trocr-tune/base-htr", load_config(None, overrides))
    assert note in report.notes
    grouped = evaluate_model(
        "trocr-tune/base-htr", load_config(None, [*overrides, "data.group_by=manuscript"])
    )
    assert not any("one by one" in n for n in grouped.notes)
