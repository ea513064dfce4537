"""Notebook 03's question: what does the base model do with the gold questions, with and without context?

Two prompt variants through the same chat template and system prompt: the question alone ("closed book")
and question + context ("RAG-style"). For each the stop rate (vLLM finish reasons), the answer length and
a simple token overlap with the reference answer (``textmetrics.token_f1``, the SQuAD measure that
notebook 05.2 reports too) are measured.
"""

from __future__ import annotations

from typing import Sequence

from . import inference, prompts
from .textmetrics import token_f1

VARIANTS = {"ohne Kontext": False, "mit Kontext": True}


def compare_prompting(llm, profile, records: Sequence[dict], progress: bool = False) -> dict[str, dict]:
    """Generate greedily for every variant; returns ``{variant: {"summary", "results"}}``."""
    params = inference.sampling_params(profile, temperature=0.0)
    out = {}
    for name, with_context in VARIANTS.items():
        conversations = [prompts.qa_messages(r["question"], r.get("context") if with_context else None)
                         for r in records]
        results = inference.generate(llm, inference.chat_prompts(llm, conversations), params, progress=progress)
        summary = inference.summarize(results)
        summary["token_f1"] = sum(token_f1(g.text, r["answer"]) for g, r in zip(results, records)) / max(len(records), 1)
        summary["reference_tokens"] = sum(len(llm.get_tokenizer()(r["answer"], add_special_tokens=False)["input_ids"])
                                          for r in records) / max(len(records), 1)
        out[name] = {"summary": summary, "results": results}
    return out


def summary_table(comparison: dict[str, dict]):
    import pandas as pd

    rows = []
    for name, item in comparison.items():
        s = item["summary"]
        rows.append({"variante": name, "stop_rate": s["stop_rate"], "mittlere_tokens": s["mean_output_tokens"],
                     "referenz_tokens": s["reference_tokens"], "token_f1": s["token_f1"]})
    return pd.DataFrame(rows)


def examples_table(comparison: dict[str, dict], records: Sequence[dict], n: int = 3, width: int | None = None):
    """Question, reference answer and each variant's complete answer (unless ``width`` cuts it) side by side for
    the first ``n`` records."""
    import pandas as pd

    rows = []
    for i, rec in enumerate(records[:n]):
        row = {"frage": rec["question"], "referenz": rec["answer"]}
        for name, item in comparison.items():
            g = item["results"][i]
            row[name] = f"[{g.finish_reason}, {g.output_tokens} Tokens] " + g.text[:width].replace("\n", " ⏎ ")
        rows.append(row)
    return pd.DataFrame(rows)


def plot_comparison(comparison: dict[str, dict]):
    """Answer lengths per variant (histogram) against the reference length and the max_tokens limit."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, item in comparison.items():
        ax.hist([g.output_tokens for g in item["results"]], bins=20, alpha=0.6, label=name)
    ref = next(iter(comparison.values()))["summary"]["reference_tokens"]
    ax.axvline(ref, color="black", linestyle="--", label="mittlere Referenzlänge")
    ax.set_xlabel("Tokens pro Antwort")
    ax.set_ylabel("Anzahl Antworten")
    ax.set_title("Antwortlängen des Basismodells")
    ax.legend()
    fig.tight_layout()
    return fig
