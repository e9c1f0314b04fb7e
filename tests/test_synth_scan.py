"""Scan-style synthetic lines from the user's own text (--corpus), the export and pretraining-set commands."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trocr_tune.data.synth import available_fonts, missing_chars, render_scan_line, synthesize
from trocr_tune.data.synth_scan import STYLES, parse_styles
from trocr_tune.errors import UserError

from conftest import run_cli

FONTS = available_fonts(print_fonts=True)
needs_fonts = pytest.mark.skipif(len(FONTS) < 4, reason="needs the fontpkg-* fonts")
# ꝑ is drawn by one printed font (noto-sans) only; the combining tilde U+0303 by none as a glyph.
CORPUS = [
    "Ceci est mon testament olographe",
    "Je lègue à ma femme tous mes biens meubles et immeubles, fait à Versailles le 3 août 1914",
    "ELODIE",
    "la reyna ꝑ",
    "q\u0303 el rey",
]


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]


@needs_fonts
@pytest.mark.parametrize("style", ["plain", *STYLES])
def test_every_style_renders_a_grey_line_of_the_height(style: str) -> None:
    rng = np.random.default_rng(3)
    font = FONTS["kalam"]
    label_font = FONTS.get("roboto", font)
    img = render_scan_line("Fait à Versailles", font, style, rng, 48, label_font, lambda: "le 3 août 1914")
    assert img.dtype == np.uint8 and img.ndim == 2 and img.shape[0] == 48 and img.shape[1] > 48
    assert img.min() < img.max() - 40  # ink on paper, not a blank


@needs_fonts
def test_corpus_lines_styles_and_counted_skips(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n\n", encoding="utf-8")
    styles = {"form": 1, "letter": 1, "parchment": 1, "plain": 1}
    report = synthesize(
        tmp_path / "out", 160, seed=2, height=32, corpus=corpus, styles=styles, digits_fraction=0, workers=1,
        test_fraction=0,
    )  # fmt: skip
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 160
    # Without --kinds every line is corpus text: a whole line or a run of its words (maybe upper-cased).
    corpus_words = {w.upper() for line in CORPUS for w in line.split()}
    for row in rows:
        assert row["meta"]["kind"] == "corpus"
        assert set(row["text"].upper().split()) <= corpus_words, row["text"]
        font = FONTS[row["meta"]["font"]]
        assert not missing_chars(font, row["text"])  # the label is exactly what was drawn
        with Image.open(tmp_path / "out" / row["image"]) as im:
            assert im.height == 32
    assert set(report.styles) == set(styles) and sum(report.styles.values()) == 160
    # Long corpus lines survive whole (realistic lengths), and short runs of words occur too.
    lengths = [len(r["text"]) for r in rows]
    assert max(lengths) > 80 and min(lengths) <= 6
    # Only noto-sans draws ꝑ: the fonts tried before it were skipped for those lines and counted,
    # once per line drawn (a text no font draws is dropped, not counted as a skip of every font) ...
    drawn_p = [r for r in rows if "ꝑ" in r["text"]]
    assert drawn_p and all(r["meta"]["font"] == "noto-sans" for r in drawn_p)
    assert report.skipped_fonts and "noto-sans" not in report.skipped_fonts
    assert all(missing_chars(FONTS[f], "".join(CORPUS)) for f in report.skipped_fonts)
    # ... and the combining tilde, which no font draws as a glyph, is named and never rendered.
    assert "\u0303" in report.uncovered_chars
    assert not any("\u0303" in r["text"] for r in rows)
    assert any("no font draws" in note and "\u0303" in note for note in report.notes)


@needs_fonts
def test_a_text_no_font_draws_is_dropped_not_counted_as_font_skips(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("plain words here\nq\u0303 sin fuente\n", encoding="utf-8")
    report = synthesize(
        tmp_path / "out", 24, seed=1, height=24, corpus=corpus, digits_fraction=0, workers=1, test_fraction=0
    )
    assert all("\u0303" not in r["text"] for r in read_manifest(tmp_path / "out"))
    assert "\u0303" in report.uncovered_chars
    assert report.skipped_fonts == {}  # every font draws the lines that were drawn


def test_corpus_with_kinds_mixes_and_is_reproducible(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS[:3]), encoding="utf-8")
    kwargs = dict(seed=5, height=24, corpus=corpus, kinds={"corpus": 1, "date": 1}, digits_fraction=0)
    a = synthesize(tmp_path / "a", 40, styles={"form": 1}, workers=1, **kwargs)  # type: ignore[arg-type]
    b = synthesize(tmp_path / "b", 40, styles={"form": 1}, workers=2, **kwargs)  # type: ignore[arg-type]
    kinds = Counter(r["meta"]["kind"] for r in read_manifest(tmp_path / "a"))
    assert set(kinds) == {"corpus", "date"}
    assert a.counts == b.counts
    for row in read_manifest(tmp_path / "a"):
        assert (tmp_path / "a" / row["image"]).read_bytes() == (tmp_path / "b" / row["image"]).read_bytes()


def test_bad_styles_and_corpus_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown scan style 'fax'"):
        parse_styles("form=1,fax=2")
    with pytest.raises(UserError, match="not 'name=number'"):
        parse_styles("form=x")
    assert parse_styles("form=2,plain") == {"form": 2.0, "plain": 1.0}
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UserError, match="no non-empty line"):
        synthesize(tmp_path / "x", 4, corpus=empty, digits_fraction=0)
    with pytest.raises(UserError, match="needs a corpus file"):
        synthesize(tmp_path / "x", 4, kinds={"corpus": 1}, digits_fraction=0)


@needs_fonts
def test_cli_synth_corpus_reports_styles_and_uncovered(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS), encoding="utf-8")
    out = tmp_path / "out"
    result = run_cli(
        "data", "synth", "--out", str(out), "--lines", "30", "--height", "24", "--digits-fraction", "0",
        "--corpus", str(corpus), "--styles", "form=1,letter=1", "--workers", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "styles: form " in result.stdout and "no font draws: '̃'" in result.stdout
    assert len(read_manifest(out)) == 30
    bad = run_cli("data", "synth", "--out", str(out), "--lines", "3", "--styles", "fax=1")
    assert bad.returncode == 2 and "unknown scan style 'fax'" in bad.stderr


def test_export_then_pretrain_set_keep_splits_and_never_use_test(manifest_dir: Path, tmp_path: Path) -> None:
    exported = tmp_path / "exported"
    result = run_cli(
        "data", "export", "data.layout=manifest", f"data.root={manifest_dir / 'lines.jsonl'}",
        "--out", str(exported), "--height", "16", "--format", "png",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = read_manifest(exported)
    assert rows and all(Image.open(exported / r["image"]).height <= 16 for r in rows)
    # The exported folder reads back as the same samples in the same splits.
    check = run_cli("data", "check", "data.layout=manifest", f"data.root={exported / 'manifest.jsonl'}")
    assert check.returncode == 0, check.stderr
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  layout: manifest\n", encoding="utf-8")
    out = tmp_path / "pretrain"
    built = run_cli(
        "data", "pretrain-set", "--out", str(out), "--synth-lines", "0", "--real-repeat", "3",
        "--real", str(recipe), str(exported / "manifest.jsonl"),
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    pre = read_manifest(out)
    by_split = Counter(r["split"] for r in pre)
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    assert by_split["train"] == 3 * len(train) and by_split["validation"] == len(val)
    assert "test" not in by_split
    test_texts = {r["text"] for r in rows if r["split"] == "test"} - {r["text"] for r in train + val}
    assert not test_texts & {r["text"] for r in pre}
