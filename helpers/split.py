"""Leak-free splits: whole groups (documents or chunk groups) go to one split, never single QA pairs.

The original blog series split per QA pair, so most evaluation contexts had been seen in training. Here a
group key (``doc_id`` by default) decides the split, and the assignment balances the QA types across splits.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "eval": 0.2}


def group_split(records: list[dict], group_key: str = "doc_id", fractions: dict[str, float] | None = None,
                seed: int = 0, stratify: str | None = "type") -> dict[str, list[dict]]:
    """Assign every group to one split; groups are placed where their QA types are most missing."""
    fractions = fractions or DEFAULT_FRACTIONS
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"Split fractions must sum to 1, got {fractions}")
    groups: dict[str, list[dict]] = defaultdict(list)
    for rec in records:
        if group_key not in rec:
            raise ValueError(f"Record {rec.get('id')} has no '{group_key}' to group by")
        groups[rec[group_key]].append(rec)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    keys.sort(key=lambda k: -len(groups[k]))  # big groups first, ties in seeded random order
    total = Counter(r.get(stratify, "_") if stratify else "_" for r in records)
    have: dict[str, Counter] = {name: Counter() for name in fractions}
    out: dict[str, list[dict]] = {name: [] for name in fractions}
    for key in keys:
        types = Counter(r.get(stratify, "_") if stratify else "_" for r in groups[key])

        def deficit(name: str) -> float:
            return sum(fractions[name] * total[t] - have[name][t] for t in types) / max(fractions[name], 1e-9)

        best = max(fractions, key=lambda name: (deficit(name), fractions[name]))
        out[best].extend(groups[key])
        have[best].update(types)
    return out


def leaked_groups(splits: dict[str, list[dict]], group_key: str = "doc_id", train: str = "train") -> set:
    """Groups of any non-train split that also occur in train (must be empty)."""
    train_groups = {r[group_key] for r in splits.get(train, [])}
    return {r[group_key] for name, recs in splits.items() if name != train for r in recs} & train_groups


def gold_splits(seed: int = 0) -> dict[str, list[dict]]:
    """The course's standard split of the gold QA set by document (train / val / eval)."""
    from . import gold

    return group_split(gold.load_qa(), "doc_id", DEFAULT_FRACTIONS, seed)
