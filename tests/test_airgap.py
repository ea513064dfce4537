"""The air-gapped namespace the course test runs in: loopback works, everything beyond fails."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import airgap

needs_namespace = pytest.mark.skipif(not airgap.available(), reason=f"no network namespace here: "
                                     f"{airgap.unavailable_reason()} (the course test falls back to the audit hook)")

PROBE = """
import socket, threading
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
threading.Thread(target=lambda: srv.accept()[0].sendall(b"hi"), daemon=True).start()
print("loopback", socket.create_connection(srv.getsockname(), timeout=5).recv(2).decode())
for target in [("192.0.2.1", 443), ("10.0.0.1", 80)]:
    try:
        socket.create_connection(target, timeout=3)
        print("REACHED", target)
    except OSError as exc:
        print("blocked", exc.errno)
try:
    socket.getaddrinfo("pypi.org", 443)
    print("RESOLVED")
except OSError:
    print("no dns")
"""


@needs_namespace
def test_only_loopback_inside():
    out = subprocess.run(airgap.command([sys.executable, "-c", PROBE]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert "loopback" in lines and "hi" in lines
    assert "REACHED" not in out.stdout and "RESOLVED" not in out.stdout
    assert out.stdout.count("blocked") == 2 and "no dns" in out.stdout


@needs_namespace
def test_exit_code_and_arguments_pass_through():
    out = subprocess.run(airgap.command([sys.executable, "-c", "import sys; print(sys.argv[1:]); sys.exit(3)",
                                         "a b", "--x"]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.strip() == "['a b', '--x']"


def test_unavailable_reason_names_the_cause(monkeypatch):
    airgap.unavailable_reason.cache_clear()
    monkeypatch.setattr(airgap.shutil, "which", lambda name: None)
    try:
        assert "unshare" in airgap.unavailable_reason()
    finally:
        airgap.unavailable_reason.cache_clear()
