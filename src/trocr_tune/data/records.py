"""LineSample, the single record type every layout produces, and the log of dropped samples."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

ALL = "all"  # split name used for drops that happen before a split is known


@dataclass(frozen=True)
class LineSample:
    """One line image and its transcription.

    Attributes:
        image: path of a readable image file (the original, or a cached crop of a page).
        text: the normalised transcription.
        split: train / validation / test, or None until the splitter assigns one.
        id: unique within the dataset.
        source: where the record came from, e.g. ``written_name_train_v2.csv:17`` or
            ``page.xml#line_3``, so every message can name the file/row at fault.
        meta: extra keys, among them the group keys ``page``, ``manuscript``, ``writer``.
        size: (width, height) when known without opening the image (cached crops).
    """

    image: str
    text: str
    split: str | None
    id: str
    source: str
    meta: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    size: tuple[int, int] | None = field(default=None, compare=False)

    def with_(self, **changes: object) -> LineSample:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass
class DropLog:
    """Counts every dropped sample by (split, reason) and keeps a few examples of each.

    `examples` holds the first sources per reason over all splits; `split_examples` holds them
    per split, so a split's row of the drop table cites that split's files.
    """

    examples_per_reason: int = 3
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    split_examples: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def drop(self, reason: str, source: str, split: str | None = None, count: int = 1) -> None:
        """Record that `count` samples from `source` were dropped for `reason`."""
        self.counts[(split or ALL, reason)] += count
        for shown in (
            self.examples.setdefault(reason, []),
            self.split_examples.setdefault(split or ALL, {}).setdefault(reason, []),
        ):
            if len(shown) < self.examples_per_reason:
                shown.append(source)

    def merge(self, other: DropLog) -> None:
        """Add `other`'s counts, examples and notes (e.g. the logs of several processes, in order)."""
        self.counts.update(other.counts)
        for reason, sources in other.examples.items():
            shown = self.examples.setdefault(reason, [])
            shown.extend(sources[: max(0, self.examples_per_reason - len(shown))])
        for split, reasons in other.split_examples.items():
            for reason, sources in reasons.items():
                shown = self.split_examples.setdefault(split, {}).setdefault(reason, [])
                shown.extend(sources[: max(0, self.examples_per_reason - len(shown))])
        for message in other.notes:
            self.note(message)

    def note(self, message: str) -> None:
        """A remark about the data that is not a dropped sample (e.g. a file skipped)."""
        if message not in self.notes:
            self.notes.append(message)

    def only(self, split: str) -> DropLog:
        """The drops of one split, plus those made before any split was known (marked so)."""
        out = DropLog(self.examples_per_reason)
        for (s, reason), n in self.counts.items():
            if s not in (split, ALL):
                continue
            label = reason if s == split else f"{reason} (before splitting)"
            examples = self.split_examples.get(s, {}).get(reason, [])
            for i, source in enumerate(examples or [""]):
                out.drop(label, source, split, count=n - len(examples) + 1 if i == 0 else 1)
        return out

    def describe(self) -> str:
        """'3 image file missing (e.g. a.csv:4), 1 ...': every reason with its count and an example."""
        parts = []
        for reason, n in self.by_reason().most_common():
            example = self.examples.get(reason, [])
            parts.append(f"{n} {reason}" + (f" (e.g. {example[0]})" if example and example[0] else ""))
        return ", ".join(parts)

    def total(self, split: str | None = None) -> int:
        return sum(n for (s, _), n in self.counts.items() if split is None or s == split)

    def by_reason(self, split: str | None = None) -> Counter[str]:
        out: Counter[str] = Counter()
        for (s, reason), n in self.counts.items():
            if split is None or s == split:
                out[reason] += n
        return out
