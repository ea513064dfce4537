"""Evaluation of the base model and its LoRA adapters on the held-out split, with honest uncertainty.

Per item: did the model stop by itself (vLLM finish reason "stop", not a string heuristic), was it
truncated ("length"), how long is the answer, did it refuse where the context has no answer (and not where
it has one), is the answer grounded in the context (word overlap, every number occurs in the context),
token-F1 and ROUGE-L against the reference answer.

Aggregated: every rate and mean with a seeded percentile-bootstrap confidence interval. Base vs adapter
are compared *paired* (the same questions): an exact McNemar test for yes/no metrics (binomial test on the
discordant pairs) and a paired bootstrap of the mean difference for continuous ones. The original series
reported "40 % vs 93 %" on 15 questions without any interval; with n=15 the 95 % interval of a 40 % rate
spans roughly 15-65 %.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import io, prompts
from .errors import HelpersError
from .profiles import Profile
from .stats import N_BOOT, bootstrap_ci, mcnemar_exact, paired_bootstrap
from .textmetrics import context_overlap, is_refusal, numbers, rouge_l, token_f1

STAGE = "evaluate"
RATE_METRICS = ("stopped", "truncated", "refusal_correct", "false_refusal", "grounded", "numbers_grounded")
MEAN_METRICS = ("answer_tokens", "token_f1", "rouge_l", "context_overlap")
GERMAN = {
    "stopped": "stoppt selbst (finish_reason=stop)", "truncated": "abgeschnitten (finish_reason=length)",
    "refusal_correct": "verweigert bei unbeantwortbaren Fragen", "false_refusal": "verweigert bei beantwortbaren",
    "grounded": "im Kontext verankert", "numbers_grounded": "alle Zahlen im Kontext",
    "answer_tokens": "Antwortlänge (Tokens)", "token_f1": "Token-F1 zur Referenz", "rouge_l": "ROUGE-L zur Referenz",
    "context_overlap": "Wortanteil aus dem Kontext",
}
REQUIRED_FIELDS = ("id", "question", "context", "answer", "type")
QA_TYPES = ("factual", "conceptual", "comparison", "unanswerable")
GROUNDED_OVERLAP = 0.6   # share of the answer's content words that must occur in the context

class EvaluationError(HelpersError, ValueError):
    pass


def score_item(record: dict, answer: str, finish_reason: str, output_tokens: int,
               variant: str = "base") -> dict:
    """All per-item metrics for one generated answer; metrics that do not apply are None."""
    answerable = record["type"] != "unanswerable"
    refused = is_refusal(answer)
    overlap = context_overlap(answer, record["context"]) if answerable and not refused else None
    nums = numbers(answer)
    nums_ok = (nums <= numbers(record["context"])) if (answerable and nums and not refused) else None
    grounded = None
    if answerable:
        grounded = (not refused and overlap is not None and overlap >= GROUNDED_OVERLAP
                    and nums_ok is not False)
    return {
        "id": record["id"], "variant": variant, "type": record["type"], "question": record["question"],
        "reference": record["answer"], "answer": answer, "finish_reason": finish_reason,
        "answer_tokens": output_tokens,
        "stopped": finish_reason == "stop", "truncated": finish_reason == "length",
        "refused": refused,
        "refusal_correct": refused if not answerable else None,
        "false_refusal": refused if answerable else None,
        "context_overlap": overlap, "numbers_grounded": nums_ok, "grounded": grounded,
        "token_f1": token_f1(answer, record["answer"]), "rouge_l": rouge_l(answer, record["answer"]),
    }


def _values(items: Iterable[dict], metric: str) -> list[float]:
    return [float(it[metric]) for it in items if it.get(metric) is not None]


def summarize(items: Sequence[dict], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, dict[str, dict]]:
    """{variant: {metric: {value, ci_low, ci_high, n}}} for every rate and mean metric."""
    out: dict[str, dict[str, dict]] = {}
    for variant in dict.fromkeys(it["variant"] for it in items):
        rows = [it for it in items if it["variant"] == variant]
        out[variant] = {}
        for metric in RATE_METRICS + MEAN_METRICS:
            vals = _values(rows, metric)
            lo, hi = bootstrap_ci(vals, n_boot, seed=seed)
            out[variant][metric] = {"value": float(np.mean(vals)) if vals else None,
                                    "ci_low": lo if vals else None, "ci_high": hi if vals else None,
                                    "n": len(vals)}
    return out


def compare(items: Sequence[dict], base: str = "base", other: str = "fixed", n_boot: int = N_BOOT,
            seed: int = 0) -> dict[str, dict]:
    """Paired comparison of two variants on the items both answered (matched by id)."""
    by_id = {v: {it["id"]: it for it in items if it["variant"] == v} for v in (base, other)}
    for v in (base, other):
        if not by_id[v]:
            known = ", ".join(dict.fromkeys(it["variant"] for it in items))
            raise EvaluationError(f"No results for variant '{v}'. Variants in these results: {known}.")
    ids = [i for i in by_id[base] if i in by_id[other]]
    out = {}
    for metric in RATE_METRICS:
        pairs = [(by_id[base][i][metric], by_id[other][i][metric]) for i in ids
                 if by_id[base][i][metric] is not None and by_id[other][i][metric] is not None]
        a, b = [bool(x) for x, _ in pairs], [bool(y) for _, y in pairs]
        test = mcnemar_exact(a, b)
        out[metric] = {"test": "McNemar (exact)", "n": len(pairs),
                       "base": float(np.mean(a)) if a else None, "other": float(np.mean(b)) if b else None,
                       "diff": float(np.mean(b) - np.mean(a)) if a else None, **test}
    for metric in MEAN_METRICS:
        pairs = [(by_id[base][i][metric], by_id[other][i][metric]) for i in ids
                 if by_id[base][i][metric] is not None and by_id[other][i][metric] is not None]
        res = paired_bootstrap([x for x, _ in pairs], [y for _, y in pairs], n_boot, seed=seed)
        out[metric] = {"test": "paired bootstrap", "base": float(np.mean([x for x, _ in pairs])) if pairs else None,
                       "other": float(np.mean([y for _, y in pairs])) if pairs else None,
                       "diff": res["mean_diff"], **res}
    return out


# --------------------------------------------------------------------------- data in
def validate_records(records: Sequence[dict], rejects_path: str | Path | None = None,
                     source: str = "") -> list[dict]:
    """Keep records with all fields and a known type; the rest go to the rejects file with a reason."""
    good, rejects, seen = [], [], set()
    for i, rec in enumerate(records):
        missing = [f for f in REQUIRED_FIELDS if not isinstance(rec.get(f), str) or not rec.get(f).strip()]
        reason = None
        if missing:
            reason = f"missing or empty field(s): {', '.join(missing)}"
        elif rec["type"] not in QA_TYPES:
            reason = f"unknown type '{rec['type']}' (expected one of {', '.join(QA_TYPES)})"
        elif rec["id"] in seen:
            reason = f"duplicate id '{rec['id']}'"
        if reason:
            rejects.append({**rec, "reason": reason, "stage": "evaluate", "source": f"{source}#{i + 1}"})
            continue
        seen.add(rec["id"])
        good.append(rec)
    if rejects and rejects_path:
        io.append_jsonl(rejects_path, rejects)
    if not good:
        raise EvaluationError(f"No usable evaluation records in {source or 'the input'} ({len(rejects)} rejected"
                              + (f", see {rejects_path}" if rejects_path else "") + "). Each record needs "
                              f"{', '.join(REQUIRED_FIELDS)}; type one of {', '.join(QA_TYPES)}.")
    return good


def load_eval(path: str | Path | None = None, rejects_path: str | Path | None = None) -> list[dict]:
    """Evaluation records from a JSONL file, or the gold set's held-out split (PII-scrubbed, as everything a model
    sees) when ``path`` is None."""
    if path is None:
        from . import split

        return validate_records(split.gold_eval(), rejects_path, "gold eval split (PII-scrubbed)")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Evaluation file {path} does not exist. Omit --eval to use the gold set's "
                                "held-out split, or write one with helpers.split.gold_splits()['eval'].")
    return validate_records(io.read_jsonl(path), rejects_path, str(path))


# --------------------------------------------------------------------------- the run
def _generate_base(profile: Profile, conv: list, params, progress: bool) -> tuple[list, float]:
    """Base model in a plain engine; the engine is released when this function returns."""
    import gc

    from . import inference

    llm = inference.make_llm(profile)
    try:
        t0 = time.perf_counter()
        gens = inference.generate(llm, inference.chat_prompts(llm, conv), params, progress=progress)
        return gens, time.perf_counter() - t0
    finally:
        inference.shutdown(llm)
        del llm
        gc.collect()  # the old engine must be gone before the next one starts in this process


def _generate_adapters(profile: Profile, adapters: dict, conv: list, names: list, params,
                       progress: bool) -> tuple[list, float]:
    """One mixed batch over the adapters (and the base model where it may join) in a LoRA engine."""
    import gc

    from . import adapters as lora, inference

    llm, aset = lora.make_lora_llm(profile, adapters, base_via_adapter=False)
    try:
        chat = inference.chat_prompts(llm, conv)
        t0 = time.perf_counter()
        gens = lora.generate_mixed(llm, aset, chat, names, params, progress=progress)
        return gens, time.perf_counter() - t0
    finally:
        inference.shutdown(llm)
        del llm
        gc.collect()


def run(profile: Profile, records: Sequence[dict], adapters: dict[str, str] | None = None,
        max_tokens: int | None = None, progress: bool = True) -> list[dict]:
    """Answer every record with the base model and every adapter, greedy (reproducible), and score them.

    All adapters run in ONE mixed batch (one LoRARequest per prompt). The base model joins that batch
    on GPUs. Where the installed vLLM would leak adapter weights into base requests (its PyTorch LoRA ops,
    used on CPU; see adapters.base_requests_leak), the base model runs first in a plain engine instead -
    correct, and on CPU also ~30x faster than the LoRA path (``make bench``). Returns one item per
    (record, variant); engines are shut down before returning.
    """
    from . import adapters as lora, inference

    adapters = dict(adapters or {})
    lora.check_all(adapters, profile)
    conv = [prompts.qa_messages(r["question"], r["context"]) for r in records]
    params = inference.sampling_params(profile, temperature=0.0,
                                       max_tokens=max_tokens or profile.generation.max_tokens)
    base_apart = not adapters or lora.needs_base_adapter(profile)
    items: list[dict] = []

    def score(batch, gens, seconds):
        for (variant, rec), g in zip(batch, gens):
            items.append({**score_item(rec, g.text, g.finish_reason, g.output_tokens, variant),
                          "batch_seconds": round(seconds, 2)})

    if base_apart:
        score([(lora.BASE, r) for r in records], *_generate_base(profile, conv, params, progress))
    if adapters:
        variants = ([] if base_apart else [lora.BASE]) + list(adapters)
        batch = [(v, r) for v in variants for r in records]
        score(batch, *_generate_adapters(profile, adapters, conv * len(variants), [v for v, _ in batch], params,
                                         progress))
    return items


# --------------------------------------------------------------------------- context over memory
def counterfactual_records(records: Sequence[dict], seed: int = 0) -> list[dict]:
    """The "strict context" test set: answerable records whose key number -- one that context and reference
    share, not a year -- is replaced in context and reference by another plausible value (``cf_old`` ->
    ``cf_new``). A model that reads answers with the new value; one that answers from memory keeps the old."""
    import random
    import re

    rng = random.Random(seed)
    out = []
    for r in records:
        if r.get("type") == "unanswerable":
            continue
        in_context = list(dict.fromkeys(re.findall(r"(?<![\d.,])\d+(?!\d)", r["context"])))
        shared = [n for n in in_context if re.search(rf"(?<!\d){n}(?!\d)", r["answer"])
                  and not 1990 <= int(n) <= 2035]
        if not shared:
            continue
        old = shared[0]
        value = int(old)
        new = str(value + rng.choice([1, 2, 3, 5]) if value < 10 else value * 2 if value < 1000 else value + 1000)

        def swap(text: str) -> str:
            return re.sub(rf"(?<![\d.,]){old}(?!\d)", new, text)

        out.append({**r, "id": f"{r['id']}-cf", "context": swap(r["context"]), "answer": swap(r["answer"]),
                    "cf_old": old, "cf_new": new})
    return out


def follows_context(items: Sequence[dict], records: Sequence[dict]) -> dict[str, dict]:
    """Per variant: the share of answers to counterfactual records that carry the edited value and not the
    original one (Wilson interval), and how many still carry the original."""
    from .stats import wilson_ci

    by_id = {r["id"]: r for r in records}
    out: dict[str, dict] = {}
    for variant in dict.fromkeys(it["variant"] for it in items):
        seen = [(by_id[it["id"]], numbers(it["answer"])) for it in items
                if it["variant"] == variant and it["id"] in by_id]
        follows = [rec["cf_new"] in nums and rec["cf_old"] not in nums for rec, nums in seen]
        memory = sum(rec["cf_old"] in nums for rec, nums in seen)
        low, high = wilson_ci(sum(follows), len(follows)) if follows else (float("nan"), float("nan"))
        out[variant] = {"n": len(follows), "follows_context": sum(follows) / len(follows) if follows else None,
                        "ci_low": low, "ci_high": high, "keeps_original": memory}
    return out


def report(items: Sequence[dict], base: str = "base", n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Summary per variant plus a paired comparison of every adapter with the base model."""
    summary = summarize(items, n_boot, seed)
    comparisons = {v: compare(items, base, v, n_boot, seed) for v in summary if v != base}
    return {"summary": summary, "comparisons": comparisons}


def evaluate_to_file(profile: Profile, adapters: dict[str, str] | None, output: str | Path,
                     eval_path: str | Path | None = None, limit: int | None = None, max_tokens: int | None = None,
                     n_boot: int = N_BOOT, seed: int = 0, progress: bool = True,
                     rejects_path: str | Path | None = None, answers_path: str | Path | None = None) -> dict:
    """The CLI step: load + validate the eval set, run, score, write per-item results and summary atomically.

    ``output`` (JSON) gets config, summary, comparisons and items; rejected eval records go to
    ``rejects_path`` (default ``rejects/evaluate.jsonl`` beside ``output``, ``dataset.rejects_file``). The run is one batch (about a minute on CPU), so it is not resumable:
    a failed run leaves no output behind and is simply repeated.
    """
    from . import gold

    output = Path(output)
    from .dataset import rejects_file

    rejects = rejects_path or rejects_file(output, STAGE)
    records = load_eval(eval_path, rejects)
    records = gold.sample(records, limit, seed) if limit else records
    items = run(profile, records, adapters, max_tokens=max_tokens, progress=progress)
    result: dict[str, Any] = {
        "config": {"profile": profile.name, "eval": str(eval_path or "gold eval split"), "records": len(records),
                   "adapters": dict(adapters or {}), "max_tokens": max_tokens or profile.generation.max_tokens,
                   "n_boot": n_boot, "seed": seed, "grounded_overlap": GROUNDED_OVERLAP},
        **report(items, n_boot=n_boot, seed=seed), "items": items}
    io.write_json(output, result)
    if answers_path:
        write_answers(answers_path, records, items, next(iter(adapters or {}), "base"))
    return result


def write_answers(path: str | Path, records: Sequence[dict], items: Sequence[dict], variant: str) -> int:
    """One variant's answers as judge input: {id, question, context, answer, reference, type, variant, finish_reason}."""
    by_id = {r["id"]: r for r in records}
    return io.write_jsonl(path, [{"id": it["id"], "question": it["question"], "context": by_id[it["id"]]["context"],
                                  "answer": it["answer"], "reference": it["reference"], "type": it["type"],
                                  "variant": variant, "finish_reason": it["finish_reason"]}
                                 for it in items if it["variant"] == variant])


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, progress_arg

    p = sub.add_parser("evaluate", help="base model vs LoRA adapters on the eval split: metrics, bootstrap CIs, "
                                        "paired tests (one mixed vLLM batch)")
    profile_arg(p, profile)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter to compare (repeatable)")
    p.add_argument("--eval", default=None, metavar="F",
                   help="evaluation JSONL (id, question, context, answer, type); default: the gold held-out split")
    p.add_argument("--output", required=True, help="metrics JSON (summary, comparisons, per-item results)")
    p.add_argument("--rejects", default=None, help=f"rejects JSONL (default: rejects/{STAGE}.jsonl beside --output)")
    p.add_argument("--answers", default=None, metavar="F", help="also write the first adapter's answers with their "
                                                                "context as JSONL (the judge's input)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded sample of N records")
    p.add_argument("--max-tokens", type=int, default=profile.generation.max_tokens,
                   help="output tokens per answer (default: the profile's generation.max_tokens, %(default)s)")
    p.add_argument("--n-boot", type=int, default=N_BOOT, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    progress_arg(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from .adapters import parse_adapters
    from .evalreport import comparison_table, summary_table

    result = evaluate_to_file(args.profile, parse_adapters(args.adapter), args.output, args.eval,
                              limit=args.limit, max_tokens=args.max_tokens, n_boot=args.n_boot, seed=args.seed,
                              progress=not args.no_progress, rejects_path=args.rejects,
                              answers_path=args.answers)
    print(summary_table(result["summary"]).to_string(index=False))
    for name, comp in result["comparisons"].items():
        print(f"\nbase vs {name} (paired):")
        print(comparison_table(comp).to_string(index=False))
    print(f"\n{result['config']['records']} records x {1 + len(result['config']['adapters'])} variants -> {args.output}")
    return 0
