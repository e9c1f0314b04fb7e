"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from trocr_tune.metrics import MetricNormalizer, compute_metrics, score_sample


def test_score_sample_by_hand() -> None:
    s = score_sample("kitten", "sitting")  # k->s, e->i, +g: 3 edits, 7 reference chars
    assert s.char_edits == 3 and s.ref_chars == 7
    assert s.cer == pytest.approx(3 / 7)
    assert s.similarity == pytest.approx(1 - 3 / 7)  # max(6, 7) = 7
    w = score_sample("the cat sat", "the cat sat down")  # one word missing
    assert (w.word_edits, w.ref_words) == (1, 4)
    assert score_sample("", "").similarity == 1.0 and score_sample("", "").cer == 0.0
    assert score_sample("abc", "").cer == 1.0


def test_corpus_metrics_by_hand() -> None:
    preds = ["kitten", "the cat sat", "PEREZ", "hola"]
    refs = ["sitting", "the cat sat down", "Perez", "hola"]
    m = compute_metrics(preds, refs)
    # char edits: 3 + 5 (" down") + 4 (EREZ vs erez) + 0 = 12; ref chars: 7 + 16 + 5 + 4 = 32
    assert m.cer == pytest.approx(12 / 32)
    # word edits: 1 (kitten/sitting) + 1 + 1 + 0 = 3; ref words: 1 + 4 + 1 + 1 = 7
    assert m.wer == pytest.approx(3 / 7)
    assert m.mean_cer == pytest.approx((3 / 7 + 5 / 16 + 4 / 5 + 0) / 4)
    sims = [1 - 3 / 7, 1 - 5 / 16, 1 - 4 / 5, 1.0]
    assert m.mean_similarity == pytest.approx(sum(sims) / 4)
    assert m.exact_match == pytest.approx(1 / 4)
    assert m.similarity_above_08 == pytest.approx(1 / 4)  # 0.571, 0.6875, 0.2, 1.0
    # Case-insensitive twins: PEREZ == Perez.
    assert m.cer_ci == pytest.approx(8 / 32)
    assert m.exact_match_ci == pytest.approx(2 / 4)
    assert m.wer_ci == pytest.approx(2 / 7)
    assert m.n == 4


def test_one_normalisation_for_every_system() -> None:
    norm = MetricNormalizer()
    decomposed = "nin\u0303o  "  # NFD ñ and trailing spaces
    m = compute_metrics([decomposed], ["niño"], norm)
    assert m.cer == 0.0 and m.exact_match == 1.0
    raw = compute_metrics([decomposed], ["niño"], MetricNormalizer(unicode_form="none", collapse=False))
    assert raw.cer > 0


def test_metrics_reject_misaligned_inputs() -> None:
    with pytest.raises(ValueError):
        compute_metrics(["a"], ["a", "b"])
    with pytest.raises(ValueError):
        compute_metrics([], [])
    assert math.isclose(compute_metrics(["x"], [""]).cer, 1.0)
