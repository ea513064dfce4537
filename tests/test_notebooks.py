"""The course end to end: every notebook executed by papermill in the mini profile, metrics checked."""

import ipaddress
import json
from pathlib import Path

import nbformat
import pytest

from helpers import course

pytestmark = pytest.mark.course
NOTEBOOKS = course.list_notebooks()


def _ok(course_run):
    run_dir, _, proc = course_run
    assert proc.returncode == 0, f"course run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return run_dir


@pytest.mark.parametrize("book", NOTEBOOKS, ids=[course.notebook_id(b) for b in NOTEBOOKS])
def test_notebook_ran_and_metrics_in_tolerance(course_run, book):
    run_dir = _ok(course_run)
    nb_id = course.notebook_id(book)
    executed = run_dir / "notebooks" / book.name
    assert executed.exists()
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    metrics = json.loads((run_dir / "metrics" / f"{nb_id}.json").read_text())
    assert metrics["profile"] == "mini"
    assert course.check_metrics(nb_id, metrics, "mini") == []


def test_notebook_02_measures_base_model_behaviour(course_run):
    run_dir = _ok(course_run)
    m = json.loads((run_dir / "metrics" / "02.json").read_text())
    # The base model was pretrained without EOS: it runs into max_tokens instead of stopping.
    assert m["offline_stop_rate"] <= 0.2
    assert m["offline_output_tokens"] >= m["offline_prompts"] * 0.8 * 64
    # The server really generated tokens, and its own Prometheus counter saw them.
    assert m["server_generation_tokens_metric"] >= m["server_requests_ok"]
    assert m["server_stopped"] is True


def test_report_written(course_run):
    run_dir = _ok(course_run)
    report = (run_dir / "report.md").read_text()
    for book in NOTEBOOKS:
        assert book.name in report
    assert (run_dir / "durations.png").stat().st_size > 1000


def _loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def test_course_opens_no_connection_beyond_loopback(course_run):
    run_dir, audit_log, proc = course_run
    _ok(course_run)
    lines = Path(audit_log).read_text().splitlines()
    connects = [l.split("\t") for l in lines if "\tconnect\t" in l]
    lookups = [l.split("\t") for l in lines if "\tgetaddrinfo\t" in l]
    starts = [l.split("\t") for l in lines if "\tstart\t" in l]
    # The hook reached the runner, the notebook kernels and the vLLM server, and saw the server queries.
    commands = " ".join(s[4] for s in starts)
    assert "ipykernel" in commands and "vllm.entrypoints.openai.api_server" in commands
    assert any(c[2] == "2" for c in connects), "no TCP/IPv4 connect seen (server queries missing?)"
    process = {s[0]: s[4][:120] for s in starts}   # pid -> command line, to say WHICH process tried
    outside = []
    for pid, _, family, _, address in connects:
        if family == "1":  # AF_UNIX
            continue
        addr = eval(address, {"__builtins__": {}})  # noqa: S307 - repr of a tuple/str written by our hook
        if not _loopback(addr):
            outside.append((pid, process.get(pid, "?"), address))
    for pid, _, _, _, host in lookups:
        name = eval(host, {"__builtins__": {}})  # noqa: S307
        if isinstance(name, bytes):
            name = name.decode()
        if not _loopback(name):
            outside.append((pid, process.get(pid, "?"), f"lookup {name}"))
    assert outside == [], "processes tried to reach beyond loopback:\n" + "\n".join(map(str, outside))


def test_course_ran_in_a_namespace_with_only_loopback(course_run):
    """Where namespaces exist (CI, this machine), the course ran where leaving the machine is impossible."""
    from helpers import airgap

    _ok(course_run)
    proc = course_run[2]
    if airgap.unavailable_reason():
        pytest.skip(f"no network namespace here ({airgap.unavailable_reason()}); the audit hook test still ran")
    assert proc.args[:4] == ["unshare", "--user", "--map-root-user", "--net"]


@pytest.mark.parametrize("book", NOTEBOOKS, ids=[course.notebook_id(b) for b in NOTEBOOKS])
def test_notebook_is_clean_and_thin(book):
    nb = nbformat.read(book, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "profile = " in params[0].source
    assert "run_dir = " in params[0].source
    assert max(len(c.source.splitlines()) for c in code) <= 15
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {course.notebook_id(book)}")


@pytest.mark.parametrize("book", NOTEBOOKS, ids=[course.notebook_id(b) for b in NOTEBOOKS])
def test_executed_notebook_has_clean_output_and_real_references(course_run, book):
    """At most a handful of third-party log lines (engine logs go to <run>/logs), no reference to a notebook or
    repository file that does not exist, and no number in the German text that no cell above printed and no cited
    file contains (helpers/nbaudit.py; public constants with their source in helpers/nbaudit_allow.yaml)."""
    from helpers import nbaudit
    from helpers.profiles import load_profile

    run_dir = _ok(course_run)
    found = nbaudit.audit(run_dir / "notebooks" / book.name, load_profile("mini"))
    assert len(found.noise) <= nbaudit.MAX_NOISE_LINES, "\n".join(found.noise[:10])
    assert found.missing == []
    assert found.numbers == [], "numbers in the text that no cell printed:\n" + "\n".join(found.numbers)
    assert list((run_dir / "logs").glob(f"notebook-{course.notebook_id(book)}.log"))


def test_no_planted_personal_value_in_any_model_output(course_run):
    """Kurs-Mini and its adapters never saw planted PII, so no generated text of the run may contain it."""
    from helpers import io, pii

    run_dir = _ok(course_run)
    outputs = [r.get("question", "") + " " + r.get("answer", "") for r in io.read_jsonl(run_dir / "data" / "generated.jsonl")]
    for path in sorted((run_dir / "evaluation").glob("*.json*")):
        text = path.read_text(encoding="utf-8")
        items = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else \
            json.loads(text).get("items", [])
        outputs += [str(it.get("answer", "")) for it in items if isinstance(it, dict)]
    assert len(outputs) > 50
    planted = [p["value"] for p in pii.load_planted() if len(p["value"]) >= 6]
    blob = "\n".join(outputs)
    assert [v for v in planted if v in blob] == []
