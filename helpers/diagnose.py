"""Diagnostics for a fine-tuning setup: does EOS reach the labels, and does the trained model stop?

``inspect_setup`` looks at the tokenizer, the chat template and real collated batches -- exactly what the
Trainer would see -- and reports pad vs eos ids, the share of examples whose labels contain EOS, the share
of label positions masked and the examples too long to keep their answer. ``stop_rates`` measures the
behaviour that follows from it: the share of prompts vLLM finishes with ``finish_reason == "stop"``.
``python -m helpers diagnose`` exits 1 when EOS never (or rarely) reaches the labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import chatformat, inference, models, prompts, training
from .adapters import lora_request
from .labels import IGNORE_INDEX, encode_each, load_tokenizer, make_collator
from .profiles import Profile

EOS_MIN_SHARE = 0.9   # below this share of examples with EOS in the labels the setup is flagged


def inspect_setup(profile: Profile, records: list[dict], pad_as_eos: bool = False,
                  collator: str = "completion", batch_size: int | None = None,
                  max_length: int | None = None) -> dict[str, Any]:
    """Encode and collate ``records`` as training would (with the profile's answer target) and measure what
    reaches the labels."""
    records = training.answer_targets(records, profile.train.answer_target)
    model_dir = models.resolve(profile, "train_model")
    tok = load_tokenizer(model_dir, pad_as_eos=pad_as_eos)
    max_length = max_length or profile.train.max_length
    batch_size = batch_size or profile.train.batch_size
    sample_text = chatformat.render(tok, prompts.qa_messages("F?", "K.", "A."), add_generation_prompt=False)
    encoded, rejected = encode_each(tok, records, max_length)
    too_long = [{"id": rec.get("id"), "reason": reason} for rec, reason in rejected]
    collate = make_collator(tok, collator)
    eos, examples_with_eos, label_positions, masked, answer_positions, answer_labelled = tok.eos_token_id, 0, 0, 0, 0, 0
    first = None
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = collate(chunk)
        for row, feat in enumerate(chunk):
            n = len(feat["input_ids"])
            labels = batch["labels"][row][:n].tolist()
            examples_with_eos += eos in labels
            label_positions += n
            masked += sum(1 for x in labels if x == IGNORE_INDEX)
            answer_start = n - feat["answer_tokens"]
            answer_positions += feat["answer_tokens"]
            answer_labelled += sum(1 for x in labels[answer_start:] if x != IGNORE_INDEX)
            if first is None:
                first = {"tokens": [tok.decode([i]) for i in feat["input_ids"][-8:]],
                         "labels": labels[-8:]}
    n_ex = len(encoded)
    report = {
        "profile": profile.name, "collator": collator, "pad_as_eos": pad_as_eos,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "eos_token": tok.eos_token, "eos_token_id": eos, "pad_equals_eos": tok.pad_token_id == eos,
        "template_has_system_prompt": prompts.SYSTEM_PROMPT[:20] in chatformat.render(tok, prompts.qa_messages("F?", "K.")),
        "chat_template": getattr(tok, "course_template", "tokenizer"),
        "template_ends_answer_with_eos": f"A.{tok.eos_token}" in sample_text,
        "examples": n_ex, "records": len(records), "truncated_answers": len(too_long), "too_long": too_long[:5],
        "examples_with_eos_in_labels": examples_with_eos,
        "eos_label_share": examples_with_eos / n_ex if n_ex else 0.0,
        "masked_label_share": masked / label_positions if label_positions else 0.0,
        "answer_labelled_share": answer_labelled / answer_positions if answer_positions else 0.0,
        "last_tokens_of_first_example": first,
    }
    report["problems"] = problems(report)
    report["ok"] = not report["problems"]
    return report


def problems(report: dict) -> list[str]:
    """What is wrong with a setup, in words that say what to do."""
    out = []
    if report["eos_label_share"] < EOS_MIN_SHARE:
        cause = (" pad_token == eos_token and the collator masks every pad position, so every EOS is masked too."
                 if report["pad_equals_eos"] and report["collator"] == "lm" else "")
        out.append(f"EOS reaches the labels in only {report['eos_label_share']:.0%} of the examples "
                   f"(need ≥{EOS_MIN_SHARE:.0%}): the model will not learn to stop.{cause} Fix: a pad token "
                   "distinct from EOS and completion-only labels that keep EOS (--collator completion).")
    if not report["template_has_system_prompt"]:
        out.append("The chat template drops the system prompt: training and serving would see different prompts.")
    if not report["template_ends_answer_with_eos"]:
        out.append("The chat template does not append eos_token after the assistant message.")
    if report["records"] and report["truncated_answers"] / report["records"] > 0.05:
        out.append(f"{report['truncated_answers']} of {report['records']} examples exceed max_length and would lose "
                   "their answer's EOS: raise train.max_length or shorten the contexts.")
    return out


def format_report(report: dict) -> str:
    lines = [
        f"pad_token {report['pad_token']!r} (id {report['pad_token_id']}), eos_token {report['eos_token']!r} "
        f"(id {report['eos_token_id']}){'  <-- pad == eos' if report['pad_equals_eos'] else ''}",
        f"collator: {report['collator']}",
        f"examples: {report['examples']} of {report['records']} records "
        f"({report['truncated_answers']} too long for max_length, rejected instead of truncated)",
        f"examples with EOS in the labels: {report['examples_with_eos_in_labels']} "
        f"({report['eos_label_share']:.0%})",
        f"label positions masked (-100): {report['masked_label_share']:.0%}; answer tokens labelled: "
        f"{report['answer_labelled_share']:.0%}",
    ]
    first = report.get("last_tokens_of_first_example")
    if first:
        lines.append("end of the first example (token -> label): "
                     + ", ".join(f"{t!r}->{l}" for t, l in zip(first["tokens"], first["labels"])))
    lines.append("OK: EOS reaches the labels." if report["ok"] else "PROBLEMS:\n  - " + "\n  - ".join(report["problems"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- stop rate with vLLM
def eval_prompts(llm, records: Sequence[dict]) -> list[str]:
    """The chat prompts (system prompt + context + question) for evaluation records."""
    return inference.chat_prompts(llm, [prompts.qa_messages(r["question"], r.get("context")) for r in records])


def stop_rates(profile: Profile, records: Sequence[dict], adapters: dict[str, str | Path | None],
               n: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Greedy generation on ``n`` eval prompts for the base model (``None``) and each adapter in one vLLM engine.

    Returns ``{name: {"summary": inference.summarize(...), "results": [Generation, ...]}}``.
    """
    from . import gold

    records = gold.sample(list(records), n) if n else list(records)
    requests = {name: (lora_request(name, path, profile, lora_id=i + 1) if path else None)
                for i, (name, path) in enumerate(adapters.items())}
    llm = inference.make_llm(profile, enable_lora=any(r is not None for r in requests.values()))
    try:
        batch = eval_prompts(llm, records)
        params = inference.sampling_params(profile, temperature=0.0)
        out = {}
        for name, request in requests.items():
            results = inference.generate(llm, batch, params, lora_request=request, progress=progress)
            out[name] = {"summary": inference.summarize(results), "results": results}
    finally:
        inference.shutdown(llm)
    return out


def stop_rate_table(rates: dict[str, dict]):
    import pandas as pd

    return pd.DataFrame([{"modell": name, "stop_rate": r["summary"]["stop_rate"],
                          "mittlere_tokens": r["summary"]["mean_output_tokens"], "prompts": r["summary"]["prompts"]}
                         for name, r in rates.items()])


def plot_stop_rates(rates: dict[str, dict], title: str = "Stop-Rate auf den Eval-Prompts"):
    """Bar chart: share of prompts each model ends with EOS, and mean answer length."""
    import matplotlib.pyplot as plt

    names = list(rates)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax1.bar(names, [rates[n]["summary"]["stop_rate"] for n in names], color="tab:green")
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("Anteil finish_reason = stop")
    ax1.set_title(title)
    ax2.bar(names, [rates[n]["summary"]["mean_output_tokens"] for n in names], color="tab:blue")
    ax2.set_ylabel("mittlere Antwortlänge (Tokens)")
    ax2.set_title("Antwortlänge")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    import argparse

    from .cliargs import profile_arg
    from .labels import COLLATORS

    p = sub.add_parser("diagnose", help="check that EOS reaches the labels (exit 1 if not); optional stop-rate probe")
    profile_arg(p, profile)
    p.add_argument("--data", required=True, help="QA JSONL to encode and collate as training would")
    p.add_argument("--pad-as-eos", action="store_true", help="set pad_token = eos_token")
    p.add_argument("--collator", choices=COLLATORS, default="completion")
    p.add_argument("--max-length", type=int, default=profile.train.max_length,
                   help="tokens per example (default: the profile's train.max_length, %(default)s)")
    p.add_argument("--probe", type=int, default=0, metavar="N", help="measure the stop rate on N prompts with vLLM")
    p.add_argument("--adapter", default=None, help="adapter directory for the probe (default: base model)")
    p.add_argument("--adapter-name", default="probe", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    import json

    records = training.load_records(args.data)
    report = inspect_setup(args.profile, records, pad_as_eos=args.pad_as_eos, collator=args.collator,
                           max_length=args.max_length)
    print(format_report(report))
    if args.probe:
        rates = stop_rates(args.profile, records, {args.adapter_name: args.adapter}, n=args.probe)
        summary = rates[args.adapter_name]["summary"]
        report["probe"] = summary
        print(f"stop-rate probe ({args.adapter or 'base model'}): {summary['stop_rate']:.0%} of {summary['prompts']} "
              f"prompts ended with EOS, mean {summary['mean_output_tokens']:.1f} output tokens")
    if args.json:
        print(json.dumps(dict(report), ensure_ascii=False, default=str))
    return 0 if report["ok"] else 1
