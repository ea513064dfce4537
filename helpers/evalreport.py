"""What notebook 05.2 shows of an evaluation: tables with intervals, plots, and an answer browser (German labels).

The computation lives in ``evaluation.py`` (scores, summaries, paired tests); this module only displays results.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .evaluation import GERMAN, MEAN_METRICS, RATE_METRICS, EvaluationError
from .stats import bootstrap_ci


def summary_table(summary: dict[str, dict[str, dict]]):
    """One row per metric, one column group per variant: "value [ci_low, ci_high] (n)"."""
    import pandas as pd

    rows = []
    for metric in RATE_METRICS + MEAN_METRICS:
        row = {"metric": metric, "bedeutung": GERMAN[metric]}
        for variant, metrics in summary.items():
            m = metrics[metric]
            row[variant] = ("–" if m["value"] is None else
                            f"{m['value']:.2f} [{m['ci_low']:.2f}, {m['ci_high']:.2f}] (n={m['n']})")
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(comparison: dict[str, dict]):
    import pandas as pd

    rows = []
    for metric, c in comparison.items():
        rows.append({"metric": metric, "test": c["test"], "n": c["n"], "base": c["base"], "adapter": c["other"],
                     "diff": c["diff"], "ci/discordant": (f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
                                                          if "ci_low" in c else f"+{c['gained']} / -{c['lost']}"),
                     "p_value": c["p_value"]})
    return pd.DataFrame(rows)


def plot_summary(summary: dict[str, dict[str, dict]], metrics: Sequence[str] = RATE_METRICS):
    """Bar chart of rates per variant with their bootstrap intervals as error bars."""
    import matplotlib.pyplot as plt

    variants = list(summary)
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for k, variant in enumerate(variants):
        xs, ys, err = [], [], [[], []]
        for i, metric in enumerate(metrics):
            m = summary[variant][metric]
            if m["value"] is None:
                continue
            xs.append(i + k * width)
            ys.append(m["value"])
            err[0].append(max(m["value"] - m["ci_low"], 0))
            err[1].append(max(m["ci_high"] - m["value"], 0))
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=variant)
    ax.set_xticks([i + width * (len(variants) - 1) / 2 for i in range(len(metrics))])
    ax.set_xticklabels([GERMAN[m] for m in metrics], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Anteil (95 %-Bootstrap-KI)")
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- intervals, lengths, answers
def rate_interval(successes: int, n: int, n_boot: int = 4000, seed: int = 0) -> dict:
    """Rate and bootstrap interval for ``successes`` of ``n`` (e.g. the original series' 6/15 and 14/15)."""
    lo, hi = bootstrap_ci([1] * successes + [0] * (n - successes), n_boot, seed=seed)
    return {"treffer": successes, "n": n, "rate": successes / n if n else None, "ci_low": lo, "ci_high": hi}


def plot_lengths(items: Sequence[dict], max_tokens: int | None = None):
    """Histogram of answer lengths per variant; a pile-up at max_tokens means "never stopped"."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    variants = list(dict.fromkeys(it["variant"] for it in items))
    top = max_tokens or max(it["answer_tokens"] for it in items)
    bins = np.linspace(0, top + 1, 25)
    for variant in variants:
        ax.hist([it["answer_tokens"] for it in items if it["variant"] == variant], bins=bins, alpha=0.6,
                label=variant)
    ax.axvline(top, color="grey", linestyle="--", label="max_tokens")
    ax.set_xlabel("Antwortlänge (Tokens)")
    ax.set_ylabel("Anzahl Fragen")
    ax.legend()
    fig.tight_layout()
    return fig


def item_html(items: Sequence[dict], item_id: str) -> str:
    """One question with the reference and every variant's answer and per-item metrics, as HTML."""
    import html

    rows = [it for it in items if it["id"] == item_id]
    if not rows:
        raise EvaluationError(f"No item '{item_id}' in these results.")
    first = rows[0]
    out = [f"<b>{html.escape(first['id'])}</b> ({first['type']})<br><b>Frage:</b> {html.escape(first['question'])}",
           f"<br><b>Referenz:</b> {html.escape(first['reference'])}"]
    for it in rows:
        flags = ", ".join(f"{k}={it[k]}" for k in ("finish_reason", "answer_tokens", "refused", "grounded")
                          if it.get(k) is not None)
        out.append(f"<hr><b>{html.escape(it['variant'])}</b> <small>({flags}; F1 {it['token_f1']:.2f}, "
                   f"ROUGE-L {it['rouge_l']:.2f})</small><br><pre style='white-space:pre-wrap'>"
                   f"{html.escape(it['answer'])}</pre>")
    return "".join(out)


def example_answers(items: Sequence[dict], records: Sequence[dict], per_type: int = 1,
                    types: Sequence[str] = ("factual", "conceptual", "unanswerable")) -> str:
    """Complete answers (never cut) of every variant to the first ``per_type`` questions of each type: question,
    context, reference and each answer with its finish reason, as plain text for a saved notebook."""
    by_id = {r["id"]: r for r in records}
    variants = list(dict.fromkeys(it["variant"] for it in items))
    answers = {(it["id"], it["variant"]): it for it in items}
    blocks = []
    for qa_type in types:
        ids = [r["id"] for r in records if r["type"] == qa_type][:per_type]
        for item_id in ids:
            rec = by_id[item_id]
            lines = [f"=== {qa_type}: {rec['question']}", f"Kontext:  {rec['context']}", f"Referenz: {rec['answer']}"]
            for v in variants:
                it = answers.get((item_id, v))
                if it is not None:
                    lines.append(f"{v} [{it['finish_reason']}, {it['answer_tokens']} Tokens]: {it['answer']}")
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def browser(items: Sequence[dict]):
    """An ipywidgets browser over the items: filter by type, pick a question, see all variants side by side.

    Works headless (papermill stores the widget and its first view); the HTML of the first item is also
    rendered directly so a static notebook shows one example.
    """
    import ipywidgets as widgets

    ids_by_type = {}
    for it in items:
        ids_by_type.setdefault(it["type"], []).append(it["id"])
        ids_by_type.setdefault("alle", []).append(it["id"])
    ids_by_type = {k: list(dict.fromkeys(v)) for k, v in ids_by_type.items()}
    kind = widgets.Dropdown(options=sorted(ids_by_type), value="alle", description="Typ")
    pick = widgets.Dropdown(options=ids_by_type["alle"], description="Frage")
    view = widgets.HTML(item_html(items, ids_by_type["alle"][0]))

    def on_kind(change):
        pick.options = ids_by_type[change["new"]]

    def on_pick(change):
        if change["new"]:
            view.value = item_html(items, change["new"])

    kind.observe(on_kind, names="value")
    pick.observe(on_pick, names="value")
    return widgets.VBox([widgets.HBox([kind, pick]), view])


def interval_table(summary: dict[str, dict[str, dict]], metric: str = "stopped",
                   extra: dict[str, tuple[int, int]] | None = None):
    """Rate intervals for given (successes, n) pairs next to each variant's measured rate of ``metric``."""
    import pandas as pd

    rows = {name: rate_interval(k, n) for name, (k, n) in (extra or {}).items()}
    for variant, metrics in summary.items():
        m = metrics[metric]
        if m["n"]:
            rows[f"hier: {variant}"] = rate_interval(round(m["value"] * m["n"]), m["n"])
    return pd.DataFrame(rows).T
