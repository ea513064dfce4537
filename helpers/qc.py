"""Quality control that filters: every QA pair is accepted or rejected with its reasons.

The original series computed quality flags and then trained on everything anyway. Here a pair reaches
``qa_accepted.jsonl`` only if it passes every check; all others go to ``rejects/qc.jsonl`` with
``reason`` (the first failed check) and ``reasons`` (all of them).

Checks (cheap, explainable, no second model needed):

- ``question_length`` / ``answer_length``: within bounds; ``question_form``: ends with a question mark.
- ``not_german``: too few German function words, or too few letters (garbled output).
- ``repetitive``: a word trigram repeats (the loop a base model falls into).
- ``ungrounded_number`` / ``ungrounded_quote``: every number and every quoted string of the answer occurs
  in the chunk; ``ungrounded``: most content words of the answer occur in the chunk.
- ``pii``: question or answer contains an e-mail, phone number, IBAN or name (e.g. memorised from
  pretraining although the chunk was scrubbed).
- ``refusal_form``: ``unanswerable`` answers are exactly the course's refusal sentence; other types never.
- ``near_duplicate_question``: a question too similar to one already accepted (character 3-gram Jaccard).
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

from . import dataset, io, pii, prompts
from .profiles import DatasetSettings, Profile

STAGE = "qc"
QA_FIELDS = ("id", "chunk_id", "doc_id", "context", "question", "answer", "type", "source")
GERMAN_WORDS = frozenset("""
der die das den dem des ein eine einen einem einer eines und oder aber nicht kein keine ist sind war wird
werden wurde hat haben kann können muss müssen darf soll sollen mit von zu zum zur für auf im in an am bei
nach vor über unter aus bis durch wie was wer wo wann warum welche welcher welches wieviel wie viele ob dass
sich es er sie wir ihr man auch nur noch schon als wenn dann so mehr beim vom ins seit gegen ohne um je
""".split())
NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")
QUOTE_RE = re.compile(r"[„\"“»«]([^„\"“”»«]{2,80})[“”\"«»]")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-zäöüß]+", text.lower())


def german_score(text: str) -> float:
    """Share of German function words among the words of ``text``."""
    words = _words(text)
    return sum(w in GERMAN_WORDS for w in words) / len(words) if words else 0.0


def letter_share(text: str) -> float:
    chars = [ch for ch in text if not ch.isspace()]
    return sum(ch.isalpha() for ch in chars) / len(chars) if chars else 0.0


def repeats(text: str) -> bool:
    """A base model's loop: an n-gram (n = 1..4) repeated back to back, or a word trigram three times."""
    words = _words(text)
    for n in range(1, 5):
        copies = 3 if n == 1 else 2
        for i in range(len(words) - n * copies + 1):
            if all(words[i:i + n] == words[i + k * n:i + (k + 1) * n] for k in range(1, copies)):
                return True
    grams = Counter(tuple(words[i:i + 3]) for i in range(len(words) - 2))
    return bool(grams) and grams.most_common(1)[0][1] >= 3


def grounded_share(answer: str, context: str) -> float:
    """Share of the answer's content words (≥ 4 letters) whose first 5 letters start a context word."""
    content = [w for w in _words(answer) if len(w) >= 4 and w not in GERMAN_WORDS]
    stems = {w[:5] for w in _words(context)}
    return sum(w[:5] in stems for w in content) / len(content) if content else 1.0


def trigrams(text: str) -> set[str]:
    t = f"  {_norm(text)} "
    return {t[i:i + 3] for i in range(len(t) - 2)}


def scrub_record(rec: dict) -> dict:
    """PII-scrub question, answer and context of a QA record (e.g. gold pairs before training)."""
    out = dict(rec)
    for key in ("question", "answer", "context"):
        if out.get(key):
            out[key] = pii.scrub(out[key])[0]
    return out


def check(rec: dict, cfg: DatasetSettings | None = None) -> list[str]:
    """All failed checks of one QA record (empty: the record passes, near-duplicates aside)."""
    cfg = cfg or DatasetSettings()
    q, a, ctx = rec.get("question", "") or "", rec.get("answer", "") or "", rec.get("context", "") or ""
    reasons = []
    if rec.get("type") not in ("factual", "conceptual", "comparison", "unanswerable"):
        reasons.append("unknown_type")
    if not 15 <= len(q) <= cfg.question_max_chars:
        reasons.append("question_length")
    if not q.rstrip().endswith("?"):
        reasons.append("question_form")
    if german_score(q) < 0.15 or letter_share(q) < 0.7 or (a and rec.get("type") != "unanswerable"
                                                             and letter_share(a) < 0.5):
        reasons.append("not_german")
    if repeats(q) or repeats(a):
        reasons.append("repetitive")
    if pii.find_pii(q) or pii.find_pii(a):
        reasons.append("pii")
    if rec.get("type") == "unanswerable":
        if a.strip() != prompts.REFUSAL:
            reasons.append("refusal_form")
        return reasons
    if prompts.REFUSAL in a:
        reasons.append("refusal_form")
    if not 2 <= len(a) <= cfg.answer_max_chars:
        reasons.append("answer_length")
    nctx = _norm(ctx)
    flat_ctx = nctx.replace(" ", "")
    if any(n not in flat_ctx for n in NUMBER_RE.findall(a)):
        reasons.append("ungrounded_number")
    if any(_norm(m) not in nctx for m in QUOTE_RE.findall(a)):
        reasons.append("ungrounded_quote")
    if grounded_share(a, ctx) < 0.6:
        reasons.append("ungrounded")
    return reasons


def run_qc(records: list[dict], cfg: DatasetSettings | None = None, near_duplicate: float = 0.8) -> tuple[list[dict], list[dict]]:
    """Split records into accepted (QA schema fields) and rejects (record + ``stage, reason, reasons``)."""
    accepted, rejects, seen = [], [], []
    for rec in records:
        reasons = check(rec, cfg)
        if not reasons:
            grams = trigrams(rec["question"])
            dup = next((other for other, og in seen
                        if len(grams & og) / max(1, len(grams | og)) >= near_duplicate), None)
            if dup is not None:
                reasons = ["near_duplicate_question"]
                rec = {**rec, "detail": f"like {dup}"}
            else:
                seen.append((rec["id"], grams))
        if reasons:
            rejects.append({**rec, "stage": STAGE, "reason": reasons[0], "reasons": reasons})
        else:
            accepted.append({k: rec.get(k, "generated" if k == "source" else None) for k in QA_FIELDS})
    return accepted, rejects


def qc_file(input_path: str | Path, output: str | Path, rejects_path: str | Path, profile: Profile) -> dict:
    """The ``qc`` step on files; returns counts per reason."""
    cfg = profile.dataset
    records = io.read_jsonl(input_path)
    accepted, rejects = run_qc(records, cfg)
    io.write_jsonl(output, accepted)
    io.write_jsonl(rejects_path, rejects)
    return {"input": len(records), "accepted": len(accepted), "rejected": len(rejects),
            "reasons": dict(Counter(r["reason"] for r in rejects))}


def ensure_accepted(profile: Profile, work_dir: str | Path | None = None, llm=None) -> Path:
    """``qa_accepted.jsonl`` of this run: found, or built (chunks → generation → QC)."""
    from . import generation

    out = dataset.files(work_dir)
    if out.accepted.exists():
        return out.accepted
    generated = generation.ensure_generated(profile, work_dir, llm=llm, progress=False)
    summary = qc_file(generated, out.accepted, out.rejects(STAGE), profile)
    print(f"QC: {summary['accepted']} von {summary['input']} Paaren angenommen → {out.accepted}", file=sys.stderr)
    return out.accepted


def reasons_table(rejects: list[dict]):
    """Count of rejects per reason: first reason and any reason (DataFrame)."""
    import pandas as pd

    first = Counter(r["reason"] for r in rejects)
    anyr = Counter(x for r in rejects for x in r.get("reasons", [r["reason"]]))
    rows = [{"reason": k, "erster_grund": first.get(k, 0), "irgendein_grund": anyr[k]} for k in anyr]
    return pd.DataFrame(rows).sort_values("irgendein_grund", ascending=False).reset_index(drop=True)


def plot_reasons(rejects: list[dict], title: str = "QC: Ablehnungsgründe"):
    import matplotlib.pyplot as plt

    table = reasons_table(rejects)
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(3, len(table)) + 1))
    ax.barh(table["reason"][::-1], table["irgendein_grund"][::-1], color="tab:red", alpha=0.5, label="irgendein Grund")
    ax.barh(table["reason"][::-1], table["erster_grund"][::-1], color="tab:red", label="erster Grund")
    ax.set_xlabel("QA-Paare")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, rejects_arg

    p = sub.add_parser("qc", help="filter QA pairs: grounding, length, language, duplicates, refusal form")
    p.add_argument("--input", required=True, help="QA JSONL (e.g. from `generate` or `merge`)")
    p.add_argument("--output", required=True, help="accepted QA JSONL")
    rejects_arg(p, STAGE, " (rejected pairs with reason(s))")
    profile_arg(p, profile)
    p.set_defaults(func=cmd_qc)


def cmd_qc(args) -> int:
    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    summary = qc_file(args.input, args.output, rejects, args.profile)
    print(f"QC: {summary['accepted']} of {summary['input']} accepted -> {args.output}; rejected by reason: "
          + (", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items())) or "none"))
    return 0
