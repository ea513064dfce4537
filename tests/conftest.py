import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETAUDIT = Path(__file__).resolve().parent / "netaudit"


@pytest.fixture(scope="session")
def course_run(tmp_path_factory):
    """Run the whole course once (mini profile, papermill, real vLLM) in an air-gapped network namespace (only
    loopback; helpers/airgap.py) and under the network audit hook.

    Returns (run_dir, audit_log, completed_process). Every notebook test reads from this one run. Where no
    namespace can be created, the run falls back to the audit hook alone and says why (``airgap`` in the
    returned process's ``args`` tells which way it ran).
    """
    from helpers import airgap

    run_dir = tmp_path_factory.mktemp("course-run")
    audit_log = run_dir / "net-audit.tsv"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(NETAUDIT), str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["COURSE_NET_AUDIT_LOG"] = str(audit_log)
    cmd = [sys.executable, "-m", "helpers", "course", "run", "--profile", "mini", "--run-dir", str(run_dir),
           "--no-progress"]
    reason = airgap.unavailable_reason()
    if reason:
        print(f"\nNOTE: course test without network namespace ({reason}); relying on the audit hook alone.")
    else:
        cmd = airgap.command(cmd)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    return run_dir, audit_log, proc


@pytest.fixture(scope="session")
def lora_server(tmp_path_factory):
    """One real `vllm serve --enable-lora` on loopback (Kurs-Mini + two random peft adapters "a" and "b", their
    folders in ``server.test_adapters``), with runtime adapter loading (loopback only) for the retire/rollback
    test, shared by the LoRA serving, router, A/B, promotion and dashboard tests; stopped at the end of the
    session. A test that unloads an adapter loads it again."""
    from helpers import adapters, serve
    from helpers.profiles import load_profile

    root = tmp_path_factory.mktemp("lora-server")
    dirs = {name: adapters.random_adapter(root / name, r=8, seed=i) for i, name in enumerate(("a", "b"), 1)}
    server = serve.lora_server(load_profile("mini"), dirs, log_path=root / "server.log", runtime_lora_updates=True)
    server.test_adapters = dirs
    server.start()
    try:
        yield server
    finally:
        server.stop()


_SESSION_START = time.time()


def pytest_sessionfinish(session, exitstatus):
    """Record the whole session's duration for `make bench` (budget: 40 minutes); never asserted here."""
    if getattr(session.config.option, "collectonly", False) or session.testscollected < 100:
        return   # a partial run says nothing about `make test`
    from helpers import paths

    out = paths.runs_dir() / "test-session.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"seconds": round(time.time() - _SESSION_START, 1), "tests": session.testscollected,
                               "exitstatus": int(exitstatus), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}))
