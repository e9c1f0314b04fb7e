"""Text normalisation rules and split assignment."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from trocr_tune.config import load_config
from trocr_tune.data.records import DropLog, LineSample
from trocr_tune.data.splits import assign_splits, group_split, ratio_split
from trocr_tune.data.text import EMPTY, OUTSIDE_ALPHABET, TOO_LONG, TextNormalizer
from trocr_tune.errors import UserError


def norm(*overrides: str) -> TextNormalizer:
    return TextNormalizer.from_config(load_config(None, list(overrides)).data)


def test_default_rules_nfc_and_whitespace() -> None:
    n = norm()
    assert n("  nin\u0303o \t y\u00a0 señor\n") == ("niño y señor", None)
    assert n("   ") == (None, EMPTY)
    assert n(None) == (None, EMPTY)


def test_replacements_in_order_and_case() -> None:
    n = norm('data.replacements=[["_", " "], ["ç", "z"]]', "data.case=upper")
    assert n("la_çibdad__de") == ("LA ZIBDAD DE", None)


def test_alphabet_drop_or_strip() -> None:
    assert norm("data.alphabet=abc")("abd") == (None, OUTSIDE_ALPHABET)
    assert norm("data.alphabet=abc", "data.alphabet_policy=strip")("ab d cab") == ("ab cab", None)
    assert norm("data.max_text_length=3")("abcd") == (None, TOO_LONG)


def _samples(n: int, groups: int | None = None) -> list[LineSample]:
    return [
        LineSample(
            f"/x/{i}.png",
            f"t{i}",
            None,
            str(i),
            f"s:{i}",
            meta={"page": f"p{i % groups}"} if groups else {},
        )
        for i in range(n)
    ]


def test_ratio_split_is_seeded_and_exact() -> None:
    a = ratio_split(_samples(100), [0.8, 0.1, 0.1], seed=1)
    b = ratio_split(_samples(100), [0.8, 0.1, 0.1], seed=1)
    c = ratio_split(_samples(100), [0.8, 0.1, 0.1], seed=2)
    assert [s.split for s in a] == [s.split for s in b] != [s.split for s in c]
    assert Counter(s.split for s in a) == {"train": 80, "validation": 10, "test": 10}
    tiny = ratio_split(_samples(3), [0.8, 0.1, 0.1], seed=0)
    assert Counter(s.split for s in tiny) == {"train": 1, "validation": 1, "test": 1}


def test_group_split_never_straddles() -> None:
    log = DropLog()
    out = group_split(_samples(200, groups=17), "page", [0.8, 0.1, 0.1], seed=3, log=log)
    splits_of: dict[str, set[str | None]] = {}
    for s in out:
        splits_of.setdefault(s.meta["page"], set()).add(s.split)
    assert all(len(v) == 1 for v in splits_of.values())
    counts = Counter(s.split for s in out)
    assert set(counts) == {"train", "validation", "test"}
    assert 130 <= counts["train"] <= 180
    assert log.notes and log.notes[0].startswith("group split by page")


def test_group_split_with_few_large_groups_still_fills_every_split() -> None:
    samples = [
        LineSample(f"/{i}", "t", None, str(i), "s", meta={"manuscript": m})
        for i, m in enumerate(["a"] * 50 + ["b"] * 40 + ["c"] * 30 + ["d"] * 17)
    ]
    out = group_split(samples, "manuscript", [0.8, 0.1, 0.1], seed=42, log=DropLog())
    assert {s.split for s in out} == {"train", "validation", "test"}


def test_given_splits_are_kept_unless_resplit() -> None:
    cfg = load_config(None, ["data.group_by=page"]).data
    given = [s.with_(split="test") for s in _samples(10, groups=5)]
    log = DropLog()
    assert [s.split for s in assign_splits(given, cfg, log)] == ["test"] * 10
    assert "not applied" in log.notes[0]
    cfg = load_config(None, ["data.group_by=page", "data.resplit=true"]).data
    resplit = assign_splits(given, cfg, DropLog())
    assert {s.split for s in resplit} != {"test"}


def test_a_line_by_line_split_says_which_pages_straddle_splits() -> None:
    """Without data.group_by, lines of one page land in training and in test: the split says so and
    names the key that keeps them apart; a group split has nothing to say."""
    log = DropLog()
    assign_splits(_samples(200, groups=17), load_config(None, []).data, log)
    [note] = [n for n in log.notes if n.startswith("lines were split one by one")]
    assert "of 17 pages have lines in training and in validation or test" in note
    assert note.endswith("data.group_by=page keeps each page in one split")
    grouped = DropLog()
    assign_splits(_samples(200, groups=17), load_config(None, ["data.group_by=page"]).data, grouped)
    assert not any(n.startswith("lines were split one by one") for n in grouped.notes)


@pytest.mark.parametrize(
    ("layout", "key", "message"),
    [
        ("alto", "writer", "data.group_by=writer: the alto layout gives page, manuscript"),
        ("kaggle-names", "page", "data.group_by=page: the kaggle-names layout gives no group key"),
    ],
)
def test_group_by_a_key_the_layout_never_gives_fails_before_reading(
    tmp_path: Path, layout: str, key: str, message: str
) -> None:
    """The layout's registry entry names its group keys, so the error comes before a long read and
    says which keys would work."""
    from trocr_tune.data.reader import read_dataset

    cfg = load_config(None, [f"data.layout={layout}", f"data.root={tmp_path}", f"data.group_by={key}"])
    with pytest.raises(UserError) as error:
        read_dataset(cfg.data)
    assert str(error.value) == message
