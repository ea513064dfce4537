"""The promotion gate on fixtures: pass, fail (threshold, change vs champion), missing metric, judge formats, and
the exit code that keeps register/deploy from running."""

import json

import pytest

from helpers import cli, gate
from helpers.profiles import GateSettings, load_profile

SETTINGS = GateSettings(stop_rate=0.9, refusal=0.5, judge_grade_share=0.3, context_adherence=0.3, min_change=0.0)


def metrics_file(path, stopped=0.95, refusal=0.6, grounded=0.5, variant="candidate"):
    def m(v):
        return {"value": v, "ci_low": None, "ci_high": None, "n": 40}
    summary = {"base": {"stopped": m(0.2), "refusal_correct": m(0.1), "grounded": m(0.1)},
               variant: {"stopped": m(stopped), "refusal_correct": m(refusal), "grounded": m(grounded)}}
    if grounded is None:
        del summary[variant]["grounded"]
    path.write_text(json.dumps({"summary": summary}))
    return path


def judge_file(path, grades):
    path.write_text(json.dumps({"judgments": [{"id": f"q{i}", "grade": g} for i, g in enumerate(grades)]}))
    return path


def test_pass_on_thresholds_without_a_champion():
    result = gate.decide({"stop_rate": 0.95, "refusal": 0.6, "context_adherence": 0.5, "judge_grade_share": 0.4},
                         None, SETTINGS)
    assert result["decision"] == "pass" and all(r["ok"] for r in result["metrics"])


def test_fail_below_an_absolute_threshold():
    result = gate.decide({"stop_rate": 0.85, "refusal": 0.6, "context_adherence": 0.5, "judge_grade_share": 0.4},
                         None, SETTINGS)
    assert result["decision"] == "fail"
    row = next(r for r in result["metrics"] if r["metric"] == "stop_rate")
    assert not row["ok"] and "below the threshold 0.9" in row["reason"]


def test_fail_on_too_small_a_change_against_the_champion():
    champion = {"stop_rate": 0.95, "refusal": 0.7, "context_adherence": 0.5, "judge_grade_share": 0.4}
    cand = {"stop_rate": 0.95, "refusal": 0.6, "context_adherence": 0.5, "judge_grade_share": 0.4}
    result = gate.decide(cand, champion, SETTINGS)
    row = next(r for r in result["metrics"] if r["metric"] == "refusal")
    assert result["decision"] == "fail" and row["change"] == pytest.approx(-0.1) and "change vs champion" in row["reason"]
    tolerant = GateSettings(**{**SETTINGS.__dict__, "min_change": -0.15})
    assert gate.decide(cand, champion, tolerant)["decision"] == "pass"


def test_a_missing_metric_fails(tmp_path):
    metrics = metrics_file(tmp_path / "m.json", grounded=None)
    judge = judge_file(tmp_path / "j.json", "AABC")
    result = gate.gate_files(load_profile("mini"), metrics, "candidate", judge, "required", None, tmp_path / "g.json")
    row = next(r for r in result["metrics"] if r["metric"] == "context_adherence")
    assert result["decision"] == "fail" and row["reason"] == "missing"


def test_a_missing_judge_fails_unless_skipped_explicitly(tmp_path):
    metrics = metrics_file(tmp_path / "m.json")
    required = gate.gate_files(load_profile("mini"), metrics, "candidate", tmp_path / "nope.json", "required", None,
                               tmp_path / "g.json")
    assert required["decision"] == "fail" and "does not exist" in required["judge"]["reason"]
    skipped = gate.gate_files(load_profile("mini"), metrics, "candidate", None, "skip", None, tmp_path / "g2.json")
    row = next(r for r in skipped["metrics"] if r["metric"] == "judge_grade_share")
    assert skipped["decision"] == "pass" and skipped["judge_policy"] == "skip" and "explicit setting" in row["reason"]
    assert json.loads((tmp_path / "g2.json").read_text())["judge_policy"] == "skip"


def test_judge_share_counts_unparsed_as_not_a(tmp_path):
    (tmp_path / "j.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "1", "verdict": "A"}, {"id": "2", "verdict": "b"}, {"id": "3", "status": "unparsed", "raw": "{"},
        {"id": "4", "verdict": "A"}]))
    share = gate.judge_grade_share(tmp_path / "j.jsonl")
    assert share == {"value": 0.5, "n": 4, "unparsed": 1}
    (tmp_path / "k.json").write_text(json.dumps({"items": {"1": {"grade": "C"}, "2": {"grade": "A"}}}))
    assert gate.judge_grade_share(tmp_path / "k.json")["value"] == 0.5
    (tmp_path / "x.json").write_text(json.dumps({"summary": {"kappa": 0.4}}))
    unknown = gate.judge_grade_share(tmp_path / "x.json")
    assert unknown["value"] is None and "no per-item grade" in unknown["reason"]
    (tmp_path / "two.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"id": "1", "variant": "base", "grade": "A"}, {"id": "1", "variant": "judge", "grade": "C"}]))
    mixed = gate.judge_grade_share(tmp_path / "two.jsonl")
    assert mixed["value"] is None and "several judge variants" in mixed["reason"]


def test_champion_record_is_the_baseline(tmp_path):
    metrics = metrics_file(tmp_path / "m.json", stopped=0.92)
    judge = judge_file(tmp_path / "j.json", "AAAB")
    champ = tmp_path / "champion.json"
    champ.write_text(json.dumps({"version": 3, "metrics": {"stop_rate": 0.97, "refusal": 0.5,
                                                           "context_adherence": 0.4, "judge_grade_share": 0.5}}))
    result = gate.gate_files(load_profile("mini"), metrics, "candidate", judge, "required", champ, tmp_path / "g.json")
    assert result["champion_version"] == 3 and result["decision"] == "fail"
    assert [r["metric"] for r in result["metrics"] if not r["ok"]] == ["stop_rate"]


def test_cli_exit_code_blocks_on_fail_and_passes_on_pass(tmp_path, capsys):
    judge = judge_file(tmp_path / "j.json", "AAB")
    ok = metrics_file(tmp_path / "ok.json")
    assert cli.main(["gate", "--profile", "mini", "--metrics", str(ok), "--judge", str(judge),
                     "--output", str(tmp_path / "g.json")]) == 0
    bad = metrics_file(tmp_path / "bad.json", stopped=0.5)
    assert cli.main(["gate", "--profile", "mini", "--metrics", str(bad), "--judge", str(judge),
                     "--output", str(tmp_path / "g.json")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert json.loads((tmp_path / "g.json").read_text())["decision"] == "fail"
    assert cli.main(["gate", "--profile", "mini", "--metrics", str(ok), "--variant", "nope",
                     "--output", str(tmp_path / "g.json")]) == 2       # a wrong variant is an input error


def test_metric_names_are_what_evaluate_writes():
    from helpers import evaluation

    assert {k for k in gate.METRICS.values() if k} <= set(evaluation.RATE_METRICS)
