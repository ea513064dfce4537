"""Leak-free splits: whole groups (documents or chunk groups) go to one split, never single QA pairs.

The original blog series split per QA pair, so most evaluation contexts had been seen in training. Here a
group key (``doc_id`` by default) decides the split, and the assignment balances the QA types across splits.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from .profiles import Profile

STAGE = "split"
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


def gold_eval(seed: int = 0) -> list[dict]:
    """The gold eval split as every model sees it: PII-scrubbed (question, answer, context). A model that reads
    copies from its context, so planted personal data must not be in it."""
    from . import qc

    return [qc.scrub_record(r) for r in gold_splits(seed)["eval"]]


# --------------------------------------------------------------------------- the course's training data
def _norm_context(text: str) -> str:
    import re

    return re.sub(r"\s+", " ", text or "").strip().lower()


def context_leaks(splits: dict[str, list[dict]], train: str = "train") -> set[str]:
    """Contexts (whitespace-normalised) of any non-train split that also occur in train (must be empty)."""
    train_ctx = {_norm_context(r.get("context", "")) for r in splits.get(train, [])} - {""}
    return {_norm_context(r.get("context", "")) for name, recs in splits.items() if name != train
            for r in recs} & train_ctx


def pair_split(records: list[dict], fractions: dict[str, float] | None = None, seed: int = 0) -> dict[str, list[dict]]:
    """The original series' mistake, for comparison only: every QA pair drawn into a split on its own."""
    fractions = fractions or DEFAULT_FRACTIONS
    recs = list(records)
    random.Random(seed).shuffle(recs)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(recs) if i == len(names) - 1 else start + round(fractions[name] * len(recs))
        out[name] = recs[start:end]
        start = end
    return out


def leak_share(splits: dict[str, list[dict]], group_key: str = "doc_id", split: str = "eval") -> float:
    """Share of a split's records whose group (document) also occurs in train."""
    train_groups = {r[group_key] for r in splits.get("train", [])}
    recs = splits.get(split, [])
    return sum(r[group_key] in train_groups for r in recs) / len(recs) if recs else 0.0


def training_splits(generated: list[dict], seed: int = 0, scrub: bool = True) -> tuple[dict[str, list[dict]], list[dict]]:
    """Train/val/eval for the course: gold pairs plus QC-accepted generated pairs, labelled by ``source``.

    The gold split by document (:func:`gold_splits`) decides where each document goes; a generated pair
    follows its document. ``eval`` stays gold-only: generated pairs of eval documents are returned as
    rejects (reason ``eval_document``), so no eval context reaches training. All pairs are PII-scrubbed
    (question, answer, context) when ``scrub`` is set: a model that reads copies from its context. Generated
    pairs of documents without gold items go to train.
    """
    from . import qc

    gold = gold_splits(seed)
    doc_split = {r["doc_id"]: name for name, recs in gold.items() for r in recs}
    out: dict[str, list[dict]] = {name: [] for name in DEFAULT_FRACTIONS}
    for name, recs in gold.items():
        for r in recs:
            rec = {**r, "source": "gold"}
            out[name].append(qc.scrub_record(rec) if scrub else rec)
    rejects = []
    for r in generated:
        name = doc_split.get(r["doc_id"], "train")
        if name == "eval":
            rejects.append({**r, "stage": "split", "reason": "eval_document",
                            "detail": "eval is gold-only; this document's pairs stay out of training"})
            continue
        out[name].append({**r, "source": r.get("source", "generated")})
    for recs in out.values():
        recs.sort(key=lambda r: (r["source"], r["id"]))
    return out, rejects


def split_counts(splits: dict[str, list[dict]]):
    """Records per split, source and type (DataFrame)."""
    import pandas as pd

    rows = [{"split": name, "source": r.get("source", "?"), "type": r.get("type", "?")}
            for name, recs in splits.items() for r in recs]
    df = pd.DataFrame(rows, columns=["split", "source", "type"])
    return df.groupby(["split", "source", "type"]).size().unstack("type", fill_value=0)


def write_splits(splits: dict[str, list[dict]], out_dir) -> dict[str, int]:
    from pathlib import Path

    from . import io

    for name, recs in splits.items():
        io.write_jsonl(Path(out_dir) / f"{name}.jsonl", recs)
    return {name: len(recs) for name, recs in splits.items()}


def split_file(input_path, out_dir, rejects_path, by: str = "doc_id", seed: int = 0,
               with_gold: bool = True) -> dict:
    """The ``split`` step: QA JSONL → ``train/val/eval.jsonl`` (checked leak-free before writing)."""
    from . import io

    records = io.read_jsonl(input_path)
    if with_gold:
        splits, rejects = training_splits(records, seed)
        groups_leaked = leaked_groups(splits, "doc_id")
    else:
        splits, rejects = group_split(records, by, DEFAULT_FRACTIONS, seed), []
        groups_leaked = leaked_groups(splits, by)
    leaks = context_leaks(splits)
    if groups_leaked or leaks:
        raise ValueError(f"Split would leak {len(groups_leaked)} groups / {len(leaks)} contexts into train; "
                         "check for duplicate documents or contexts shared across documents.")
    io.write_jsonl(rejects_path, rejects)
    return {"counts": write_splits(splits, out_dir), "rejects": len(rejects)}


def ensure_splits(profile: Profile, work_dir=None, llm=None, seed: int = 0):
    """``splits/{train,val,eval}.jsonl`` of this run: found, or built (… → QC → split). Returns the folder."""
    from . import dataset, qc

    out = dataset.files(work_dir)
    if all((out.splits / f"{n}.jsonl").exists() for n in DEFAULT_FRACTIONS):
        return out.splits
    accepted = qc.ensure_accepted(profile, work_dir, llm=llm)
    split_file(accepted, out.splits, out.rejects(STAGE), seed=seed)
    return out.splits


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    p = sub.add_parser("split", help="leak-free train/val/eval split by document (stratified by type, seeded)")
    p.add_argument("--input", required=True, help="accepted QA JSONL")
    p.add_argument("--output-dir", required=True, help="folder for train.jsonl, val.jsonl, eval.jsonl")
    p.add_argument("--rejects", default=None, help="pairs kept out, e.g. generated pairs of eval documents "
                                                   f"(default: rejects/{STAGE}.jsonl beside the output folder)")
    p.add_argument("--by", default="doc_id", help="group key with --no-gold (doc_id or chunk_id)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gold", action="store_true", help="split only the input (default: add the gold pairs)")
    p.set_defaults(func=cmd_split)


def cmd_split(args) -> int:
    from . import dataset

    rejects = args.rejects or dataset.rejects_file(args.output_dir, STAGE)
    summary = split_file(args.input, args.output_dir, rejects, by=args.by, seed=args.seed, with_gold=not args.no_gold)
    print("split (leak-free, checked): " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
          + f" -> {args.output_dir}; {summary['rejects']} rejects -> {rejects}")
    return 0
