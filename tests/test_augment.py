"""Augmentation policies: one registry, seeded, shape- and dtype-preserving."""

from __future__ import annotations

import numpy as np
import pytest

from trocr_tune.config import load_config
from trocr_tune.data.augment import POLICIES, build_policy
from trocr_tune.errors import UserError


def _line() -> np.ndarray:
    img = np.full((48, 320, 3), 232, np.uint8)
    img[18:30, 20:280] = 35  # a dark stroke band
    return img


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_is_seeded_and_keeps_a_line_image(name: str) -> None:
    policy = build_policy(name, seed=7)
    if name == "none":
        assert policy is None
        return
    a = [policy(image=_line())["image"] for _ in range(5)]
    again = build_policy(name, seed=7)
    b = [again(image=_line())["image"] for _ in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(x.dtype == np.uint8 and x.ndim == 3 and x.shape[2] == 3 for x in a)
    assert any(not np.array_equal(x, _line()) for x in a)  # it does change images
    assert all(abs(x.shape[0] - 48) <= 12 for x in a)  # still a line, not a crop of noise


def test_config_choices_are_the_registry() -> None:
    for name in POLICIES:
        assert load_config(None, [f"train.augment={name}"]).train.augment == name
    with pytest.raises(UserError) as info:
        load_config(None, ["train.augment=mixup"])
    assert all(name in str(info.value) for name in POLICIES)
