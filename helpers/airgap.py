"""Run a command where leaving the machine is physically impossible: a new network namespace with only loopback.

``unshare --user --map-root-user --net`` gives the command (and every process it starts: notebook kernels,
``vllm serve``, ``mlflow server``, C libraries' own DNS lookups) a network stack of its own whose only interface
is ``lo``. Any connection beyond loopback fails with "Network is unreachable", any name lookup fails. No root is
needed where unprivileged user namespaces are allowed. ``lo`` is brought up with one ioctl (no iproute2 needed).

Use: ``python -m helpers course run --airgap`` (``make airgap``); the course test runs the whole course this way
and falls back to the audit hook alone, saying why, where namespaces cannot be created.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import lru_cache

# Bring `lo` up inside the new namespace, then replace this process with the real command.
_BOOTSTRAP = (
    "import fcntl, os, socket, struct, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "flags = struct.unpack('16sh', fcntl.ioctl(s, 0x8913, struct.pack('16sh', b'lo', 0)))[1]\n"  # SIOCGIFFLAGS
    "fcntl.ioctl(s, 0x8914, struct.pack('16sh', b'lo', flags | 1))\n"                           # SIOCSIFFLAGS, IFF_UP
    "s.close()\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def command(cmd: list[str]) -> list[str]:
    """``cmd`` wrapped so that it runs in a fresh network namespace with only loopback up."""
    return ["unshare", "--user", "--map-root-user", "--net", "--", sys.executable, "-c", _BOOTSTRAP, *cmd]


@lru_cache(maxsize=1)
def unavailable_reason() -> str | None:
    """None if an air-gapped namespace can be created here, else why not (for the test's skip/fallback message)."""
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    probe = (
        "import socket\n"
        "c = socket.socket(); c.settimeout(2)\n"
        "try:\n    c.connect(('192.0.2.1', 9))\n"                   # TEST-NET-1: must be unreachable
        "except OSError as e:\n    print('blocked', e.errno)\n"
        "else:\n    print('open')\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "cli = socket.create_connection(srv.getsockname(), timeout=2); print('loopback ok')\n"
    )
    try:
        out = subprocess.run(command([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if out.returncode != 0:
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no user + network namespace here ({err}); check kernel.unprivileged_userns_clone / container policy"
    if "blocked" not in out.stdout or "loopback ok" not in out.stdout:
        return f"namespace created but not isolated as expected: {out.stdout.strip()!r}"
    return None


def available() -> bool:
    return unavailable_reason() is None
