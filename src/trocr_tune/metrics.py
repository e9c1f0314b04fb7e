"""Recognition metrics: corpus CER/WER, per-sample CER, Levenshtein similarity, exact match.

Every system compared goes through the same `MetricNormalizer` before scoring, so a variant
can never be scored case-insensitively (or with other whitespace rules) while another is not.
Edit distances come from rapidfuzz (C++), not hand-written loops.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from rapidfuzz.distance import Levenshtein

from .data.text import collapse_whitespace

SIMILARITY_THRESHOLD = 0.8


@dataclass(frozen=True)
class MetricNormalizer:
    """The one text normalisation applied to predictions and references before scoring."""

    unicode_form: str = "NFC"
    collapse: bool = True

    def __call__(self, text: str) -> str:
        if self.unicode_form != "none":
            text = unicodedata.normalize(self.unicode_form, text)  # type: ignore[arg-type]
        return collapse_whitespace(text) if self.collapse else text


@dataclass(frozen=True)
class SampleScore:
    """Scores of one (prediction, reference) pair."""

    char_edits: int
    ref_chars: int
    word_edits: int
    ref_words: int
    cer: float
    similarity: float
    exact: bool


def score_sample(pred: str, ref: str) -> SampleScore:
    """Edit counts and per-sample scores for already-normalised strings."""
    char_edits = Levenshtein.distance(pred, ref)
    pred_words, ref_words = pred.split(), ref.split()
    word_edits = Levenshtein.distance(pred_words, ref_words)
    longest = max(len(pred), len(ref))
    cer = char_edits / len(ref) if ref else float(bool(pred))
    return SampleScore(
        char_edits=char_edits,
        ref_chars=len(ref),
        word_edits=word_edits,
        ref_words=len(ref_words),
        cer=cer,
        similarity=1.0 - char_edits / longest if longest else 1.0,
        exact=pred == ref,
    )


@dataclass(frozen=True)
class Metrics:
    """Corpus metrics; each has a case-insensitive twin (suffix `_ci`)."""

    n: int
    cer: float  # total character edits / total reference characters
    wer: float  # total word edits / total reference words
    mean_cer: float  # mean of per-sample CER
    mean_similarity: float  # mean of 1 - dist / max(len(pred), len(ref))
    exact_match: float  # share of samples predicted exactly
    similarity_above_08: float  # share of samples with similarity > 0.8
    cer_ci: float
    wer_ci: float
    mean_cer_ci: float
    mean_similarity_ci: float
    exact_match_ci: float
    similarity_above_08_ci: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _aggregate(scores: Sequence[SampleScore]) -> tuple[float, ...]:
    n = len(scores)
    chars = sum(s.ref_chars for s in scores)
    words = sum(s.ref_words for s in scores)
    char_edits = sum(s.char_edits for s in scores)
    word_edits = sum(s.word_edits for s in scores)
    return (
        char_edits / chars if chars else float(char_edits > 0),
        word_edits / words if words else float(word_edits > 0),
        sum(s.cer for s in scores) / n,
        sum(s.similarity for s in scores) / n,
        sum(s.exact for s in scores) / n,
        sum(s.similarity > SIMILARITY_THRESHOLD for s in scores) / n,
    )


def compute_metrics(
    predictions: Sequence[str],
    references: Sequence[str],
    normalizer: MetricNormalizer | None = None,
) -> Metrics:
    """All corpus metrics of `predictions` against `references` (same length, same order)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no samples to score")
    norm = normalizer or MetricNormalizer()
    preds = [norm(p) for p in predictions]
    refs = [norm(r) for r in references]
    exact = _aggregate([score_sample(p, r) for p, r in zip(preds, refs, strict=True)])
    folded = _aggregate([score_sample(p.casefold(), r.casefold()) for p, r in zip(preds, refs, strict=True)])
    return Metrics(len(refs), *exact, *folded)
