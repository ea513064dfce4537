"""`gate`: may this adapter be promoted? Absolute minima plus a minimum change against the current champion.

The semantics of MLflow's ``MetricThreshold(threshold, min_absolute_change, greater_is_better=True)``, for four
metrics where higher is better (thresholds per profile, ``GateSettings`` in helpers/profiles.py):

- ``stop_rate``: share of answers that stop by themselves (``evaluate``: ``stopped``)
- ``refusal``: correct refusals on unanswerable questions (``evaluate``: ``refusal_correct``)
- ``context_adherence``: answers grounded in the context (``evaluate``: ``grounded``)
- ``judge_grade_share``: share of grade A among the judged answers (``helpers judge``'s JSONL, one judge variant;
  unparsed judgments count as not A, never as a grade)

A metric passes when ``value >= threshold`` and, if there is a champion, ``value - champion >= min_change``.
A missing metric fails. The judge can be left out only through the explicit setting ``--judge-policy skip``
(the workflow parameter ``judge``), which the decision records. The decision is written to JSON either way;
the exit code is 1 on fail, so Argo (and the local runner) never start ``register`` and ``deploy``.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import io
from .errors import HelpersError
from .profiles import GateSettings, Profile

METRICS = {"stop_rate": "stopped", "refusal": "refusal_correct", "context_adherence": "grounded",
           "judge_grade_share": None}
GRADE_KEYS = ("grade", "verdict", "label")
JUDGE_POLICIES = ("required", "skip")


class GateError(HelpersError, ValueError):
    pass


def evaluation_metrics(metrics_path: str | Path, variant: str) -> dict[str, float | None]:
    """The gate's evaluation metrics of one variant from `evaluate`'s JSON (None where absent)."""
    summary = io.read_json(metrics_path).get("summary", {})
    if variant not in summary:
        raise GateError(f"{metrics_path} has no variant {variant!r} (it has {sorted(summary)}); "
                        "pass the adapter name given to `evaluate --adapter NAME=DIR` as --variant.")
    return {name: (summary[variant].get(key) or {}).get("value") for name, key in METRICS.items() if key}


def _judgments(data) -> list[dict]:
    if isinstance(data, list):
        return [d for d in data if isinstance(d, dict)]
    if isinstance(data, dict):
        for key in ("judgments", "items", "results"):
            if isinstance(data.get(key), list):
                return _judgments(data[key])
            if isinstance(data.get(key), dict):        # keyed by item id
                return _judgments(list(data[key].values()))
    return []


def judge_grade_share(path: str | Path) -> dict:
    """Share of grade A among the judge's per-item judgments (JSON list/dict or JSONL); unparsed count as not A."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = [json.loads(line) for line in text.splitlines() if line.strip()]
    items = _judgments(data)
    variants = sorted({str(it["variant"]) for it in items if it.get("variant") is not None})
    if len(variants) > 1:
        return {"value": None, "n": len(items), "unparsed": None,
                "reason": f"judgments of several judge variants {variants} in {path}: let one judge decide "
                          "(`judge --no-base` with the judge adapter)"}
    grades = [next((str(it[k]).strip().upper() for k in GRADE_KEYS if it.get(k) is not None), None) for it in items]
    graded = [g for g in grades if g in ("A", "B", "C")]
    if not graded:
        keys = sorted(data) if isinstance(data, dict) else sorted({k for it in items for k in it})
        return {"value": None, "n": len(items), "unparsed": len(items),
                "reason": f"no per-item grade A/B/C under {GRADE_KEYS} in {path} (found keys {keys[:12]})"}
    return {"value": graded.count("A") / len(items), "n": len(items), "unparsed": len(items) - len(graded)}


def decide(candidate: dict[str, float | None], champion: dict[str, float | None] | None, settings: GateSettings,
           judge_policy: str = "required") -> dict:
    """Per metric: value, threshold, champion, change, pass/fail with the reason; overall decision."""
    if judge_policy not in JUDGE_POLICIES:
        raise GateError(f"--judge-policy must be one of {JUDGE_POLICIES}, not {judge_policy!r}")
    rows = []
    for name in METRICS:
        value, threshold = candidate.get(name), getattr(settings, name)
        base = (champion or {}).get(name)
        row = {"metric": name, "value": value, "threshold": threshold, "champion": base,
               "change": None if value is None or base is None else value - base, "min_change": settings.min_change}
        if name == "judge_grade_share" and judge_policy == "skip":
            row.update(ok=True, required=False, reason="not required: judge=skip (explicit setting)")
        elif value is None:
            row.update(ok=False, required=True, reason="missing")
        elif value < threshold:
            row.update(ok=False, required=True, reason=f"below the threshold {threshold}")
        elif row["change"] is not None and row["change"] < settings.min_change - 1e-12:
            row.update(ok=False, required=True, reason=f"change vs champion {row['change']:+.3f} < {settings.min_change:+.3f}")
        else:
            row.update(ok=True, required=True, reason="ok")
        rows.append(row)
    return {"decision": "pass" if all(r["ok"] for r in rows) else "fail", "judge_policy": judge_policy,
            "metrics": rows, "candidate": candidate, "settings": {"min_change": settings.min_change}}


def gate_files(profile: Profile, metrics_path, variant: str, judge_path, judge_policy: str, champion_path,
               output) -> dict:
    """The `gate` step on files: reads evaluate / judge / champion, writes the decision JSON (always)."""
    candidate = evaluation_metrics(metrics_path, variant)
    judge_info = None
    if judge_policy == "skip":
        candidate["judge_grade_share"] = None
    elif judge_path and Path(judge_path).exists():
        judge_info = judge_grade_share(judge_path)
        candidate["judge_grade_share"] = judge_info["value"]
    else:
        candidate["judge_grade_share"] = None
        judge_info = {"reason": f"judge output {judge_path} does not exist"}
    champion = io.read_json(champion_path) if champion_path and Path(champion_path).exists() else None
    result = decide(candidate, (champion or {}).get("metrics"), profile.gate, judge_policy)
    result.update(profile=profile.name, variant=variant, judge=judge_info,
                  champion_version=(champion or {}).get("version"), metrics_file=str(metrics_path))
    io.write_json(output, result)
    return result


def table_markdown(result: dict) -> list[str]:
    lines = ["| Kennzahl | Wert | Schwelle | Champion | Änderung | Ergebnis |", "|---|---|---|---|---|---|"]
    for r in result["metrics"]:
        f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        verdict = ("ok" if r["ok"] else "FAIL") + ("" if r["reason"] == "ok" else f": {r['reason']}")
        lines.append(f"| {r['metric']} | {f(r['value'])} | {r['threshold']} | {f(r['champion'])} | {f(r['change'])} "
                     f"| {verdict} |")
    return lines


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("gate", help="promotion gate: thresholds + minimum change vs the champion (exit 1 on fail)")
    profile_arg(p, profile)
    p.add_argument("--metrics", required=True, help="`evaluate` output JSON")
    p.add_argument("--variant", default="candidate", help="the adapter's name in that JSON (default %(default)s)")
    p.add_argument("--judge", default=None, help="`judge` output (per-item grades A/B/C)")
    p.add_argument("--judge-policy", default="required", choices=JUDGE_POLICIES,
                   help="required: a missing judge fails the gate; skip: decide without it (recorded)")
    p.add_argument("--champion", default=None, help="the current champion's record (`register` writes it); "
                                                    "absent: first model, thresholds only")
    p.add_argument("--output", required=True, help="decision JSON")
    p.set_defaults(func=cmd_gate)


def cmd_gate(args) -> int:
    result = gate_files(args.profile, args.metrics, args.variant, args.judge, args.judge_policy, args.champion,
                        args.output)
    if args.judge_policy == "skip":
        print("gate: judge=skip - the judge's grades are NOT part of this decision (explicit setting)")
    print("\n".join(table_markdown(result)))
    against = f"champion v{result['champion_version']}" if result["champion_version"] else "no champion yet"
    print(f"gate: {result['decision'].upper()} ({against}) -> {args.output}")
    return 0 if result["decision"] == "pass" else 1
