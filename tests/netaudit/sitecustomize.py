"""Network audit for the course tests: with COURSE_NET_AUDIT_LOG set, every Python process started with
this directory on PYTHONPATH (the test runner, notebook kernels, vLLM servers) logs each socket connect
and each name lookup to that file. tests/test_notebooks.py asserts they all stay on loopback."""

import os
import sys

_LOG = os.environ.get("COURSE_NET_AUDIT_LOG")

if _LOG:
    def _audit(event, args):
        if event == "socket.connect":
            sock, address = args[0], args[1]
            line = f"{os.getpid()}\tconnect\t{int(sock.family)}\t{int(sock.type)}\t{address!r}\n"
        elif event == "socket.getaddrinfo":
            line = f"{os.getpid()}\tgetaddrinfo\t-\t-\t{args[0]!r}\n"
        else:
            return
        try:
            with open(_LOG, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError:
            pass

    sys.addaudithook(_audit)
    try:  # one line per audited process, so the test can see the hook reached every process
        with open("/proc/self/cmdline", "rb") as _cmd:
            _cmdline = _cmd.read().replace(b"\0", b" ").decode(errors="replace")[:300]
        with open(_LOG, "a", encoding="utf-8") as _fh:
            _fh.write(f"{os.getpid()}\tstart\t-\t-\t{_cmdline!r}\n")
    except OSError:
        pass
