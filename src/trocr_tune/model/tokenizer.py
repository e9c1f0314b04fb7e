"""Character-level tokenizer (a standard Transformers fast tokenizer) and coverage checks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# RoBERTa's order, so ids match the hub TrOCR checkpoints: <s>=0, <pad>=1, </s>=2, <unk>=3.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")


def build_char_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """One token per character of `texts` (codepoint order), plus RoBERTa-style special tokens.

    `tokenizer(text).input_ids` gives the characters followed by </s>, which is exactly a
    TrOCR label (no leading <s>), so the usual Transformers recipes stay correct with it.
    """
    chars = sorted(set().union(*(set(t) for t in texts)))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own "word"; Fuse joins them back without inserting spaces.
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )


@dataclass
class Coverage:
    """Which characters of a text collection a tokenizer cannot encode (round trip fails)."""

    missing: Counter[str] = field(default_factory=Counter)  # char -> occurrences
    samples_affected: int = 0
    samples: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing

    def describe(self, limit: int = 20) -> str:
        chars = " ".join(repr(c) for c, _ in self.missing.most_common(limit))
        more = f" (+{len(self.missing) - limit} more)" if len(self.missing) > limit else ""
        return (
            f"{len(self.missing)} characters in {self.samples_affected}/{self.samples} labels: {chars}{more}"
        )


def encode_label(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Label ids: the text's tokens without any special token, then eos (never a leading bos)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [*ids, tokenizer.eos_token_id]


def check_coverage(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> Coverage:
    """Characters that map to <unk> or do not survive encode/decode."""
    coverage = Coverage(samples=len(texts))
    bad_chars: dict[str, bool] = {}
    unk = tokenizer.unk_token_id
    for text in texts:
        affected = False
        for char in set(text):
            if char == " ":
                continue
            if char not in bad_chars:
                ids = tokenizer(char, add_special_tokens=False)["input_ids"]
                decoded = tokenizer.decode(ids, skip_special_tokens=True)
                bad_chars[char] = (unk is not None and unk in ids) or not ids or str(decoded).strip() != char
            if bad_chars[char]:
                coverage.missing[char] += text.count(char)
                affected = True
        coverage.samples_affected += affected
    return coverage
