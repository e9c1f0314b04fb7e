"""Synthetic handwriting renderer: fonts, determinism, splits, manifest, digits, speed."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trocr_tune.data import synth
from trocr_tune.data.ink import DIGITS_FONT
from trocr_tune.data.synth import (
    CHAR_CLASSES,
    SPLITS,
    available_fonts,
    caps_only,
    font_report,
    missing_chars,
    render_line,
    synthesize,
)
from trocr_tune.data.synth_text import (
    CORPORA,
    KINDS,
    all_corpus_chars,
    clean_text,
    load_corpus,
    sample_text,
)
from trocr_tune.errors import UserError

FONTS = available_fonts()
ALL_FONTS = available_fonts(print_fonts=True)  # + the printed training fonts
needs_fonts = pytest.mark.skipif(len(FONTS) < 3, reason="needs >= 3 fontpkg-* fonts installed")
try:
    import sklearn  # noqa: F401

    HAS_SKLEARN = True
except ImportError:
    HAS_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAS_SKLEARN, reason="needs scikit-learn")


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text("utf-8").splitlines()]


def image_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], synth.SynthReport]:
    if len(FONTS) < 3 or not HAS_SKLEARN:
        pytest.skip("needs fonts and scikit-learn")
    out = tmp_path_factory.mktemp("synth")
    fractions = {"val_fraction": 0.1, "test_fraction": 0.2, "digits_fraction": 0.3}
    report = synthesize(out, 160, seed=3, height=48, **fractions)
    return out, read_manifest(out), report


@needs_fonts
def test_fonts_render_char_classes() -> None:
    report = font_report()
    corpus_chars = all_corpus_chars()
    for name, classes in report.items():
        failed = {cls: chars for cls, chars in classes.items() if chars}
        other = missing_chars(ALL_FONTS[name], corpus_chars)  # informative: these texts get skipped
        verdict = f"FAILS {failed}" if failed else "all classes render"
        print(f"{name:20s} {verdict}; other corpus chars missing: {other!r}")
        assert set(classes) == set(CHAR_CLASSES)
        for cls, chars in classes.items():
            assert set(chars) <= set(CHAR_CLASSES[cls])


@needs_fonts
def test_missing_glyph_is_detected_and_refused() -> None:
    path = next(iter(FONTS.values()))
    assert missing_chars(path, "Año 中\ue000") == "".join(sorted("中\ue000"))
    with pytest.raises(ValueError, match="cannot draw"):
        render_line("中", path, np.random.default_rng(0))


@needs_fonts
def test_caps_only_detection() -> None:
    flags = {name: caps_only(path) for name, path in FONTS.items()}
    if "permanent-marker" in flags:  # its lowercase letters are small capitals
        assert flags["permanent-marker"]
    assert not all(flags.values())


@needs_fonts
def test_renderer_never_uses_a_font_for_text_it_cannot_draw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = sorted(FONTS)[0]
    banned = set("ÁÉÍÓÚáéíóúÑñ")
    real = synth._drawable
    monkeypatch.setattr(
        synth,
        "_drawable",
        lambda p, c: not (p == str(FONTS[victim]) and c in banned) and real(p, c),
    )
    fonts = {n: FONTS[n] for n in sorted(FONTS)[:3]}
    kinds = {"name": 1.0, "word_es": 1.0, "phrase_es": 1.0}
    synthesize(tmp_path, 90, seed=1, fonts=fonts, kinds=kinds, test_fraction=0, digits_fraction=0)
    records = read_manifest(tmp_path)
    used = [r for r in records if r["meta"]["font"] == victim]
    assert used, "the victim font should still render texts it can draw"
    assert all(not banned & set(r["text"]) for r in used)
    assert any(banned & set(r["text"]) for r in records)  # other fonts still get accents


@needs_fonts
@needs_sklearn
def test_same_seed_same_bytes_and_prefix_stable(tmp_path: Path) -> None:
    a, b, c, short = (tmp_path / n for n in ("a", "b", "c", "short"))
    synthesize(a, 24, seed=5)
    synthesize(b, 24, seed=5)
    synthesize(c, 24, seed=6)
    synthesize(short, 9, seed=5)
    assert image_bytes(a) == image_bytes(b)
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    differ = [n for n, data in image_bytes(a).items() if image_bytes(c)[n] != data]
    assert len(differ) >= 20
    # Sample i depends only on (seed, i): a shorter run reproduces the first images exactly.
    first = image_bytes(short)
    assert first == {n: d for n, d in image_bytes(a).items() if n in first}


@needs_fonts
@needs_sklearn
def test_workers_give_identical_bytes(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    synthesize(tmp_path / "one", 40, seed=2)
    synthesize(tmp_path / "two", 40, seed=2, workers=2, progress=lambda d, n: calls.append((d, n)))
    assert image_bytes(tmp_path / "one") == image_bytes(tmp_path / "two")
    one, two = (tmp_path / "one/manifest.jsonl", tmp_path / "two/manifest.jsonl")
    assert one.read_bytes() == two.read_bytes()
    assert calls[-1] == (40, 40)


def test_font_disjoint_split(dataset: tuple[Path, list[dict], synth.SynthReport]) -> None:
    _, records, report = dataset
    fonts = {s: {r["meta"]["font"] for r in records if r["split"] == s} for s in SPLITS}
    fonts = {s: names - {DIGITS_FONT} for s, names in fonts.items()}
    assert fonts["test"], "the test split should have font lines"
    assert not fonts["test"] & (fonts["train"] | fonts["validation"])
    assert fonts["test"] <= set(synth.choose_test_fonts(FONTS, None))
    assert report.counts == {s: sum(r["split"] == s for r in records) for s in SPLITS}
    assert all(report.counts[s] > 0 for s in SPLITS)


@needs_fonts
def test_explicit_test_fonts(tmp_path: Path) -> None:
    held = sorted(FONTS)[0]
    report = synthesize(tmp_path, 40, seed=0, test_fonts=[held], digits_fraction=0)
    assert report.fonts["test"] == [held]
    assert held not in report.fonts["train"] + report.fonts["validation"]
    with pytest.raises(UserError, match="not installed"):
        synthesize(tmp_path, 5, test_fonts=["no-such-font"], digits_fraction=0)
    with pytest.raises(UserError, match="no font for train"):
        synthesize(tmp_path, 5, test_fonts=list(FONTS), digits_fraction=0, print_fonts=False)


def printed_fonts_or_skip() -> set[str]:
    printed = set(ALL_FONTS) - set(FONTS)
    if not printed:
        pytest.skip("no fontpkg printed font installed")
    return printed


def assert_same_test_lines(*outs: Path) -> None:
    """Every output folder holds the very same test records and test images, byte for byte."""
    first, *others = ([r for r in read_manifest(out) if r["split"] == "test"] for out in outs)
    assert first and all(records == first for records in others)
    for r in first:
        images = {(out / r["image"]).read_bytes() for out in outs}
        assert len(images) == 1, r["image"]


@needs_fonts
def test_print_fonts_only_train_and_leave_test_lines_unchanged(tmp_path: Path) -> None:
    printed = printed_fonts_or_skip()
    kw = {"seed": 0, "height": 32, "digits_fraction": 0.0, "val_fraction": 0.1, "test_fraction": 0.2}
    on = synthesize(tmp_path / "on", 120, **kw)
    off = synthesize(tmp_path / "off", 120, print_fonts=False, **kw)
    assert printed & set(on.fonts["train"]) and not printed & set(on.fonts["test"])
    assert not printed & set(off.fonts["train"] + off.fonts["validation"] + off.fonts["test"])
    assert on.fonts["test"] == off.fonts["test"]
    # Adding training fonts changes no test line: the held-out comparison stays like for like.
    assert_same_test_lines(tmp_path / "on", tmp_path / "off")


@needs_fonts
def test_print_share_sets_the_printed_fraction_and_leaves_test_lines_unchanged(tmp_path: Path) -> None:
    printed = printed_fonts_or_skip()
    kw = {"seed": 3, "height": 16, "digits_fraction": 0.0, "val_fraction": 0.0, "test_fraction": 0.1}
    shares = {}
    for share in (0.1, 0.9, None):
        synthesize(tmp_path / str(share), 400, print_share=share, **kw)
        records = read_manifest(tmp_path / str(share))
        train = [r for r in records if r["split"] == "train"]
        shares[share] = sum(r["meta"]["font"] in printed for r in train) / len(train)
    # 360 training lines: binomial standard deviation <= 0.026 around the requested share.
    assert abs(shares[0.1] - 0.1) < 0.06 and abs(shares[0.9] - 0.9) < 0.06
    n_hands = len(set(ALL_FONTS) - printed) - 2  # two handwriting fonts are held out
    by_count = len(printed) / (len(printed) + n_hands)
    assert abs(shares[None] - by_count) < 0.1
    assert_same_test_lines(*(tmp_path / str(share) for share in (None, 0.1, 0.9)))
    with pytest.raises(UserError, match="print_share"):
        synthesize(tmp_path / "bad", 5, print_share=1.5, **kw)


def test_manifest_schema_and_images(dataset: tuple[Path, list[dict], synth.SynthReport]) -> None:
    out, records, _ = dataset
    assert len(records) == 160
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"image", "text", "split", "id", "meta"}
        assert r["split"] in SPLITS and r["id"] == f"synth-{Path(r['image']).stem}"
        assert r["image"].startswith("images/") and r["image"].endswith(".png")
        assert isinstance(r["meta"]["font"], str) and isinstance(r["meta"]["kind"], str)
        with Image.open(out / r["image"]) as im:
            assert im.mode == "L" and im.height == 48 and im.width >= 8
        if r["meta"]["font"] != DIGITS_FONT and caps_only(ALL_FONTS[r["meta"]["font"]]):
            assert r["text"] == r["text"].upper()
    raw = (out / "manifest.jsonl").read_text("utf-8")
    assert "\\u00" not in raw  # ensure_ascii=False keeps accents readable


@needs_sklearn
def test_digit_lines_use_their_split_partition(
    dataset: tuple[Path, list[dict], synth.SynthReport],
) -> None:
    from sklearn.datasets import load_digits

    from trocr_tune.data.synth_digits import digit_partition, digit_split_of

    labels = load_digits().target
    parts = digit_partition()
    owners = [set(np.concatenate(list(parts[s].values())).tolist()) for s in SPLITS]
    assert sum(map(len, owners)) == len(labels) == len(set().union(*owners))
    _, records, _ = dataset
    digit_lines = [r for r in records if r["meta"]["font"] == DIGITS_FONT]
    assert {r["split"] for r in digit_lines} == set(SPLITS)
    for r in digit_lines:
        ids = [int(i) for i in r["meta"]["digit_ids"].split(",")]
        assert all(digit_split_of(i) == r["split"] for i in ids)
        assert [str(labels[i]) for i in ids] == [c for c in r["text"] if c.isdigit()]
        assert set(r["text"]) <= set("0123456789/.,- ")


def test_texts_are_nfc_and_whitespace_clean(
    dataset: tuple[Path, list[dict], synth.SynthReport],
) -> None:
    _, records, _ = dataset
    rng = np.random.default_rng(0)
    corpus = ("  Fait  à\tVersailles ", "le 3 août 1914")
    texts = [r["text"] for r in records] + [sample_text(rng, k, corpus) for k in KINDS for _ in range(100)]
    for text in texts:
        assert text == unicodedata.normalize("NFC", text) == clean_text(text) and text
        assert "  " not in text


def test_corpora_are_embedded_and_clean() -> None:
    for name in CORPORA:
        entries = load_corpus(name)
        assert len(entries) >= 100, name
        assert all(e == clean_text(e) for e in entries)
    spanish = "".join(load_corpus("words_es") + load_corpus("phrases_es"))
    assert set("áéíóúñü¿¡") <= set(spanish)


def test_unknown_kind_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid kinds"):
        synthesize(tmp_path, 5, kinds={"poems": 1.0})


@needs_fonts
def test_missing_sklearn_gives_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trocr_tune.data import synth_digits

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    synth_digits._load.cache_clear()
    synth_digits.digit_partition.cache_clear()
    try:
        with pytest.raises(UserError, match="scikit-learn"):
            synthesize(tmp_path, 5, digits_fraction=0.5)
        report = synthesize(tmp_path, 5, digits_fraction=0)  # font lines need no sklearn
        assert sum(report.counts.values()) == 5
    finally:
        synth_digits._load.cache_clear()
        synth_digits.digit_partition.cache_clear()


@needs_fonts
@needs_sklearn
def test_speed_is_measured(tmp_path: Path) -> None:
    synthesize(tmp_path / "warm", 20, seed=9)  # caches: fonts, glyphs, digits
    start = time.perf_counter()
    report = synthesize(tmp_path / "timed", 200, seed=10)
    elapsed = time.perf_counter() - start
    rate = report.lines_per_second
    print(f"synth speed: {200 / elapsed:.0f} lines/s end to end ({rate:.0f} rendering)")
    assert report.lines_per_second > 0


@needs_sklearn
def test_without_fonts_every_line_is_real_digits(tmp_path: Path) -> None:
    report = synthesize(tmp_path, 30, seed=4, fonts={})
    assert report.notes and report.fonts["train"] == [DIGITS_FONT]
    assert {r["meta"]["font"] for r in read_manifest(tmp_path)} == {DIGITS_FONT}


@needs_fonts
def test_cli_synth_print_fonts_switch(tmp_path: Path) -> None:
    from conftest import run_cli

    printed = set(ALL_FONTS) - set(FONTS)
    for flag in ("--print-fonts", "--no-print-fonts"):
        proc = run_cli(
            "data", "synth", "--out", str(tmp_path / flag), "--lines", "60", "--height", "24", flag
        )
        assert proc.returncode == 0, proc.stderr
        train_line = next(line for line in proc.stdout.splitlines() if "train fonts:" in line)
        train_fonts = set(train_line.split(":", 1)[1].strip().split(", "))
        test_line = next(line for line in proc.stdout.splitlines() if "test fonts:" in line)
        assert not printed & set(test_line.split(":", 1)[1].strip().split(", "))
        assert bool(printed & train_fonts) == (flag == "--print-fonts" and bool(printed))


def test_cli_print_share_default_is_the_library_default() -> None:
    from trocr_tune.cli import data_synth

    option = next(p for p in data_synth.params if p.name == "print_share")
    assert option.default == synth.DEFAULT_PRINT_SHARE


@needs_fonts
def test_font_dir_adds_hands_and_synthesis_draws_them(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "fonts"
    folder.mkdir()
    source = FONTS["caveat"] if "caveat" in FONTS else next(iter(FONTS.values()))
    shutil.copy(source, folder / f"My_Hand{source.suffix}")
    (folder / "README.txt").write_text("not a font", encoding="utf-8")  # ignored: not a font suffix
    found = synth.font_dir_fonts(folder)
    assert list(found) == ["my-hand"]
    fonts = available_fonts(font_dirs=[folder])
    assert fonts["my-hand"] == folder / f"My_Hand{source.suffix}"
    assert set(fonts) - {"my-hand"} == set(FONTS)  # the installed hands stay
    report = synthesize(
        tmp_path / "out",
        60,
        seed=1,
        height=24,
        digits_fraction=0,
        font_dirs=[folder],
        print_fonts=False,
        test_fonts=["my-hand"],
    )
    rows = read_manifest(tmp_path / "out")
    assert report.fonts["test"] == ["my-hand"]
    assert {r["meta"]["font"] for r in rows if r["split"] == "test"} == {"my-hand"}
    assert "my-hand" not in {r["meta"]["font"] for r in rows if r["split"] == "train"}


def test_font_dir_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        synth.font_dir_fonts(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no"):
        synth.font_dir_fonts(empty)
    (empty / "broken.ttf").write_bytes(b"not a font at all")
    with pytest.raises(UserError, match=r"cannot read font .*broken\.ttf"):
        synth.font_dir_fonts(empty)


def test_cli_font_dir_bad_folder_exits_2(tmp_path: Path) -> None:
    from conftest import run_cli

    (tmp_path / "fonts").mkdir()
    proc = run_cli(
        "data", "synth", "--out", str(tmp_path / "o"), "--lines", "4", "--font-dir", str(tmp_path / "fonts")
    )
    assert proc.returncode == 2
    assert "holds no" in proc.stderr and "Traceback" not in proc.stderr
