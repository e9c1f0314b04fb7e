"""Split assignment: layout-given splits, seeded ratio splits, and group-aware splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from ..config import GROUP_KEYS, SPLITS, DataConfig
from ..errors import UserError
from .records import DropLog, LineSample


def _targets(n: int, ratios: Sequence[float]) -> list[int]:
    """Exact per-split counts for n items; every split with a ratio > 0 gets at least one when n allows."""
    counts = [round(n * r) for r in ratios]
    nonzero = [i for i, r in enumerate(ratios) if r > 0]
    if n >= len(nonzero):
        for i in nonzero:
            counts[i] = max(counts[i], 1)
    # Train absorbs the rounding difference.
    counts[0] = n - sum(counts[1:])
    if counts[0] < 0:
        counts[0] = 0
    return counts


def ratio_split(samples: list[LineSample], ratios: Sequence[float], seed: int) -> list[LineSample]:
    """Seeded shuffle, then cut into train/validation/test of the requested sizes."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    counts = _targets(len(samples), ratios)
    out = list(samples)
    start = 0
    for split, count in zip(SPLITS, counts, strict=True):
        for i in order[start : start + count]:
            out[i] = samples[i].with_(split=split)
        start += count
    return out


def group_split(
    samples: list[LineSample], key: str, ratios: Sequence[float], seed: int, log: DropLog
) -> list[LineSample]:
    """Assign whole groups (pages, writers, manuscripts) to splits so no group straddles two.

    Groups are shuffled with the seed. Each split with a ratio > 0 first receives one group
    (the first, in shuffled order, that fits its target), so small corpora still get a
    validation and a test set; the rest go, in shuffled order, to the split furthest below its
    target line count.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        value = s.meta.get(key)
        if value is None:
            given = sorted(k for k in s.meta if k in GROUP_KEYS and s.meta[k] is not None)
            hint = f"this layout gives {', '.join(given)}" if given else "this layout gives no group key"
            raise UserError(f"data.group_by={key}: {s.source} has no '{key}' ({hint})")
        groups[value].append(i)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    n = len(samples)
    target = [r * n for r in ratios]
    current = [0.0, 0.0, 0.0]
    assignment: dict[str, int] = {}
    nonzero = sorted((i for i, r in enumerate(ratios) if r > 0), key=lambda i: target[i])
    if len(names) >= len(nonzero):
        for split in nonzero:
            free = [g for g in names if g not in assignment]
            fitting = [g for g in free if len(groups[g]) <= target[split]]
            pick = fitting[0] if fitting else min(free, key=lambda g: len(groups[g]))
            assignment[pick] = split
            current[split] += len(groups[pick])
    for g in names:
        if g in assignment:
            continue
        split = max(nonzero, key=lambda i: (target[i] - current[i]) / target[i])
        assignment[g] = split
        current[split] += len(groups[g])
    out = list(samples)
    for g, idx in groups.items():
        for i in idx:
            out[i] = samples[i].with_(split=SPLITS[assignment[g]])
    per = [sorted(g for g, s in assignment.items() if s == k) for k in range(3)]
    log.note(
        f"group split by {key}: "
        + ", ".join(f"{SPLITS[k]} {len(per[k])} groups ({int(current[k])} lines)" for k in range(3))
    )
    return out


def assign_splits(samples: list[LineSample], cfg: DataConfig, log: DropLog) -> list[LineSample]:
    """Keep layout-given splits unless data.resplit; split the rest by ratio or by group."""
    if cfg.resplit:
        samples = [s.with_(split=None) for s in samples]
    given = [s for s in samples if s.split is not None]
    pending = [s for s in samples if s.split is None]
    if not pending:
        if cfg.group_by:
            log.note(
                f"data.group_by={cfg.group_by} not applied: the layout gives every sample a split "
                "(set data.resplit=true to re-split)"
            )
        return samples
    if given:
        log.note(f"{len(pending)} samples had no split in the data and were split by data.split_ratios")
    if cfg.group_by:
        pending = group_split(pending, cfg.group_by, cfg.split_ratios, cfg.seed, log)
    else:
        pending = ratio_split(pending, cfg.split_ratios, cfg.seed)
        _note_shared_groups(pending, log)
    return given + pending


# How the note on hands shared between training and validation/test begins (evaluate repeats it).
SPLIT_ONE_BY_ONE = "lines were split one by one"


def _note_shared_groups(samples: list[LineSample], log: DropLog) -> None:
    """Say when a line-by-line split put lines of one page (or writer, manuscript) in training and in
    validation or test: those figures then score hands the model trained on."""
    for key in GROUP_KEYS:
        splits: dict[str, set[str | None]] = defaultdict(set)
        for s in samples:
            if s.meta.get(key) is not None:
                splits[s.meta[key]].add(s.split)
        shared = sorted(g for g, seen in splits.items() if "train" in seen and len(seen) > 1)
        if shared:
            log.note(
                f"{SPLIT_ONE_BY_ONE}: {len(shared)} of {len(splits)} {key}s have lines in training "
                f"and in validation or test (e.g. {shared[0]}), so those scores include hands seen in "
                f"training; data.group_by={key} keeps each {key} in one split"
            )
            return


def validation_sample(
    samples: list[LineSample], limit: int | None, seed: int
) -> tuple[list[LineSample], str | None]:
    """At most `limit` of the validation lines, a seeded sample kept in reading order, and the note that
    says so; every line (and no note) when they are fewer or `limit` is None."""
    if limit is None or len(samples) <= limit:
        return samples, None
    keep = sorted(random.Random(seed).sample(range(len(samples)), limit))
    note = (
        f"validation reads {limit:,} of the {len(samples):,} validation lines, a fixed sample drawn with "
        f"data.seed={seed}, at every evaluation and in the final report (train.eval_max_lines=null reads all)"
    )
    return [samples[i] for i in keep], note
