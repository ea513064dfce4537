"""JupyterLab from the course environment on loopback: start with a token, wait until it answers, stop.

The browser test opens it in headless Chromium. Nothing in it reaches out: it listens on 127.0.0.1 only, the
news feed, update check and PyPI extension manager are off, and its settings, workspaces and runtime files live
in a fresh folder (no user settings, no restored workspace). With ``svg_figures`` inline plots come as SVG
whose text stays text (the browser test reads the break-even legend of notebook 01's slider plot). Kernels get
``COURSE_RUN_DIR`` (notebooks write into and read from that run folder) and this checkout's ``helpers`` first on
``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from . import paths
from .serve import LoopbackServer, ServerError

# User settings that keep a fresh JupyterLab quiet and offline: no news/update requests, no toast asking for them.
_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}

# Kernel config for ``svg_figures``: inline plots as SVG whose labels stay text, so a test can read a plot's legend.
_SVG_FIGURES = "c.InlineBackend.figure_formats = {'svg'}\nc.InlineBackend.rc = {'svg.fonttype': 'none'}\n"


class JupyterLabServer(LoopbackServer):
    """``with JupyterLabServer(root_dir, run_dir) as lab: lab.notebook_url("01.ipynb")`` -- a real JupyterLab."""

    name = "jupyterlab"

    def __init__(self, root_dir: str | Path, run_dir: str | Path | None = None, port: int | None = None,
                 host: str = "127.0.0.1", token: str | None = None, log_path: str | Path | None = None,
                 svg_figures: bool = False):
        self.root_dir = Path(root_dir).resolve()
        self.svg_figures = svg_figures
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.token = token or secrets.token_hex(16)
        self.state_dir = Path(tempfile.mkdtemp(prefix="jupyterlab-state-"))
        super().__init__(host, port, log_path or self.state_dir / "jupyterlab.log")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={self.host}",
                f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
                "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"] + (
                    ["--allow-root"] if os.geteuid() == 0 else [])   # CI containers run as root

    def environment(self) -> dict[str, str]:
        env = super().environment()
        settings = self.state_dir / "settings"
        for name, values in _SETTINGS.items():
            path = settings / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        env.update(JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.state_dir / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(self.state_dir / "runtime"),
                   JUPYTER_CONFIG_DIR=str(self.state_dir / "config"),
                   JUPYTER_DATA_DIR=str(self.state_dir / "data"),
                   PYTHONPATH=os.pathsep.join([str(paths.ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                   else [])))
        if self.run_dir is not None:
            env["COURSE_RUN_DIR"] = str(self.run_dir)
        if self.svg_figures:
            profile = self.state_dir / "ipython" / "profile_default"
            profile.mkdir(parents=True, exist_ok=True)
            (profile / "ipython_kernel_config.py").write_text(_SVG_FIGURES, encoding="utf-8")
            env["IPYTHONDIR"] = str(profile.parent)
        return env

    def default_timeout(self) -> float:
        return 180

    def wait_healthy(self, timeout: float = 180) -> None:
        """Poll ``/api/status`` (with the token) until the server answers."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.stop()
                raise ServerError(f"JupyterLab exited with code {code} before it answered. "
                                  f"Last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"JupyterLab on port {self.port} did not answer after {timeout:.0f} s. "
                          f"Last lines of {self.log_path}:\n{self.log_tail()}")

    def trust(self, notebook: str | Path) -> None:
        """Mark a notebook as trusted for this server (like ``jupyter trust``), so that its saved outputs --
        widget views among them -- are rendered, not shown as plain text."""
        import nbformat
        from nbformat.sign import NotebookNotary

        nb = nbformat.read(notebook, as_version=4)
        NotebookNotary(data_dir=str(self.state_dir / "data")).sign(nb)

    def notebook_url(self, relative_path: str | Path) -> str:
        """URL that opens one notebook (relative to ``root_dir``) in a fresh workspace, logged in by token."""
        quoted = urllib.parse.quote(Path(relative_path).as_posix())
        return f"{self.url}/lab/tree/{quoted}?reset&token={self.token}"

    def stop(self, timeout: float = 30) -> None:
        """Stop JupyterLab and its kernels; remove its settings/runtime folder unless the log lives there."""
        super().stop(timeout)
        if self.state_dir not in self.log_path.parents:
            shutil.rmtree(self.state_dir, ignore_errors=True)
