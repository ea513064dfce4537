"""Notebook 08's measurements around the judge: validation against the human labels, a rule baseline, bias probes
and the original series' kappa arithmetic.

* **Separation.** ``items()`` gives what a judge may see (id, context, question, answer); ``truth()`` gives the human
  labels (label, hallucination, category) keyed by id, and only ``validate`` joins the two - by id, never by position.
* **Validation** (``validate``): confusion matrix (rows human, columns judge), raw agreement with its Wilson
  interval, Cohen's kappa and quadratic-weighted kappa with item-bootstrap and asymptotic intervals
  (``helpers.stats``), precision and recall of the hallucination flag, and the unparsed rate beside them. Unparsed
  judgments are not graded: they are counted, and the agreement over *all* items counts them as misses.
* **Baseline** (``baseline_judge``): rules without a language model - numbers that the context does not contain,
  share of content words found in the context, speculation and filler phrases, length. Rules and thresholds were
  written down from the rubric before looking at the judge's results, not fitted to the 183 labels.
* **Probes**: position swap in pairwise mode (``pair_items``/``position_bias``), verbosity (``padded_items``/
  ``verbosity_shift``).
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from . import gold, stats, textmetrics
from .judgeprompt import GRADES

SCORE = {"A": 2, "B": 1, "C": 0}   # ordinal: higher is better

# Post 8 of the series: the judge comparison's glossary table (rows Claude = the series' "truth", columns the
# Llama-3.1-8B judge; A/B/C) and the marginals and agreements its text states (read from the post by the course
# team; docs/blogserie.md lists the claimed 0.30 and the 111 of 171 agreements).
SERIES_TABLE = [[105, 5, 1], [45, 3, 2], [8, 1, 1]]
SERIES_TEXT = {"rows": [111, 50, 10], "cols": [167, 3, 1], "agreements": 111, "claimed_kappa": 0.30}


# --------------------------------------------------------------------------- data, kept apart
def items(records: Sequence[dict] | None = None) -> list[dict]:
    """What a judge sees: id, context, question, answer (the human labels are left behind)."""
    records = gold.load_judge_labels() if records is None else records
    return [{k: r[k] for k in ("id", "context", "question", "answer")} for r in records]


def truth(records: Sequence[dict] | None = None) -> dict[str, dict]:
    """The human labels by id: label (A/B/C), hallucination flag, category of the labelled answer."""
    records = gold.load_judge_labels() if records is None else records
    return {r["id"]: {"label": r["label"], "hallucination": bool(r["hallucination"]),
                      "category": r.get("category")} for r in records}


# --------------------------------------------------------------------------- validation
def validate(judgments: Sequence[dict], labels: dict[str, dict], judge: str | None = None,
             n_boot: int = stats.N_BOOT, seed: int = 0) -> dict:
    """Agreement of one judge variant with the human labels, joined by id."""
    js = {j["id"]: j for j in judgments if judge is None or j.get("judge") == judge}
    ids = sorted(i for i in labels if i in js)
    parsed = [i for i in ids if js[i]["status"] == "ok"]
    human = [labels[i]["label"] for i in parsed]
    machine = [js[i]["grade"] for i in parsed]
    table = stats.confusion(human, machine, GRADES)
    kappa = stats.cohens_kappa(human, machine, labels=GRADES, n_boot=n_boot, seed=seed)
    qwk = stats.cohens_kappa(human, machine, weights="quadratic", labels=GRADES, n_boot=n_boot, seed=seed)
    same = sum(h == m for h, m in zip(human, machine))
    return {"judge": judge, "n_labels": len(labels), "n_judged": len(ids), "n_parsed": len(parsed),
            "unparsed": len(ids) - len(parsed), "unparsed_rate": (len(ids) - len(parsed)) / len(ids) if ids else 0.0,
            "missing": len(labels) - len(ids), "confusion": table,
            "agreement": stats.agreement(human, machine),
            "agreement_all": {"value": same / len(labels), "wilson": stats.wilson_ci(same, len(labels))},
            "kappa": kappa, "qwk": qwk, "share_A": machine.count("A") / len(machine) if machine else float("nan"),
            "hallucination": stats.flag_quality([labels[i]["hallucination"] for i in parsed],
                                                [js[i]["hallucination"] for i in parsed])}


def confusion_frame(result: dict):
    """The confusion matrix as printed: rows the human label, columns the judge."""
    import pandas as pd

    return pd.DataFrame(result["confusion"], index=[f"Mensch {g}" for g in GRADES],
                        columns=[f"Judge {g}" for g in GRADES])


def recheck_from_table(frame) -> dict:
    """Kappa and quadratic-weighted kappa recomputed from the printed table only (must match ``validate``)."""
    table = frame.to_numpy()
    return {"kappa": stats.kappa_from_table(table)["value"],
            "qwk": stats.kappa_from_table(table, "quadratic")["value"]}


def _ci(pair) -> str:
    return f"[{pair[0]:.2f}, {pair[1]:.2f}]"


def validation_table(results: dict[str, dict]):
    """One row per judge: n, unparsed, agreement, kappa and quadratic kappa with both intervals, flag P/R."""
    import pandas as pd

    rows = []
    for name, r in results.items():
        h = r["hallucination"]
        rows.append({"judge": name, "n": r["n_parsed"], "unparsed": r["unparsed"],
                     "anteil_A": round(r["share_A"], 2),
                     "übereinstimmung": round(r["agreement"]["value"], 2),
                     "wilson_95": _ci((r["agreement"]["ci_low"], r["agreement"]["ci_high"])),
                     "kappa": round(r["kappa"]["value"], 3), "kappa_boot": _ci(r["kappa"]["bootstrap"]),
                     "kappa_asym": _ci(r["kappa"]["asymptotic"]),
                     "qwk": round(r["qwk"]["value"], 3), "qwk_boot": _ci(r["qwk"]["bootstrap"]),
                     "qwk_asym": _ci(r["qwk"]["asymptotic"]),
                     "halluz_precision": round(h["precision"], 2), "halluz_recall": round(h["recall"], 2),
                     "recall_95": _ci(h["recall_ci"])})
    return pd.DataFrame(rows).set_index("judge")


def per_category(judgments: Sequence[dict], labels: dict[str, dict], judge: str):
    """Grade counts of one judge per category of the labelled answer (which errors does it see?)."""
    import pandas as pd

    rows = [{"kategorie": labels[j["id"]]["category"], "mensch": labels[j["id"]]["label"],
             "urteil": j.get("grade") if j["status"] == "ok" else "unparsed"}
            for j in judgments if j.get("judge") == judge and j["id"] in labels]
    df = pd.DataFrame(rows)
    return df.pivot_table(index=["kategorie", "mensch"], columns="urteil", aggfunc="size", fill_value=0)


def category_share(judgments: Sequence[dict], labels: dict[str, dict], judge: str, category: str, grade: str) -> float:
    """Share of one category's labelled answers that this judge graded ``grade`` (unparsed counts as not ``grade``)."""
    got = [j.get("grade") if j["status"] == "ok" else None
           for j in judgments if j.get("judge") == judge and labels.get(j["id"], {}).get("category") == category]
    return sum(g == grade for g in got) / len(got) if got else float("nan")


# the categories notebook 08 reads a judge by: seen (a foreign document -> C) or missed (a changed number or an
# incomplete answer graded A); helpers/expectations.yaml checks the resulting shares under these names
CATEGORY_PROBES = (("wrong_document", "C"), ("wrong_number", "A"), ("incomplete", "A"))


def category_shares(judgments: Sequence[dict], labels: dict[str, dict], judge: str) -> dict[str, float]:
    """``category_share`` for each of ``CATEGORY_PROBES``, keyed ``<category>_as_<grade>``."""
    return {f"{cat}_as_{g}": category_share(judgments, labels, judge, cat, g) for cat, g in CATEGORY_PROBES}


# --------------------------------------------------------------------------- the non-LLM baseline
SPECULATION = ("vermutlich", "wahrscheinlich", "erfahrungsgemäß", "dürfte", "in der regel", "meist ", "meistens",
               "üblicherweise", "vielleicht", "möglicherweise", "künftig", "in der praxis")
FILLER = ("zusammenfassend", "gute frage", "noch einmal", "mit anderen worten", "genauer zu erklären",
          "im umkehrschluss", "kurz gesagt")
MIN_OVERLAP = 0.6        # share of the answer's content words that must occur in the context
MAX_CHARS = 300          # longer answers are "aufgebläht" (the rubric's B)
MIN_WORDS = 10           # shorter answers are probably incomplete (B)


def baseline_grade(context: str, question: str, answer: str) -> dict:
    """Rules only: grounding of numbers and words, speculation and filler phrases, length."""
    text = f" {answer.lower()} "
    new_numbers = textmetrics.numbers(answer) - textmetrics.numbers(context)
    overlap = textmetrics.context_overlap(answer, context)
    if new_numbers:
        return {"grade": "C", "hallucination": True, "rationale": f"Zahl nicht im Kontext: {sorted(new_numbers)[0]}"}
    if overlap is not None and overlap < MIN_OVERLAP:
        return {"grade": "C", "hallucination": True, "rationale": f"nur {overlap:.0%} der Wörter im Kontext"}
    if any(w in text for w in SPECULATION):
        return {"grade": "B", "hallucination": True, "rationale": "Vermutung"}
    if len(answer) > MAX_CHARS or any(w in text for w in FILLER):
        return {"grade": "B", "hallucination": False, "rationale": "aufgebläht"}
    if len(textmetrics.tokens(answer)) < MIN_WORDS:
        return {"grade": "B", "hallucination": False, "rationale": "kurz, vermutlich unvollständig"}
    return {"grade": "A", "hallucination": False, "rationale": "belegt, knapp"}


def baseline_judge(records: Sequence[dict]) -> list[dict]:
    """The rule baseline over judge input records, in the judge's output format (``judge: "baseline"``)."""
    return [{"id": r["id"], "judge": "baseline", "status": "ok",
             **baseline_grade(r["context"], r["question"], r["answer"])} for r in records]


# --------------------------------------------------------------------------- probes
def padded_items(records: Sequence[dict], labels: dict[str, dict], n: int | None = None, seed: int = 0) -> list[dict]:
    """Answers the humans graded A, padded with redundant repetition (MT-Bench's "repetitive" attack): ids
    ``<id>:pad``; a seeded sample of ``n`` when given."""
    good = [r for r in records if labels[r["id"]]["label"] == "A"]
    if n is not None and n < len(good):
        good = random.Random(seed).sample(good, n)
    return [{**r, "id": f"{r['id']}:pad", "answer": f"{r['answer']} Mit anderen Worten: {r['answer']} Zur Sicherheit "
             f"noch einmal zusammengefasst: {r['answer']}"} for r in good]


def verbosity_shift(judgments: Sequence[dict], judge: str, n_boot: int = stats.N_BOOT) -> dict:
    """Grade shift (A=2, B=1, C=0) from each original to its padded copy, over items parsed in both."""
    js = {j["id"]: j for j in judgments if j.get("judge") == judge}
    pairs = [(js[i], js[f"{i}:pad"]) for i in js if f"{i}:pad" in js]
    both = [(a, b) for a, b in pairs if a["status"] == "ok" and b["status"] == "ok"]
    before, after = [SCORE[a["grade"]] for a, _ in both], [SCORE[b["grade"]] for _, b in both]
    shift = stats.paired_bootstrap(before, after, n_boot=n_boot)
    worse = sum(b < a for a, b in zip(before, after))
    return {"judge": judge, "pairs": len(pairs), "parsed_both": len(both), **shift,
            "better": sum(b > a for a, b in zip(before, after)), "worse": worse,
            "worse_share": worse / len(both) if both else 0.0, "same": sum(b == a for a, b in zip(before, after))}


def _corrupt(answer: str, context: str, others: list[str], rng: random.Random) -> tuple[str, str]:
    """An answer that is wrong by construction: a number changed to one the context does not contain, else an
    answer to another document's question."""
    ctx_numbers = textmetrics.numbers(context)
    hits = [m for m in re.finditer(r"\d+", answer) if m.group() in ctx_numbers]
    if hits:
        m = rng.choice(hits)
        value = int(m.group())
        new = next(str(v) for v in (value * 2 + 1, value + 7, value + 13) if str(v) not in ctx_numbers)
        return answer[:m.start()] + new + answer[m.end():], "changed_number"
    return rng.choice(others), "other_document"


def pair_items(records: Sequence[dict], labels: dict[str, dict], n: int | None = None, seed: int = 0) -> list[dict]:
    """Pairs for the position probe: a human-A answer (``answer_a``) against a corrupted copy (``answer_b``).

    The human label only picks which answers are correct; the corrupted side is wrong by construction, so the
    expected winner is always ``a`` - and the judge sees ``a`` once in each slot.
    """
    rng = random.Random(seed)
    good = [r for r in records if labels[r["id"]]["label"] == "A"]
    out = []
    for r in good:
        others = [o["answer"] for o in good if o["id"] != r["id"] and o["context"] != r["context"]]
        wrong, kind = _corrupt(r["answer"], r["context"], others, rng)
        out.append({"id": f"{r['id']}:pair", "context": r["context"], "question": r["question"],
                    "answer_a": r["answer"], "answer_b": wrong, "kind": kind})
    return out if n is None or n >= len(out) else rng.sample(out, n)


def position_bias(pair_judgments: Sequence[dict], judge: str) -> dict:
    """Swap consistency (Wilson), first-slot preference among inconsistent pairs (binomial test vs 1/2), and
    how often the consistent verdict is the correct answer ``a``."""
    js = [j for j in pair_judgments if j.get("judge") == judge]
    parsed = [j for j in js if j["winner"] is not None]
    consistent = [j for j in parsed if j["winner"] != "inconsistent"]
    flips = [j for j in parsed if j["winner"] == "inconsistent"]
    first_in_flips = sum(j["first_slot"] == 2 for j in flips)
    return {"judge": judge, "pairs": len(js), "parsed": len(parsed), "consistent": len(consistent),
            "consistency": stats.rate([j["winner"] != "inconsistent" for j in parsed], n_boot=500),
            "first_slot_in_inconsistent": stats.binomial_test(first_in_flips, len(flips)),
            "first_slot_all_orders": stats.binomial_test(sum(j["first_slot"] for j in parsed), 2 * len(parsed)),
            "correct_when_consistent": stats.rate([j["winner"] == "a" for j in consistent], n_boot=500)}


# --------------------------------------------------------------------------- the series' kappa, redone
def series_kappa() -> dict:
    """Post 8's judge kappa from its own numbers: the glossary table and the marginals its text states."""
    table = stats.kappa_from_table(SERIES_TABLE)
    linear = stats.kappa_from_table(SERIES_TABLE, "linear")
    text = stats.kappa_from_marginals(SERIES_TEXT["rows"], SERIES_TEXT["cols"], SERIES_TEXT["agreements"],
                                      claimed=SERIES_TEXT["claimed_kappa"])
    cols = [sum(col) for col in zip(*SERIES_TABLE)]
    return {"table_kappa": table["value"], "table_kappa_ci": table["asymptotic"], "table_linear": linear["value"],
            "table_agreement": table["agreement"], "table_n": table["n"], "judge_share_A": cols[0] / table["n"],
            "text_kappa": text["value"], "text_pe": text["pe"], "text_max_kappa": text["max_kappa"],
            "text_max_agreements": text["max_agreements"], "needed_for_claimed": text["needed_for_claimed"],
            "claimed": SERIES_TEXT["claimed_kappa"]}


# --------------------------------------------------------------------------- the question of notebook 08
TARGET_QWK = 0.4
ALPHA = 0.05          # significance level of the bias probes' tests (position: binomial test against 1/2)


def against_baseline(results: dict[str, dict], judge: str, baseline: str = "baseline") -> dict:
    """Does the LLM judge beat the rule baseline? Target: quadratic kappa >= 0.4 and the lower end of its
    bootstrap interval above the baseline's point estimate."""
    r, b = results[judge]["qwk"], results[baseline]["qwk"]
    low = r["bootstrap"][0]
    return {"judge": judge, "qwk": r["value"], "qwk_low": low, "baseline_qwk": b["value"],
            "reaches_0.4": bool(r["value"] >= TARGET_QWK), "beats_baseline": bool(low > b["value"]),
            "unparsed_rate": results[judge]["unparsed_rate"]}
