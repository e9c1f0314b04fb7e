"""Seeded synthetic handwriting lines (handwriting fonts + real digits) in the manifest layout."""

from __future__ import annotations

import importlib.util
import json
import math
import multiprocessing
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError
from ..files import atomic_open
from .ink import finish_line, paste_glyph, shape_line, to_height
from .synth_digits import digit_partition, render_digit_line
from .synth_scan import (
    FIELD_LABELS,
    STYLES,
    add_label,
    add_neighbours,
    add_rules,
    jpeg,
    paper_and_ink,
    parse_styles,
    pick_style,
)
from .synth_text import DEFAULT_KIND_WEIGHTS, kind_table, load_text_corpus, sample_kind_and_text

# Font slug -> the fontpkg distribution module that ships its TTF(s) plus a metadata.json.
FONT_PACKAGES: dict[str, str] = {
    "caveat": "fontpkg_caveat",
    "dancing-script": "fontpkg_dancing_script",
    "delius": "fontpkg_delius",
    "great-vibes": "fontpkg_great_vibes",
    "indie-flower": "fontpkg_indie_flower",
    "kalam": "fontpkg_kalam",
    "permanent-marker": "fontpkg_permanent_marker",
    "shadows-into-light": "fontpkg_shadows_into_light",
    "zeyada": "fontpkg_zeyada",
}
# Printed fonts for the training and validation splits only (never held out as a test hand): the
# eight most used Google Fonts families that ship as fontpkg wheels (OFL), chosen by that rule,
# not by their looks. Seven handwriting fonts show each letter in seven shapes; these add plain
# ones. Held-out-font CER after 3,900 steps: 0.134 without them, 0.115 with them
# (docs/2026-11-synthetic-font-demo.md).
PRINT_FONT_PACKAGES: dict[str, str] = {
    "inter": "fontpkg_inter",
    "lato": "fontpkg_lato",
    "montserrat": "fontpkg_montserrat",
    "noto-sans": "fontpkg_noto_sans",
    "open-sans": "fontpkg_open_sans",
    "poppins": "fontpkg_poppins",
    "roboto": "fontpkg_roboto",
    "roboto-condensed": "fontpkg_roboto_condensed",
}
# Share of the training and validation font lines drawn in the printed fonts (the rest in the
# handwriting fonts). Drawn by count (8 of 15 fonts, 53%) they gave 0.115 at 3,900 steps; with each
# handwriting font drawn twice as often (36%) 0.109 on two seeds (docs/2026-11-synthetic-font-demo.md).
DEFAULT_PRINT_SHARE = 0.36
# Two mid-difficulty casual hands; neither is the only cursive or the only all-caps-like font.
DEFAULT_TEST_FONTS = ("kalam", "shadows-into-light")
CHAR_CLASSES: dict[str, str] = {
    "latin": string.ascii_uppercase + string.ascii_lowercase,
    "spanish": "áéíóúñÑüÁÉÍÓÚÜ¿¡",
    "digits": string.digits,
}
SPLITS = ("train", "validation", "test")
_NOTDEF_PROBE = "\uffff"  # a Unicode noncharacter: no font maps it, so it draws .notdef
_PROBE_SIZE = 48
_GOLDEN = 0.6180339887498949


FONT_SUFFIXES = (".ttf", ".otf", ".woff", ".woff2")


def font_dir_fonts(folder: str | Path) -> dict[str, Path]:
    """Font files (FONT_SUFFIXES) directly in `folder`, slug of the file name -> path.

    Each file is one hand; a file FreeType cannot open fails here, in one line, not mid-render.
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"font folder {root} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.suffix.lower() not in FONT_SUFFIXES or not path.is_file():
            continue
        try:
            ImageFont.truetype(str(path), _PROBE_SIZE)
        except OSError as exc:
            raise UserError(f"cannot read font {path}: {exc}") from None
        found[_slug(path.stem)] = path
    if not found:
        raise UserError(f"font folder {root} holds no {'/'.join(FONT_SUFFIXES)} file")
    return found


def available_fonts(print_fonts: bool = False, font_dirs: Iterable[str | Path] = ()) -> dict[str, Path]:
    """Installed handwriting fonts (+ PRINT_FONT_PACKAGES with `print_fonts`), slug -> regular-weight
    TTF; uninstalled ones are skipped. Each of `font_dirs` adds its font files as handwriting fonts
    (font_dir_fonts); a slug already installed keeps the installed font."""
    found: dict[str, Path] = {}
    packages = {**FONT_PACKAGES, **(PRINT_FONT_PACKAGES if print_fonts else {})}
    for slug, module in packages.items():
        if importlib.util.find_spec(module) is None:
            continue
        root = resources.files(module)
        meta = json.loads(root.joinpath("metadata.json").read_text(encoding="utf-8"))
        files = [f for f in meta["files"] if f.get("style", "normal") == "normal"]
        # Static 400 first, then a variable file (its default instance is the regular weight).
        files.sort(key=lambda f: (f.get("weight") != 400, not f.get("variable"), f["path"]))
        if files:
            path = Path(str(root.joinpath(files[0]["path"])))
            if path.is_file():
                found[slug] = path
    for folder in font_dirs:
        for slug, path in font_dir_fonts(folder).items():
            found.setdefault(slug, path)
    return found


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: per-glyph rendering needs no shaping, and it is identical with or without raqm.
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@lru_cache(maxsize=32768)
def _glyph(path: str, size: int, ch: str) -> tuple[np.ndarray, int, int, float]:
    """(8-bit coverage bitmap, left, top relative to pen and baseline, advance) of one char."""
    font = _font(path, size)
    box = font.getbbox(ch, anchor="ls")
    x0, y0, x1, y1 = math.floor(box[0]), math.floor(box[1]), math.ceil(box[2]), math.ceil(box[3])
    advance = float(font.getlength(ch))
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0), np.uint8), 0, 0, advance
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(img).text((-x0, -y0), ch, font=font, fill=255, anchor="ls")
    return np.asarray(img), x0, y0, advance


@lru_cache(maxsize=65536)
def _drawable(path: str, ch: str) -> bool:
    # A missing glyph draws as .notdef (an empty or boxed shape) or draws nothing at all.
    if ch == " ":
        return True
    bmp, _, _, advance = _glyph(path, _PROBE_SIZE, ch)
    if bmp.size == 0 or int(bmp.max()) == 0 or advance <= 0:
        return False
    notdef = _glyph(path, _PROBE_SIZE, _NOTDEF_PROBE)[0]
    return not (notdef.shape == bmp.shape and np.array_equal(notdef, bmp))


@lru_cache(maxsize=256)
def caps_only(font_path: str | Path) -> bool:
    """True for fonts whose lowercase letters are small capitals (e.g. Permanent Marker)."""
    path, ious = str(font_path), []
    # Letters whose two cases differ in shape in any ordinary hand (not c o s v w x z).
    for ch in "abdefghnqr":
        lower, upper = (_glyph(path, _PROBE_SIZE, c)[0] for c in (ch, ch.upper()))
        if lower.size == 0 or upper.size == 0:
            continue
        a, b = (cv2.resize(g, (24, 24), interpolation=cv2.INTER_AREA) > 64 for g in (lower, upper))
        ious.append((a & b).sum() / max(1, (a | b).sum()))
    # Measured: small-caps Permanent Marker scores 0.93, the other hands 0.18-0.45.
    return bool(ious) and float(np.median(ious)) > 0.75


def missing_chars(font_path: str | Path, text: str) -> str:
    """The characters of `text` the font cannot draw (sorted, no duplicates; '' if none)."""
    return "".join(sorted(c for c in set(text) if not _drawable(str(font_path), c)))


def font_report(fonts: Mapping[str, Path] | None = None) -> dict[str, dict[str, str]]:
    """Per font and CHAR_CLASSES class, the characters it cannot draw ('' when it draws all)."""
    fonts = available_fonts(print_fonts=True) if fonts is None else fonts
    return {
        name: {cls: missing_chars(path, chars) for cls, chars in CHAR_CLASSES.items()}
        for name, path in fonts.items()
    }


def layout_font_line(
    text: str, font_path: str, size: int, rng: np.random.Generator, extra_tracking: float = 0.0
) -> np.ndarray:
    """Ink coverage (uint8) of `text` drawn glyph by glyph with jitter and baseline wobble.

    `extra_tracking` (in font sizes) spaces the letters apart, as in block capitals on forms.
    """
    path = str(font_path)
    ascent, descent = _font(path, size).getmetrics()
    glyphs = [_glyph(path, size, ch) for ch in text]
    pad = size
    # Room for the widest tracking and word spacing drawn below, so no glyph is ever clipped.
    width = int(sum(g[3] for g in glyphs) * 1.6 + (0.1 + extra_tracking) * size * len(text)) + 2 * pad
    canvas = np.zeros((ascent + descent + 2 * pad, width), np.uint8)
    baseline = pad + ascent
    wobble = (rng.uniform(0, 0.05) * size, rng.uniform(3, 10) * size, rng.uniform(0, 2 * np.pi))
    tracking, word_space = (rng.uniform(-0.03, 0.07) + extra_tracking) * size, rng.uniform(0.8, 1.6)
    rot_sd, scale_sd, shift_sd = rng.uniform(0, 4), rng.uniform(0, 0.06), rng.uniform(0, 0.03)
    j = rng.standard_normal((4, len(text)))
    angles = np.clip(j[0] * rot_sd, -10, 10).tolist()
    scales = (1 + np.clip(j[1] * scale_sd, -0.15, 0.15)).tolist()
    dxs, dys = (j[2] * shift_sd * size).tolist(), (j[3] * shift_sd * size).tolist()
    x = float(pad)
    for i, (ch, (bmp, left, top, advance)) in enumerate(zip(text, glyphs, strict=True)):
        if ch == " ":
            x += advance * word_space
            continue
        dy = wobble[0] * math.sin(2 * math.pi * x / wobble[1] + wobble[2])
        gx, gy = x + left + dxs[i], baseline + top + dy + dys[i]
        paste_glyph(canvas, bmp, gx, gy, angles[i], scales[i])
        x = min(x + advance + tracking, width - pad)
    return canvas


def render_line(
    text: str,
    font_path: str | Path,
    rng: np.random.Generator,
    height: int = 64,
) -> np.ndarray:
    """Grayscale (H=height) image of `text` in the font; ValueError if it lacks a glyph."""
    missing = missing_chars(font_path, text)
    if missing:
        raise ValueError(f"font {Path(font_path).name} cannot draw {missing!r}")
    size = _font_size(height, rng)
    return finish_line(layout_font_line(text, str(font_path), size, rng), size, rng, height)


def _font_size(height: int, rng: np.random.Generator) -> int:
    """A drawing size around the line height, in 4-px buckets so the font and glyph caches stay small."""
    return max(12, 4 * round(height * rng.uniform(0.8, 1.5) / 4))


def _ink_box(alpha: np.ndarray) -> np.ndarray:
    x, y, w, h = cv2.boundingRect((alpha > 24).view(np.uint8))
    return alpha[y : y + h, x : x + w] if w and h else alpha


def render_scan_line(
    text: str,
    font_path: str | Path,
    style: str,
    rng: np.random.Generator,
    height: int = 64,
    label_font: str | Path | None = None,
    neighbour_text: Callable[[], str] | None = None,
) -> np.ndarray:
    """Grayscale line of `text` in scan style `style` (synth_scan.STYLES, or "plain").

    The font must draw every character of `text` (see missing_chars); `neighbour_text` gives
    texts for the fragments of the lines above and below, `label_font` draws field labels.
    """
    if style == "plain":
        return render_line(text, font_path, rng, height)
    st = STYLES[style]
    path = str(font_path)
    size = _font_size(height, rng)
    alpha = shape_line(layout_font_line(text, path, size, rng, rng.uniform(*st.tracking)), size, rng, height)
    if neighbour_text is not None and rng.random() < st.neighbours:

        def other() -> np.ndarray:
            line = neighbour_text()
            if missing_chars(path, line):
                return np.zeros((height, 1), np.uint8)
            return shape_line(layout_font_line(line, path, size, rng), size, rng, height)

        alpha = add_neighbours(alpha, other, rng)
    if label_font is not None and rng.random() < st.label:
        label = FIELD_LABELS[int(rng.integers(len(FIELD_LABELS)))]
        if not missing_chars(label_font, label):
            alpha = add_label(alpha, _ink_box(layout_font_line(label, str(label_font), 48, rng)), rng)
    if rng.random() < st.rules:
        alpha = add_rules(alpha, rng, dotted=style == "form" and rng.random() < 0.3)
    img = paper_and_ink(alpha, st, rng)
    if img.shape[0] != height:  # neighbours made it taller: the line shrinks within the crop
        img = to_height(img, height)
    return jpeg(img, rng, st.jpeg)


@dataclass(frozen=True)
class _Plan:
    """Everything a worker needs to render sample i (picklable, no open handles)."""

    out_dir: str
    seed: int
    height: int
    fonts: dict[str, str]
    split_fonts: dict[str, tuple[str, ...]]
    kinds: dict[str, float]
    val_fraction: float
    test_fraction: float
    digits_fraction: float
    digits: int  # digits in the file name
    printed: frozenset[str] = frozenset()  # the printed fonts among `fonts`
    print_share: float | None = None  # share of a split's font lines in printed fonts (None: by count)
    corpus: tuple[str, ...] = ()  # the user's text lines (text kind "corpus")
    styles: tuple[tuple[str, float], ...] = ()  # scan style -> weight; () draws every line plain


@dataclass
class SynthReport:
    """What synthesize() wrote: counts, fonts and kinds per split, speed, paths."""

    out_dir: Path
    manifest: Path
    images_dir: Path
    seed: int
    counts: dict[str, int]
    fonts: dict[str, list[str]]
    kinds: dict[str, dict[str, int]]
    seconds: float
    lines_per_second: float
    workers: int
    notes: list[str] = field(default_factory=list)
    styles: dict[str, int] = field(default_factory=dict)  # lines per scan style
    skipped_fonts: dict[str, int] = field(default_factory=dict)  # font -> texts it could not draw
    uncovered_chars: str = ""  # characters of dropped texts that no font draws

    def summary(self) -> list[str]:
        """The lines `data synth` prints."""
        total = sum(self.counts.values())
        rows = [
            f"{total} lines in {self.seconds:.1f} s ({self.lines_per_second:.0f} lines/s): "
            + ", ".join(f"{k} {v}" for k, v in self.counts.items())
        ]
        rows += [f"  {split} fonts: {', '.join(fonts)}" for split, fonts in self.fonts.items()]
        if self.styles:
            rows.append("  styles: " + ", ".join(f"{k} {v}" for k, v in sorted(self.styles.items())))
        if self.uncovered_chars:
            rows.append(f"  no font draws: {' '.join(repr(c) for c in self.uncovered_chars)}")
        rows += [f"note: {note}" for note in self.notes]
        return [*rows, f"manifest: {self.manifest}"]

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def split_of(index: int, seed: int, val_fraction: float, test_fraction: float) -> str:
    """Split of sample `index`: a golden-ratio sequence keeps every prefix near the fractions."""
    u = ((index + 1) * _GOLDEN + seed * 0.7548776662466927) % 1.0
    if u < test_fraction:
        return "test"
    return "validation" if u < test_fraction + val_fraction else "train"


def _font_sample(
    plan: _Plan,
    split: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, str, dict[str, str]]:
    names = plan.split_fonts[split]
    printed = tuple(n for n in names if n in plan.printed)
    hands = tuple(n for n in names if n not in plan.printed)
    for _ in range(100):  # resample until the (font, text) pair is fully drawable
        if plan.print_share is None or not printed or not hands:
            # Splits without printed fonts (the test split) draw exactly as they always did, so
            # the held-out lines do not depend on the printed fonts or their share.
            font = names[int(rng.integers(len(names)))]
        else:
            pool = printed if rng.random() < plan.print_share else hands
            font = pool[int(rng.integers(len(pool)))]
        kind, text = sample_kind_and_text(rng, plan.kinds)
        if caps_only(plan.fonts[font]):  # its lowercase reads as capitals: label what is seen
            text = text.upper()
        if not missing_chars(plan.fonts[font], text):
            img = render_line(text, plan.fonts[font], rng, plan.height)
            return img, text, {"font": font, "kind": kind}
    raise UserError(f"fonts {', '.join(names)} cannot draw the sampled texts; check font_report()")


def _styled_sample(
    plan: _Plan,
    split: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, str, dict[str, Any]]:
    """A line in a scan style: fonts that lack a glyph of the text are skipped and counted."""
    names = plan.split_fonts[split]
    styles = dict(plan.styles)
    skipped: list[str] = []  # fonts that could not draw the text that was drawn
    uncovered: list[str] = []  # characters of texts no font of the split can draw
    dropped = 0  # texts no font of the split can draw
    for _ in range(100):
        kind, text = sample_kind_and_text(rng, plan.kinds, plan.corpus)
        style = pick_style(rng, styles)
        if style != "plain" and rng.random() < STYLES[style].upper:
            text = text.upper()
        printed = [n for n in names if n in plan.printed]
        hands = [n for n in names if n not in plan.printed]
        pool = (
            printed if printed and (not hands or rng.random() < (plan.print_share or 0.0)) else hands or names
        )
        first = pool[int(rng.integers(len(pool)))]
        order = [first, *(n for n in names if n != first)]
        font, tried = None, []
        for name in order:
            shown = text.upper() if caps_only(plan.fonts[name]) else text
            if not missing_chars(plan.fonts[name], shown):
                font, text = name, shown
                break
            tried.append(name)
        if font is None:  # a dropped text is counted once, not as a skip of every font
            uncovered.extend(set.intersection(*(set(missing_chars(plan.fonts[n], text)) for n in names)))
            dropped += 1
            continue
        skipped.extend(tried)
        labels = sorted(plan.printed) or [font]
        label_font = plan.fonts[labels[int(rng.integers(len(labels)))]]

        def neighbour(upper: bool = text.isupper()) -> str:
            other = sample_kind_and_text(rng, plan.kinds, plan.corpus)[1]
            return other.upper() if upper else other

        img = render_scan_line(text, plan.fonts[font], style, rng, plan.height, label_font, neighbour)
        meta = {
            "font": font,
            "kind": kind,
            "style": style,
            "skipped_fonts": skipped,
            "uncovered": sorted(set(uncovered)),
            "dropped_texts": dropped,
        }
        return img, text, meta
    raise UserError(
        f"fonts {', '.join(names)} cannot draw 100 sampled texts; check the corpus and font_report()"
    )


def render_sample(plan: _Plan, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Image and manifest record of sample `index`; depends only on (plan, index)."""
    rng = np.random.default_rng([plan.seed, index])
    split = split_of(index, plan.seed, plan.val_fraction, plan.test_fraction)
    if rng.random() < plan.digits_fraction or not plan.split_fonts[split]:
        img, text, meta = render_digit_line(rng, split, plan.height)
    elif plan.styles or plan.corpus:
        img, text, meta = _styled_sample(plan, split, rng)
    else:
        img, text, meta = _font_sample(plan, split, rng)
    stem = f"{index:0{plan.digits}d}"
    record = {"image": f"images/{stem}.png", "text": text, "split": split, "id": f"synth-{stem}"}
    return img, {**record, "meta": meta}


def _write_chunk(args: tuple[_Plan, int, int]) -> list[dict[str, Any]]:
    plan, start, stop = args
    records = []
    for i in range(start, stop):
        img, record = render_sample(plan, i)
        ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 3])
        if not ok:
            raise RuntimeError(f"PNG encoding failed for sample {i}")
        Path(plan.out_dir, record["image"]).write_bytes(png.tobytes())
        records.append(record)
    return records


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _slug(name: str) -> str:
    return "-".join(name.lower().replace("_", " ").split())


def choose_test_fonts(fonts: Iterable[str], test_fonts: Iterable[str] | None) -> tuple[str, ...]:
    """The held-out test fonts: `test_fonts`, else the default pair (or last two installed)."""
    names = sorted(fonts)
    if test_fonts is not None:
        by_slug = {_slug(n): n for n in names}
        unknown = sorted(t for t in test_fonts if _slug(t) not in by_slug)
        if unknown:
            raise UserError(f"test font(s) {unknown} not installed; available: {', '.join(names)}")
        chosen = tuple(sorted({by_slug[_slug(t)] for t in test_fonts}))
    else:
        chosen = tuple(t for t in DEFAULT_TEST_FONTS if t in names)
        chosen += tuple(n for n in reversed(names) if n not in chosen)[: 2 - len(chosen)]
        chosen = tuple(sorted(chosen))
    if names and len(chosen) >= len(names):
        raise UserError(f"test fonts {list(chosen)} leave no font for train/validation")
    return chosen


def synthesize(
    out_dir: str | Path,
    lines: int,
    *,
    seed: int = 0,
    height: int = 64,
    test_fonts: Iterable[str] | None = None,
    val_fraction: float = 0.05,
    test_fraction: float = 0.1,
    kinds: Mapping[str, float] | None = None,
    digits_fraction: float = 0.1,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    fonts: Mapping[str, str | Path] | None = None,
    print_fonts: bool = True,
    print_share: float | None = DEFAULT_PRINT_SHARE,
    corpus: str | Path | None = None,
    styles: Mapping[str, float] | None = None,
    font_dirs: Iterable[str | Path] = (),
) -> SynthReport:
    """Render `lines` synthetic lines to out_dir/images/*.png and out_dir/manifest.jsonl.

    Sample i depends only on (seed, i), so any `workers` gives byte-identical files. Test lines
    use held-out fonts (font-disjoint) and held-out sklearn digit images. `kinds` maps text kinds
    (synth_text.KINDS) to weights; `fonts` overrides available_fonts() (name -> TTF path).
    `print_fonts` adds the installed PRINT_FONT_PACKAGES to the training and validation fonts,
    drawn for `print_share` of their font lines (None: every font equally often); test fonts are
    always handwriting fonts unless `test_fonts` names others. `font_dirs` adds the font files of
    each folder as handwriting fonts (font_dir_fonts).

    `corpus` (a UTF-8 text file, one line of text per line) adds the text kind "corpus" and, when
    `kinds` is None, draws every font line from it. `styles` (synth_scan.STYLES + "plain" ->
    weight) draws lines as scans; with a corpus and no styles every line is "plain". Fonts that
    lack a glyph of a line are skipped for it and counted; the report names characters no font
    draws.
    """
    if lines < 1 or seed < 0 or height < 8 or workers < 1:
        raise UserError("need lines >= 1, seed >= 0, height >= 8 and workers >= 1")
    if min(val_fraction, test_fraction) < 0 or val_fraction + test_fraction > 1:
        raise UserError("val_fraction and test_fraction must be >= 0 and sum to <= 1")
    if not 0 <= digits_fraction <= 1:
        raise UserError("digits_fraction must be within [0, 1]")
    if print_share is not None and not 0 <= print_share <= 1:
        raise UserError(f"print_share must be within [0, 1], got {print_share}")
    chosen_fonts = available_fonts(print_fonts, font_dirs) if fonts is None else fonts
    font_paths = {k: str(v) for k, v in chosen_fonts.items()}
    notes = []
    if not font_paths and digits_fraction < 1:
        notes.append("no handwriting font installed: every line uses real digits")
        digits_fraction = 1.0
    if digits_fraction > 0:
        digit_partition()  # fail early, with the install hint, when scikit-learn is missing
    hands = font_paths if test_fonts is not None else [f for f in font_paths if f not in PRINT_FONT_PACKAGES]
    held = choose_test_fonts(hands, test_fonts) if test_fraction > 0 else ()
    rest = tuple(sorted(set(font_paths) - set(held)))
    corpus_lines = load_text_corpus(corpus) if corpus is not None else ()
    if corpus_lines and kinds is None:
        kinds = {"corpus": 1.0}
    if kinds and kinds.get("corpus", 0) > 0 and not corpus_lines:
        raise UserError("text kind 'corpus' needs a corpus file (--corpus)")
    style_weights = parse_styles(styles) or ({"plain": 1.0} if corpus_lines else {})
    kind_table(kinds)  # validate here, not in every worker
    plan = _Plan(
        out_dir=str(out_dir),
        seed=seed,
        height=height,
        fonts=font_paths,
        split_fonts={"train": rest, "validation": rest, "test": held},
        kinds=dict(DEFAULT_KIND_WEIGHTS if kinds is None else kinds),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        digits_fraction=digits_fraction,
        digits=max(6, len(str(lines - 1))),
        printed=frozenset(set(font_paths) & set(PRINT_FONT_PACKAGES)),
        print_share=print_share,
        corpus=corpus_lines,
        styles=tuple(sorted(style_weights.items())),
    )
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    chunk = max(1, min(256, lines // (workers * 8) or 1))
    tasks = [(plan, a, min(a + chunk, lines)) for a in range(0, lines, chunk)]
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    if workers == 1:
        results: Iterable[list[dict[str, Any]]] = map(_write_chunk, tasks)
        records = _collect(results, lines, progress)
    else:
        # spawn: fork is unsafe once torch or threads exist; an executor (unlike Pool) raises
        # BrokenProcessPool instead of hanging when a worker dies.
        ctx = multiprocessing.get_context("spawn")
        n = min(workers, len(tasks))
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init) as pool:
            records = _collect(pool.map(_write_chunk, tasks), lines, progress)
    seconds = time.perf_counter() - start
    skipped_fonts: Counter[str] = Counter()
    uncovered: Counter[str] = Counter()
    styles_used: Counter[str] = Counter()
    dropped_texts = 0
    for r in records:
        dropped_texts += r["meta"].pop("dropped_texts", 0)
        skipped_fonts.update(r["meta"].pop("skipped_fonts", ()))
        uncovered.update(r["meta"].pop("uncovered", ()))
        if "style" in r["meta"]:
            styles_used[r["meta"]["style"]] += 1
    if skipped_fonts:
        notes.append(
            f"{sum(skipped_fonts.values())} times a font lacked a glyph of the drawn text and was skipped "
            "for it: " + ", ".join(f"{k} {v}" for k, v in skipped_fonts.most_common())
        )
    if uncovered:
        notes.append(
            f"{dropped_texts} drawn texts were dropped for characters no font draws: "
            + " ".join(f"{c!r}" for c, _ in uncovered.most_common())
        )
    manifest = out / "manifest.jsonl"
    with atomic_open(manifest) as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    counts = Counter(r["split"] for r in records)
    fonts_used: dict[str, set[str]] = {s: set() for s in SPLITS}
    kinds_used: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
    for r in records:
        fonts_used[r["split"]].add(r["meta"]["font"])
        kinds_used[r["split"]][r["meta"]["kind"]] += 1
    return SynthReport(
        out_dir=out,
        manifest=manifest,
        images_dir=out / "images",
        seed=seed,
        counts={s: counts.get(s, 0) for s in SPLITS},
        fonts={s: sorted(v) for s, v in fonts_used.items()},
        kinds={s: dict(sorted(v.items())) for s, v in kinds_used.items()},
        seconds=seconds,
        lines_per_second=lines / seconds if seconds > 0 else float("inf"),
        workers=workers,
        notes=notes,
        styles=dict(styles_used),
        skipped_fonts=dict(skipped_fonts),
        uncovered_chars="".join(sorted(uncovered)),
    )


def _collect(
    results: Iterable[list[dict[str, Any]]],
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for chunk in results:
        records.extend(chunk)
        if progress is not None:
            progress(len(records), total)
    return records
