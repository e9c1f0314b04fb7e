"""Texts for synthetic lines: embedded corpora (names, words, phrases) plus dates and amounts."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import UserError

CORPORA = ("given_names", "surnames", "words_es", "words_en", "phrases_es", "phrases_en")
# "corpus": a line (or a run of its words) of the user's own text file (synthesize(corpus=...)).
KINDS = ("name", "word_es", "word_en", "phrase_es", "phrase_en", "date", "amount", "corpus")
DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "name": 0.30,
    "word_es": 0.12,
    "word_en": 0.10,
    "phrase_es": 0.10,
    "phrase_en": 0.08,
    "date": 0.15,
    "amount": 0.15,
}

MONTHS_ES = (
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
)
MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """NFC-normalise, collapse whitespace runs to one space and strip the ends."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


@cache
def load_corpus(name: str) -> tuple[str, ...]:
    """Entries of the embedded corpus `name` (see CORPORA), comments and blanks removed."""
    if name not in CORPORA:
        raise UserError(f"unknown corpus {name!r}; choose one of {', '.join(CORPORA)}")
    path = resources.files("trocr_tune").joinpath(f"resources/corpora/{name}.txt")
    lines = (clean_text(line) for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def kind_table(weights: Mapping[str, float] | None = None) -> tuple[tuple[str, ...], np.ndarray]:
    """Validated (kinds, probabilities) from a kind -> weight mapping (None: the defaults)."""
    weights = DEFAULT_KIND_WEIGHTS if weights is None else weights
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise UserError(f"unknown text kind(s) {unknown}; valid kinds: {', '.join(KINDS)}")
    kinds = tuple(k for k in KINDS if weights.get(k, 0) > 0)
    if not kinds or any(w < 0 for w in weights.values()):
        raise UserError("text kind weights must be >= 0 with at least one > 0")
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    return kinds, p / p.sum()


def _pick(rng: np.random.Generator, items: tuple[str, ...]) -> str:
    return items[int(rng.integers(len(items)))]


def _name(rng: np.random.Generator) -> str:
    # Shaped like the Kaggle handwritten-names crops: a lone first name or surname is common.
    given, surnames = load_corpus("given_names"), load_corpus("surnames")
    u = rng.random()
    if u < 0.25:
        parts = [_pick(rng, given)]
    elif u < 0.5:
        parts = [_pick(rng, surnames)]
    elif u < 0.85:
        parts = [_pick(rng, given), _pick(rng, surnames)]
    else:
        parts = [_pick(rng, given), _pick(rng, surnames), _pick(rng, surnames)]
    return " ".join(parts).upper()


def _words(rng: np.random.Generator, corpus: str) -> str:
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    words = [_pick(rng, load_corpus(corpus)) for _ in range(count)]
    text = " ".join(words)
    u = rng.random()
    if u < 0.15:
        return text[:1].upper() + text[1:]
    return text.upper() if u < 0.2 else text


def _year(rng: np.random.Generator) -> int:
    return int(rng.integers(1850, 2031))


def sample_date(rng: np.random.Generator) -> str:
    """A date in one of several Spanish/English/numeric formats."""
    y, m, d = _year(rng), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    style = int(rng.integers(8))
    if style == 0:
        return f"{d:02d}/{m:02d}/{y}"
    if style == 1:
        return f"{d}/{m}/{y}"
    if style == 2:
        return f"{d:02d}-{m:02d}-{y}"
    if style == 3:
        return f"{d:02d}.{m:02d}.{y % 100:02d}"
    if style == 4:
        month = MONTHS_ES[m - 1]
        return f"{d} de {month.capitalize() if rng.random() < 0.3 else month} de {y}"
    if style == 5:
        return f"{MONTHS_EN[m - 1]} {d}, {y}"
    if style == 6:
        return f"{d} {MONTHS_EN[m - 1]} {y}"
    return f"{y}-{m:02d}-{d:02d}"


def group_thousands(n: int, sep: str) -> str:
    """1234567 -> '1.234.567' for sep '.'."""
    return f"{n:,}".replace(",", sep)


def sample_amount(rng: np.random.Generator) -> str:
    """A money amount in European, American or spelled-currency style."""
    units = int(np.exp(rng.uniform(0, np.log(100_000))))
    cents = int(rng.integers(100))
    style = int(rng.integers(7))
    if style == 0:
        return f"{group_thousands(units, '.')},{cents:02d} €"
    if style == 1:
        return f"${group_thousands(units, ',')}.{cents:02d}"
    if style == 2:
        return f"{group_thousands(units, '.')} pesos"
    if style == 3:
        return f"{units},{cents:02d} euros"
    if style == 4:
        return f"£{units}.{cents:02d}"
    if style == 5:
        return f"{units} dólares"
    return f"{group_thousands(units, ',')}.{cents:02d} USD"


def load_text_corpus(path: str | Path) -> tuple[str, ...]:
    """The non-empty lines of a UTF-8 text file, cleaned (NFC, single spaces)."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read corpus {path}: {exc}") from None
    lines = tuple(t for t in (clean_text(line) for line in raw.splitlines()) if t)
    if not lines:
        raise UserError(f"corpus {path} has no non-empty line")
    return lines


def _corpus_text(rng: np.random.Generator, corpus: tuple[str, ...]) -> str:
    # Whole lines mostly; sometimes a run of their words, so short fields (1-3 words) occur too.
    line = _pick(rng, corpus)
    words = line.split()
    if len(words) > 1 and rng.random() < 0.3:
        n = int(rng.integers(1, min(4, len(words)) + 1))
        start = int(rng.integers(len(words) - n + 1))
        return " ".join(words[start : start + n])
    return line


def sample_text(rng: np.random.Generator, kind: str, corpus: tuple[str, ...] = ()) -> str:
    """One clean (NFC, single-spaced) text of the given kind (see KINDS)."""
    if kind == "corpus":
        if not corpus:
            raise UserError("text kind 'corpus' needs a corpus file (--corpus)")
        text = _corpus_text(rng, corpus)
    elif kind == "name":
        text = _name(rng)
    elif kind in ("word_es", "word_en"):
        text = _words(rng, "words_" + kind[-2:])
    elif kind in ("phrase_es", "phrase_en"):
        text = _pick(rng, load_corpus("phrases_" + kind[-2:]))
    elif kind == "date":
        text = sample_date(rng)
    elif kind == "amount":
        text = sample_amount(rng)
    else:
        raise UserError(f"unknown text kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    return clean_text(text)


def sample_kind_and_text(
    rng: np.random.Generator,
    weights: Mapping[str, float] | None = None,
    corpus: tuple[str, ...] = (),
) -> tuple[str, str]:
    """(kind, text): the kind drawn by `weights` (kind -> weight; None: DEFAULT_KIND_WEIGHTS)."""
    kinds, p = kind_table(weights)
    kind = kinds[int(rng.choice(len(kinds), p=p))]
    return kind, sample_text(rng, kind, corpus)


def all_corpus_chars() -> str:
    """Every character the corpora and generators can produce, sorted (for coverage checks)."""
    chars = set("0123456789/.,-$€£ ") | set("".join(MONTHS_ES + MONTHS_EN))
    for name in CORPORA:
        for entry in load_corpus(name):
            chars.update(entry)
            chars.update(entry.upper())
    return "".join(sorted(chars - {" "}))
