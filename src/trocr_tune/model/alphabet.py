"""Adapt a checkpoint's alphabet to the training data (`model.new_characters`, like `ketos --resize`).

`union` gives the characters of the training labels that the tokenizer cannot encode new token
ids at the end of the vocabulary; `new` (character tokenizers only) renumbers the vocabulary to
exactly the training data's characters; `fail` stops with the list. The decoder's embedding and
output projection follow: rows of tokens that stay are copied bit for bit, rows of new tokens
start at the mean of the old rows. Hand-written because `resize_token_embeddings` only appends
or truncates rows, and `new` must move them to new ids.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer
from torch import nn

from ..config import NEW_CHARACTERS
from ..errors import UserError
from .tokenizer import Coverage, check_coverage, encode_label


@dataclass(frozen=True)
class AlphabetChange:
    """What adapting the checkpoint's tokenizer to the training data did."""

    mode: str
    tokenizer: str  # "character", "unigram" (sentencepiece) or "subword" (e.g. byte-level BPE)
    added: tuple[str, ...] = ()
    removed: int = 0  # characters of the checkpoint dropped by `new`
    old_vocab: int = 0
    new_vocab: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    def describe(self, limit: int = 20) -> str:
        """One line: `added 2 characters to the checkpoint's tokenizer ("'" "ç"): vocab 104 -> 106 (...)`."""
        setting = f"(model.new_characters={self.mode})"
        if not self.changed:
            return f"the checkpoint's tokenizer encodes every training character {setting}"
        chars = " ".join(json.dumps(c, ensure_ascii=False) for c in self.added[:limit])
        chars += f" +{len(self.added) - limit} more" if len(self.added) > limit else ""
        if self.mode == "new":
            what = (
                "renumbered the checkpoint's tokenizer to the training data's characters: "
                f"added {len(self.added)}{f' ({chars})' if chars else ''}, dropped {self.removed}"
            )
        else:
            what = f"added {_count(len(self.added))} to the checkpoint's tokenizer ({chars})"
        return f"{what}: vocab {self.old_vocab} -> {self.new_vocab} {setting}"

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "added": list(self.added), "summary": self.describe()}


def _count(n: int) -> str:
    return f"{n} character{'' if n == 1 else 's'}"


def _backend_spec(tokenizer: Any) -> dict[str, Any]:
    return dict(json.loads(tokenizer.backend_tokenizer.to_str()))


def _set_backend(tokenizer: Any, spec: dict[str, Any]) -> None:
    # The transformers tokenizer reads everything (len, vocab, encode, save) from its backend.
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def tokenizer_kind(tokenizer: Any) -> str:
    """The tokenizer's family, read from its backend (tokenizer.json).

    `character`: trocr-tune's (WordLevel model, a per-character Split, special tokens first, every
    other token one character); `unigram`: sentencepiece (XLM-R in trocr-small); `subword`:
    anything else (RoBERTa's byte-level BPE in trocr-base).
    """
    spec = _backend_spec(tokenizer)
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") == "Unigram":
        return "unigram"
    if model.get("type") != "WordLevel" or pre.get("type") != "Split" or pre.get("pattern") != {"Regex": "."}:
        return "subword"
    tokens = sorted(model["vocab"], key=model["vocab"].__getitem__)
    specials = set(tokenizer.all_special_tokens)
    leading = tokens[: len(specials)]
    if set(leading) != specials or any(len(t) != 1 for t in tokens[len(specials) :]):
        return "subword"
    return "character"


def _fail(coverage: Coverage) -> UserError:
    return UserError(
        f"the tokenizer cannot encode training labels: {coverage.describe()}; set model.new_characters=union "
        "to add them, map them with data.replacements or drop them with data.alphabet + data.alphabet_policy"
    )


def _char_coverage(texts: Sequence[str], missing: set[str]) -> Coverage:
    coverage = Coverage(samples=len(texts))
    for text in texts:
        hits = Counter(c for c in text if c in missing)
        coverage.missing.update(hits)
        coverage.samples_affected += bool(hits)
    return coverage


def _adapt_characters(tokenizer: Any, texts: Sequence[str], mode: str) -> tuple[list[str], list[int | None]]:
    """New token list of a character tokenizer and, per new id, the old id its rows come from."""
    spec = _backend_spec(tokenizer)
    old = spec["model"]["vocab"]
    old_tokens = sorted(old, key=old.__getitem__)
    data_chars = sorted(set().union(*(set(t) for t in texts)))
    missing = [c for c in data_chars if c not in old]
    if mode == "fail" and missing:
        raise _fail(_char_coverage(texts, set(missing)))
    if mode == "new":
        specials = old_tokens[: len(set(tokenizer.all_special_tokens))]
        tokens = [*specials, *(c for c in data_chars if c not in specials)]
    else:
        tokens = [*old_tokens, *missing]
    if tokens != old_tokens:
        spec["model"]["vocab"] = {t: i for i, t in enumerate(tokens)}
        _set_backend(tokenizer, spec)
    return missing, [old.get(t) for t in tokens]


def _add_subword_characters(tokenizer: Any, missing: list[str]) -> None:
    spec = _backend_spec(tokenizer)
    model = spec["model"]
    added_ids = [t["id"] for t in spec.get("added_tokens", [])]
    if model["type"] == "Unigram" and all(i < len(model["vocab"]) for i in added_ids):
        # A sentencepiece piece, not an added token: added tokens are cut out of the text before
        # the Metaspace pre-tokenizer, which then drops the space before them and puts one after
        # ("niño" would decode as "niñ o"). The lowest score keeps existing segmentations.
        low = min((score for _, score in model["vocab"] if score != 0.0), default=-20.0)
        model["vocab"] = [*model["vocab"], *([c, low] for c in missing)]
        _set_backend(tokenizer, spec)
    else:
        # Byte-level BPE decodes added tokens verbatim; normalized=False matches them in raw text.
        tokenizer.add_tokens([AddedToken(c, normalized=False) for c in missing])


def _check_round_trip(tokenizer: Any, texts: Sequence[str], added: Sequence[str]) -> None:
    coverage = check_coverage(tokenizer, texts)
    if not coverage.ok:
        raise UserError(
            f"after adding {_count(len(added))} the tokenizer still cannot encode {coverage.describe()}; "
            "map them with data.replacements (or train a model.preset)"
        )
    chars = set(added)
    for text in texts:
        if chars & set(text):
            decoded = str(tokenizer.decode(encode_label(tokenizer, text), skip_special_tokens=True))
            if decoded.strip() != text.strip():
                raise UserError(
                    f"after adding {_count(len(added))} the training line {text!r} decodes as {decoded!r}; "
                    "map its characters with data.replacements (or train a model.preset)"
                )


def _remap(weight: torch.Tensor, sources: Sequence[int | None]) -> nn.Parameter:
    """Rows `weight[s]` for each source id (bit-identical copies); None rows get the mean row.

    The mean, not a random row of the init std: the new character then starts with an average
    logit in every context, so the checkpoint's predictions hardly move before training teaches it
    (a random row can outscore the real characters; Hewitt 2021, "Initializing new word embeddings").
    """
    index = torch.tensor([s if s is not None else 0 for s in sources], dtype=torch.long)
    rows = weight.detach()[index].clone()
    fresh = torch.tensor([s is None for s in sources])
    if bool(fresh.any()):
        rows[fresh] = weight.detach().float().mean(dim=0).to(weight.dtype)
    return nn.Parameter(rows, requires_grad=weight.requires_grad)


def remap_decoder_rows(model: Any, sources: Sequence[int | None]) -> None:
    """Give the decoder one vocabulary row per entry of `sources` (the old id to copy, or None).

    Resizes the input embedding and the output projection (and its bias); a projection tied to
    the embedding stays tied. The decoder's and the top-level config's vocab_size follow.
    """
    decoder = model.decoder
    embedding = decoder.get_input_embeddings()
    projection = decoder.get_output_embeddings()
    tied = projection is not None and projection.weight is embedding.weight
    embedding.weight = _remap(embedding.weight, sources)
    embedding.num_embeddings = len(sources)
    if projection is not None:
        projection.weight = embedding.weight if tied else _remap(projection.weight, sources)
        if projection.bias is not None:
            projection.bias = _remap(projection.bias, sources)
        projection.out_features = len(sources)
    decoder.config.vocab_size = len(sources)
    model.config.decoder.vocab_size = len(sources)
    model.config.vocab_size = len(sources)


def adapt_alphabet(model: Any, processor: Any, train_texts: Sequence[str], mode: str) -> AlphabetChange:
    """Make `processor.tokenizer` encode every training character, resizing `model`'s decoder.

    Special token ids never change. Returns what changed (nothing when the tokenizer already
    covers the data, except that `new` drops the characters the data lacks).
    """
    if mode not in NEW_CHARACTERS:
        raise UserError(f"model.new_characters={mode!r} is not one of: {', '.join(NEW_CHARACTERS)}")
    tokenizer = processor.tokenizer
    kind = tokenizer_kind(tokenizer)
    old_len, old_rows = len(tokenizer), model.decoder.get_input_embeddings().num_embeddings
    if kind == "character":
        added, sources = _adapt_characters(tokenizer, train_texts, mode)
        kept = set(sources)
        removed = sum(1 for i in range(old_len) if i not in kept)
        if not added and not removed:
            return AlphabetChange(mode, kind, old_vocab=old_len, new_vocab=old_len)
        if mode == "union":  # rows past the old vocabulary (if any) stay where they are
            sources += range(len(sources), old_rows)
    else:
        if mode == "new":
            raise UserError(
                f"model.new_characters=new needs a character tokenizer, but the checkpoint has a {kind} one "
                "(a subword vocabulary cannot be renumbered to the data's characters); "
                "use union or a model.preset"
            )
        coverage = check_coverage(tokenizer, train_texts)
        if coverage.ok:
            return AlphabetChange(mode, kind, old_vocab=old_len, new_vocab=old_len)
        if mode == "fail":
            raise _fail(coverage)
        added, removed = sorted(coverage.missing), 0
        old_ids = set(tokenizer.get_vocab().values())
        _add_subword_characters(tokenizer, added)
        _check_round_trip(tokenizer, train_texts, added)
        new_ids = set(tokenizer.get_vocab().values()) - old_ids
        sources = [
            i if i < old_rows and i not in new_ids else None for i in range(max(old_rows, len(tokenizer)))
        ]
    remap_decoder_rows(model, sources)
    return AlphabetChange(mode, kind, tuple(added), removed, old_len, len(tokenizer))
