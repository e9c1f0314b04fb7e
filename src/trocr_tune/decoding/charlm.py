"""A character n-gram language model of the training transcripts, for rescoring beams.

HTR systems have long decoded with a character n-gram model of the training text beside the
optical model (Kaldi and PyLaia recipes). Here it judges the hypotheses that beam search already
found (`eval.lm_weight`, decoding/runners.py), so it costs one dictionary walk per hypothesis and
no change to the checkpoint: plain Transformers loads the folder as before and ignores
`char_lm.json`.

Smoothing is interpolated Witten-Bell over whole lines (start padding, an end-of-line symbol):
each context's own estimate is mixed with the next shorter context's in proportion to how many
distinct characters followed it. Only the longest n-grams are stored; every shorter count is
their marginal, because each position is counted at every order at once.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..files import atomic_write_text

CHAR_LM_FILE = "char_lm.json"
_FORMAT = "trocr-tune-char-ngram"
_BOS, _EOS = "\x02", "\x03"
END = _EOS  # the symbol that ends a line (what an end-of-sequence token stands for)


class CharNgramLM:
    """log p(line) under an interpolated Witten-Bell character n-gram model."""

    def __init__(self, order: int, ngrams: dict[str, int]) -> None:
        if order < 1:
            raise UserError(f"a character n-gram model needs order >= 1, not {order}")
        self.order = order
        self.ngrams = ngrams
        follow: defaultdict[str, Counter[str]] = defaultdict(Counter)
        for gram, count in ngrams.items():
            # Every suffix of an n-gram is the same position counted at a lower order.
            for k in range(len(gram)):
                follow[gram[k:-1]][gram[-1]] += count
        self._follow = dict(follow)
        self._total = {h: sum(c.values()) for h, c in follow.items()}
        chars = {g[-1] for g in ngrams}
        self.vocab_size = len(chars | {_EOS})
        # log p(ch | context) already computed: the beams of a line share most of their contexts.
        self._memo: dict[tuple[str, str], float] = {}
        self._symbols: tuple[str, ...] = ()
        self._rows: dict[str, tuple[np.ndarray, int, int]] = {}
        self._index: dict[str, int] = {}

    @classmethod
    def fit(cls, texts: Iterable[str], order: int = 5) -> CharNgramLM:
        """Count the `order`-grams of `texts` (each a whole line)."""
        if order < 1:
            raise UserError(f"a character n-gram model needs order >= 1, not {order}")
        grams: Counter[str] = Counter()
        for text in texts:
            padded = _BOS * (order - 1) + text + _EOS
            grams.update(padded[i : i + order] for i in range(len(padded) - order + 1))
        return cls(order, dict(grams))

    def next_prob(self, history: str, ch: str) -> float:
        """p(ch | the last order - 1 characters of history); characters never seen share one slot."""
        p = 1.0 / (self.vocab_size + 1)
        for k in range(len(history) + 1):
            context = history[len(history) - k :]
            follow = self._follow.get(context)
            if follow is None:
                break
            distinct = len(follow)
            p = (follow.get(ch, 0) + distinct * p) / (self._total[context] + distinct)
        return p

    def next_log_probs(self, text: str, symbols: list[str]) -> np.ndarray:
        """log p(s | text so far) for every one-character s in `symbols`, in one walk of the contexts
        (the same values as `next_prob`, for a whole vocabulary at once, as array operations)."""
        n = self.order - 1
        history = (_BOS * n + text)[len(text) :] if n else ""
        key = tuple(symbols)
        if key != self._symbols:  # the contexts' counts are laid out over `symbols`
            self._symbols, self._rows = key, {}
            self._index = {s: i for i, s in enumerate(symbols)}
        p = np.full(len(symbols), 1.0 / (self.vocab_size + 1))
        for k in range(n + 1):
            row = self._row(history[n - k :])
            if row is None:
                break
            counts, distinct, total = row
            p = (counts + distinct * p) / (total + distinct)
        return np.log(p)

    def forget(self) -> None:
        """Empty the caches of what was read (memoised probabilities, context counts)."""
        self._memo.clear()
        self._rows.clear()
        self._symbols = ()

    def _row(self, context: str) -> tuple[np.ndarray, int, int] | None:
        """The counts of what followed `context`, over the current symbols (None: never seen)."""
        row = self._rows.get(context)
        if row is None:
            follow = self._follow.get(context)
            if follow is None:
                return None
            counts = np.zeros(len(self._symbols))
            for ch, c in follow.items():
                i = self._index.get(ch)
                if i is not None:
                    counts[i] = c
            row = self._rows[context] = (counts, len(follow), self._total[context])
        return row

    def _log_next(self, context: str, ch: str) -> float:
        key = (context, ch)
        value = self._memo.get(key)
        if value is None:
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            value = self._memo[key] = math.log(self.next_prob(context, ch))
        return value

    def piece_log_prob(self, text: str, piece: str) -> float:
        """log p(piece | text so far), the characters of `piece` one after the other."""
        n, total = self.order - 1, 0.0
        context = _BOS * n + text
        for ch in piece:
            total += self._log_next(context[len(context) - n :] if n else "", ch)
            context += ch
        return total

    def log_prob(self, text: str) -> float:
        """Natural-log probability of `text` as a whole line (its end included)."""
        padded = _BOS * (self.order - 1) + text + _EOS
        n = self.order - 1
        return sum(self._log_next(padded[i - n : i], padded[i]) for i in range(n, len(padded)))

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        payload = {"format": _FORMAT, "version": 1, "order": self.order, "ngrams": self.ngrams}
        atomic_write_text(out, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
        return out

    @classmethod
    def load(cls, path: str | Path) -> CharNgramLM:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the character language model {path}: {exc}") from None
        ngrams = raw.get("ngrams") if isinstance(raw, dict) else None
        if not isinstance(ngrams, dict) or raw.get("format") != _FORMAT:
            raise UserError(f"{path} is not a trocr-tune character language model")
        return cls(int(raw["order"]), {str(k): int(v) for k, v in ngrams.items()})
