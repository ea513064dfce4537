"""The A/B experiment end to end (notebook 09): two adapter versions, simulated users through the router,
per-request outcomes, the pre-registered sequential decision applied at its looks, per-arm summaries.

* ``version_records``: faq-v1 is trained without the unanswerable examples, faq-v2 with them (their answer is
  the fixed refusal sentence, ``prompts.REFUSAL``) -- the one difference between the versions.
* ``simulated_users``: users drawn from the *held-out* gold questions (val + eval splits, never trained on),
  half of them asking an unanswerable question, each with a stable user id.
* ``run_experiment``: sends the users through the router in batches up to each look of the plan, scores
  every answer (``evaluation.score_item``: finish reason, refusal), applies ``sequential.decide_stream`` on
  the primary metric and stops at the first decision, at max n, or at the time budget ("no decision").
* The judge's grade: every outcome carries ``judge_grade`` = None. ``attach_judge_grades`` fills it from a
  grading function (the judge module, ``python -m helpers judge``) that sees question, context and answer
  only -- never the arm or the adapter name.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from . import prompts, sequential
from .evaluation import score_item

ARMS = ("v1", "v2")
# the metric of each outcome the plan may name, and which requests it applies to
METRICS = {"refusal_correct": "unanswerable questions: answered with the refusal sentence",
           "stopped": "every request: finish_reason == 'stop'",
           "false_refusal": "answerable questions: refused anyway"}


def version_records(train_records: Sequence[dict]) -> dict[str, list[dict]]:
    """faq-v1: the training records without unanswerable examples; faq-v2: all of them."""
    return {"faq-v1": [r for r in train_records if r.get("type") != "unanswerable"],
            "faq-v2": list(train_records)}


def train_versions(profile, work_dir: str | Path, progress: bool = False,
                   reuse: Sequence[str] = ("fixed",)) -> dict[str, dict]:
    """faq-v1 and faq-v2 in ``<work_dir>/adapters``, from the gold training split (PII-scrubbed).

    A version already trained on the same records with the same recipe is kept. Where an adapter named in
    ``reuse`` (notebook 05's ``fixed``: the whole gold split) was trained on exactly a version's records with the
    same recipe (``training.same_recipe``), its weights are copied under the version's name instead of training
    them again; ``source`` says which happened."""
    from . import training

    train = [r for r in training.training_records(work_dir)[0] if r.get("source") == "gold"]
    adapters = training.adapters_dir(work_dir)
    out = {}
    for name, records in version_records(train).items():
        target = adapters / name
        if not training.same_recipe(target, profile, records):
            donor = next((d for d in reuse if training.same_recipe(adapters / d, profile, records)), None)
            if donor:
                print(f"{name}: same records and recipe as adapter '{donor}': copying its weights", flush=True)
                training.copy_adapter(adapters / donor, target)
            else:
                print(f"Training {name} on {len(records)} records ...", flush=True)
                training.train(profile, records, None, target, progress=progress)
        info = training.adapter_info(target)
        out[name] = {"path": str(target), "records": len(records),
                     "unanswerable": sum(r.get("type") == "unanswerable" for r in records),
                     "source": f"copy of {info['copied_from']}" if info.get("copied_from") else "trained",
                     "seconds": info["seconds"], "loss_last": info["loss_last"],
                     "dataset_fingerprint": info["dataset_fingerprint"]}
    return out


def held_out_questions() -> list[dict]:
    """The gold questions no adapter was trained on (val + eval splits), PII-scrubbed as every model input."""
    from . import qc
    from .split import gold_splits

    splits = gold_splits()
    return [qc.scrub_record(r) for r in splits["val"] + splits["eval"]]


def simulated_users(n: int, records: Sequence[dict] | None = None, unanswerable_share: float = 0.5,
                    seed: int = 0, prefix: str = "user") -> list[dict]:
    """``n`` users, each with an id and one held-out question (unanswerable with ``unanswerable_share``)."""
    records = list(records or held_out_questions())
    pools = {True: [r for r in records if r["type"] == "unanswerable"],
             False: [r for r in records if r["type"] != "unanswerable"]}
    rng = random.Random(seed)
    return [{"user": f"{prefix}-{seed}-{i}", "record": rng.choice(pools[rng.random() < unanswerable_share])}
            for i in range(n)]


def ask_router(router_url: str, user: dict, max_tokens: int, prepare: Callable | None = None,
               timeout: float = 120) -> dict:
    """One user's question through the router; returns the scored outcome with the router's arm headers.

    ``prepare``: the served template's message adapter (``VLLMServer.prepare_messages``), where it needs one."""
    import httpx

    rec = user["record"]
    messages = prompts.qa_messages(rec["question"], rec["context"])
    if prepare is not None:
        messages = prepare(messages)
    t0 = time.perf_counter()
    resp = httpx.post(f"{router_url}/v1/chat/completions", timeout=timeout, headers={"x-user-id": user["user"]},
                      json={"model": "faq", "messages": messages, "max_tokens": max_tokens, "temperature": 0.0})
    latency = time.perf_counter() - t0
    base = {"user": user["user"], "arm": resp.headers.get("x-ab-arm"), "adapter": resp.headers.get("x-ab-adapter"),
            "status": resp.status_code, "latency_s": latency, "judge_grade": None}
    if resp.status_code != 200:
        return {**base, "id": rec["id"], "type": rec["type"], "error": resp.text[:300]}
    body = resp.json()
    choice = body["choices"][0]
    item = score_item(rec, choice["message"]["content"] or "", choice["finish_reason"],
                      body["usage"]["completion_tokens"], variant=base["arm"])
    return {**item, **base, "response_model": body["model"]}


def metric_stream(outcomes: Sequence[dict], metric: str) -> list[tuple[str, bool]]:
    """(arm, outcome) in arrival order for the outcomes the metric applies to (errors excluded)."""
    return [(o["arm"], bool(o[metric])) for o in outcomes
            if o.get("status") == 200 and o.get(metric) is not None and o.get("arm") in ARMS]


def run_experiment(router_url: str, users: Sequence[dict], plan: sequential.Plan, max_tokens: int = 48,
                   concurrency: int = 16, time_budget_s: float = 120, prepare: Callable | None = None) -> dict:
    """Send users in order, batch by batch up to each look; decide at every look; stop at the first
    decision, at max n or when the time budget is spent (then: no decision, traffic unchanged)."""
    outcomes: list[dict] = []
    t0 = time.time()
    it = iter(users)
    decision = sequential.decide_stream(plan, [])
    stop_reason = "users exhausted"
    with ThreadPoolExecutor(concurrency) as pool:
        for look in plan.looks:
            while len(metric_stream(outcomes, plan.metric)) < look:
                batch = [u for _, u in zip(range(concurrency), it)]
                if not batch:
                    break
                outcomes += list(pool.map(lambda u: ask_router(router_url, u, max_tokens, prepare), batch))
                if time.time() - t0 > time_budget_s:
                    break
            decision = sequential.decide_stream(plan, metric_stream(outcomes, plan.metric))
            if decision.outcome in (sequential.V1_WINS, sequential.V2_WINS, sequential.NO_DECISION):
                stop_reason = "decision" if decision.outcome != sequential.NO_DECISION else "max n reached"
                break
            if time.time() - t0 > time_budget_s:
                stop_reason = f"time budget {time_budget_s:.0f} s spent"
                break
            if len(metric_stream(outcomes, plan.metric)) < look:
                break
    final = decision.outcome if decision.outcome != sequential.CONTINUE else sequential.NO_DECISION
    return {"decision": decision, "outcome": final, "stop_reason": stop_reason, "outcomes": outcomes,
            "requests": len(outcomes), "seconds": round(time.time() - t0, 1)}


def arm_summary(outcomes: Sequence[dict]):
    """Per arm: requests, errors, stop rate, correct refusals, false refusals, latency p50/p95 (DataFrame)."""
    import numpy as np
    import pandas as pd

    rows = []
    for arm in sorted({o["arm"] for o in outcomes if o.get("arm")}):
        mine = [o for o in outcomes if o.get("arm") == arm]
        ok = [o for o in mine if o.get("status") == 200]

        def rate(key):
            vals = [bool(o[key]) for o in ok if o.get(key) is not None]
            return (round(sum(vals) / len(vals), 3), len(vals)) if vals else (float("nan"), 0)

        lat = np.array([o["latency_s"] for o in ok]) if ok else np.array([np.nan])
        rc, n_rc = rate("refusal_correct")
        fr, n_fr = rate("false_refusal")
        rows.append({"arm": arm, "adapter": mine[0].get("adapter"), "requests": len(mine),
                     "errors": len(mine) - len(ok), "stop_rate": rate("stopped")[0],
                     "refusal_correct": rc, "n_unanswerable": n_rc, "false_refusal": fr, "n_answerable": n_fr,
                     "p50_latency_s": round(float(np.percentile(lat, 50)), 3),
                     "p95_latency_s": round(float(np.percentile(lat, 95)), 3)})
    return pd.DataFrame(rows)


def tradeoff(outcomes: Sequence[dict], margin: float = 0.1) -> str:
    """What the refusal numbers of v1 and v2 mean together, in German (for the notebook): more correct
    refusals are only progress if v2 does not also refuse answerable questions (``false_refusal``) more often."""
    table = arm_summary(outcomes).set_index("arm")
    rc, fr = table["refusal_correct"], table["false_refusal"]
    lines = [f"korrekt verweigert (unbeantwortbar): v1 {rc['v1']:.2f} (n={table.loc['v1', 'n_unanswerable']}), "
             f"v2 {rc['v2']:.2f} (n={table.loc['v2', 'n_unanswerable']})",
             f"fälschlich verweigert (beantwortbar): v1 {fr['v1']:.2f} (n={table.loc['v1', 'n_answerable']}), "
             f"v2 {fr['v2']:.2f} (n={table.loc['v2', 'n_answerable']})"]
    if rc["v2"] > rc["v1"] + margin and fr["v2"] > fr["v1"] + margin:
        lines.append("Lesart: v2 verweigert öfter, aber auch bei beantwortbaren Fragen. Das ist eine echte "
                     "Verhaltensänderung, kein besserer Assistent: Vor einem Rollout gehört eine Schranke für "
                     "false_refusal in den Plan.")
    elif rc["v2"] > rc["v1"] + margin:
        lines.append("Lesart: v2 verweigert öfter richtig, ohne deutlich mehr beantwortbare Fragen abzulehnen.")
    else:
        lines.append("Lesart: kein deutlicher Vorteil von v2 bei den Verweigerungen.")
    return "\n".join(lines)


def attach_judge_grades(outcomes: Sequence[dict], grade: Callable[[str, str, str], float | bool | None],
                        judge_info: dict) -> list[dict]:
    """Fill ``judge_grade`` from ``grade(question, context, answer)`` (the judge module's function): the judge
    sees no arm, adapter or user; ``judge_info`` (judge model, prompt version) is recorded on every outcome."""
    from .gold import load_qa

    by_id = {r["id"]: r for r in load_qa()}
    out = []
    for o in outcomes:
        if o.get("status") != 200:
            out.append(dict(o))
            continue
        rec = by_id[o["id"]]
        out.append({**o, "judge_grade": grade(rec["question"], rec["context"], o["answer"]), "judge": dict(judge_info)})
    return out


def plot_arms(outcomes: Sequence[dict], title: str = "A/B-Test je Arm"):
    """Per arm: correct refusals, false refusals and stop rate (bars) and the latency distribution."""
    import matplotlib.pyplot as plt

    table = arm_summary(outcomes)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = [("refusal_correct", "korrekt\nverweigert"), ("false_refusal", "fälschlich\nverweigert"),
            ("stop_rate", "Stop-Rate")]
    width = 0.8 / max(len(table), 1)
    for i, row in table.reset_index(drop=True).iterrows():
        ax1.bar([k + i * width for k in range(len(keys))], [row[k] for k, _ in keys], width,
                label=f"{row['arm']} ({row['adapter']})")
    ax1.set_xticks([k + width * (len(table) - 1) / 2 for k in range(len(keys))], [lbl for _, lbl in keys])
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("Anteil")
    ax1.legend()
    for arm in table["arm"]:
        ax2.hist([o["latency_s"] for o in outcomes if o.get("arm") == arm and o.get("status") == 200], bins=20,
                 alpha=0.6, label=arm)
    ax2.set_xlabel("Latenz am Client (s)")
    ax2.set_ylabel("Requests")
    ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def look_table(decision: sequential.Decision):
    """The decision's looks as a DataFrame (n, rates, Lambda, always-valid p)."""
    import pandas as pd

    return pd.DataFrame(decision.history)
