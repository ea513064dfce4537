import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helpers import course

ROOT = Path(__file__).resolve().parent.parent


def _book(path: Path, body: str):
    params = new_code_cell('profile = "mini"\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell("# test"), params, new_code_cell(body)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)


def test_notebooks_are_ordered_by_post_number(tmp_path):
    for name in ["10-pipelines", "05.1-mlflow", "05-qlora", "02-vllm", "05.3-pad", "07.1-par", "07-gen"]:
        (tmp_path / f"{name}.ipynb").write_text("{}")
    ids = [course.notebook_id(p) for p in course.list_notebooks(tmp_path)]
    assert ids == ["02", "05", "05.1", "05.3", "07", "07.1", "10"]
    books = course.list_notebooks(tmp_path)
    assert [course.notebook_id(p) for p in course.select(books, start="05.3")] == ["05.3", "07", "07.1", "10"]
    assert [course.notebook_id(p) for p in course.select(books, only=["07"])] == ["07"]
    with pytest.raises(course.CourseError, match="No notebook '06'"):
        course.select(books, only=["06"])


def test_check_metrics_reports_violations():
    assert course.check_metrics("02", {"offline_prompts": 8}, "mini")  # other metrics missing
    good = {"offline_prompts": 8, "offline_output_tokens": 512, "offline_tokens_per_s": 10.0,
            "offline_stop_rate": 0.0, "server_healthy": True, "server_requests_ok": 8,
            "server_generation_tokens_metric": 512, "server_stopped": True}
    assert course.check_metrics("02", good, "mini") == []
    bad = dict(good, offline_stop_rate=0.9, server_healthy=False)
    problems = course.check_metrics("02", bad, "mini")
    assert any("offline_stop_rate" in p for p in problems) and any("server_healthy" in p for p in problems)


def _ok_broken_ok(books: Path) -> Path:
    """Three notebooks: 01 and 03 save a metric, 02 raises."""
    books.mkdir()
    _book(books / "01-ok.ipynb", "from helpers import course\n"
          "course.start_notebook('01', profile, run_dir).save_metrics(value=1)")
    _book(books / "02-broken.ipynb", "x = 1\nraise ValueError('Kaputt: bitte Datei prüfen')")
    _book(books / "03-after.ipynb", "from helpers import course\n"
          "course.start_notebook('03', profile, run_dir).save_metrics(value=3)")
    return books


def test_failing_notebook_is_named_and_resume_continues(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    books = _ok_broken_ok(tmp_path / "nbs")
    with pytest.raises(course.CourseError) as err:
        course.run_course(notebook_dir=books, progress=False, check=False)
    msg = str(err.value)
    assert "Notebook 02 failed in cell" in msg and "ValueError: Kaputt" in msg and "--from 02" in msg
    run_dir = course.latest_run_dir()
    state = json.loads((run_dir / "course_state.json").read_text())
    assert state["notebooks"]["01"]["status"] == "ok" and state["notebooks"]["02"]["status"] == "failed"
    assert "03" not in state["notebooks"]
    _book(books / "02-broken.ipynb", "x = 2")  # the learner fixes the notebook
    again = course.run_course(notebook_dir=books, start="02", progress=False, check=False)
    assert again == run_dir
    state = json.loads((run_dir / "course_state.json").read_text())
    assert {k: v["status"] for k, v in state["notebooks"].items()} == {"01": "ok", "02": "ok", "03": "ok"}
    assert json.loads((run_dir / "metrics" / "03.json").read_text())["value"] == 3
    assert "02-broken.ipynb" in (run_dir / "report.md").read_text()


def test_keep_going_runs_the_rest_and_names_every_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    books = _ok_broken_ok(tmp_path / "nbs")
    with pytest.raises(course.CourseError) as err:
        course.run_course(notebook_dir=books, progress=False, check=False, keep_going=True)
    assert "1 of 3 notebooks failed" in str(err.value) and "Notebook 02 failed in cell" in str(err.value)
    run_dir = course.latest_run_dir()
    state = json.loads((run_dir / "course_state.json").read_text())
    assert {k: v["status"] for k, v in state["notebooks"].items()} == {"01": "ok", "02": "failed", "03": "ok"}
    assert json.loads((run_dir / "metrics" / "03.json").read_text())["value"] == 3


def test_metrics_out_of_tolerance_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path / "runs"))
    books = tmp_path / "nbs"
    books.mkdir()
    _book(books / "02-fake.ipynb", "from helpers import course\n"
          "course.start_notebook('02', profile, run_dir).save_metrics(offline_prompts=0)")
    with pytest.raises(course.CourseError, match="out of tolerance"):
        course.run_course(notebook_dir=books, progress=False)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_cli_help_for_every_step_and_clear_errors():
    out = _cli("--help")
    assert out.returncode == 0
    for step in ("model", "serve", "course", "data", "sovereign"):
        assert step in out.stdout
        assert _cli(step, "--help").returncode == 0
    bad = _cli("model", "path", "--profile", "a100")
    assert bad.returncode == 2 and "Unknown profile 'a100'" in bad.stderr
    missing = _cli("course", "run", "--only", "99")
    assert missing.returncode == 2 and "No notebook '99'" in missing.stderr
    listed = _cli("course", "list")
    assert "01-warum-self-hosting.ipynb" in listed.stdout
