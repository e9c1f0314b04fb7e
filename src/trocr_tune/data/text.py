"""Text normalisation rules applied to every transcription at read time."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from ..config import DataConfig

_WHITESPACE = re.compile(r"\s+")

# Drop reasons (shared wording so reports group them).
EMPTY = "empty text"
OUTSIDE_ALPHABET = "characters outside data.alphabet"
TOO_SHORT = "text shorter than data.min_text_length"
TOO_LONG = "text longer than data.max_text_length"


def collapse_whitespace(text: str) -> str:
    """Every run of whitespace (tabs, newlines, NBSP...) becomes one space; ends stripped."""
    return _WHITESPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class TextNormalizer:
    """Callable turning raw text into (normalised text, None) or (None, drop reason)."""

    unicode_form: str = "NFC"
    collapse: bool = True
    replacements: tuple[tuple[str, str], ...] = ()
    case: str = "keep"
    alphabet: frozenset[str] | None = None
    alphabet_policy: str = "drop"
    min_length: int = 1
    max_length: int | None = None

    @classmethod
    def from_config(cls, cfg: DataConfig) -> TextNormalizer:
        return cls(
            unicode_form=cfg.unicode_form,
            collapse=cfg.collapse_whitespace,
            replacements=tuple((a, b) for a, b in cfg.replacements),
            case=cfg.case,
            alphabet=frozenset(cfg.alphabet) if cfg.alphabet is not None else None,
            alphabet_policy=cfg.alphabet_policy,
            min_length=cfg.min_text_length,
            max_length=cfg.max_text_length,
        )

    def normalize(self, text: str) -> str:
        """The text rules alone (no filtering): unicode form, replacements, spaces, case."""
        if self.unicode_form != "none":
            text = unicodedata.normalize(self.unicode_form, text)  # type: ignore[arg-type]
        for old, new in self.replacements:
            text = text.replace(old, new)
        if self.collapse:
            text = collapse_whitespace(text)
        if self.case == "lower":
            text = text.lower()
        elif self.case == "upper":
            text = text.upper()
        return text

    def __call__(self, raw: str | None) -> tuple[str | None, str | None]:
        if raw is None or not raw.strip():
            return None, EMPTY
        text = self.normalize(raw)
        if self.alphabet is not None:
            outside = {c for c in text if c not in self.alphabet and c != " "}
            if outside:
                if self.alphabet_policy == "drop":
                    return None, OUTSIDE_ALPHABET
                text = "".join(c for c in text if c not in outside)
                text = collapse_whitespace(text) if self.collapse else text
        if not text:
            return None, EMPTY
        if len(text) < self.min_length:
            return None, TOO_SHORT
        if self.max_length is not None and len(text) > self.max_length:
            return None, TOO_LONG
        return text, None
