"""The A/B router: an OpenAI-compatible FastAPI app in front of one ``vllm serve`` with several LoRA adapters.

Clients ask for a virtual model (``faq``); the router maps each request to an arm (``faq-v1``, ``faq-v2``)
by integer weights, rewrites ``model`` to the arm's adapter name and forwards the request to vLLM.

* Sticky assignment: a user's position is ``sha256(experiment, user id)`` read as a number in [0, 1); the
  arms own consecutive intervals of [0, 1) in config order, proportional to their weights. The same user
  always lands on the same arm, and raising the *last* arm's weight (the challenger) only moves users from
  the other arms to it, never back -- unlike ``hash mod sum(weights)``, which reshuffles everyone.
  Without a user id (header ``X-User-Id`` or the body's ``user``) the request id is the unit, logged as such.
* Every request is logged to JSONL: request id, user hash, unit, arm, adapter, the model the response names,
  config version, status, latency, finish reason. A response that names another model than the arm's adapter
  is never passed on (502, logged as ``mismatch``); an arm whose adapter vLLM lacks gives an error for that
  request, never a silent answer from another adapter.
* Per-arm Prometheus metrics (vLLM's ``/metrics`` has no per-adapter series): ``ab_router_requests_total``,
  ``ab_router_request_latency_seconds``, ``ab_router_finish_total``, ``ab_router_arm_weight``,
  ``ab_router_guardrail_trips_total``.
* Guardrails, separate from the A/B decision: an arm whose error rate or p95 latency over its recent window
  breaches the limit gets weight 0 at once (logged as an event; its users move to the other arms). A trip
  holds until the config's ``config_version`` changes.
* The config file is re-read when it changes (``promotion`` writes new weights with a new version).
* ``preflight`` refuses what would make the test invalid or unsafe before any traffic: max_loras < 2 (arms
  would never share a batch), an adapter vLLM does not serve, a rank above max_lora_rank, an adapter name
  that earlier named other weights (vLLM may reuse stale cache for it, vllm#42125), weights that do not sum
  above 0, duplicate arm or adapter names.
"""

import asyncio
import contextlib
import hashlib
import json
import math
import re
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from . import io
from .errors import HelpersError
from .serve import LoopbackServer

USER_HEADER = "x-user-id"
REQUEST_HEADER = "x-request-id"
METRIC_PREFIX = "ab_router_"
_LAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RouterConfigError(HelpersError, ValueError):
    """The A/B config cannot be used; the message names the field."""


class PreflightError(HelpersError, RuntimeError):
    """The serving setup would make the A/B test invalid or unsafe; the message lists every problem."""


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class Arm:
    name: str
    adapter: str
    weight: int


@dataclass(frozen=True)
class Guardrails:
    max_error_rate: float = 0.2
    max_p95_latency_s: float = 30.0
    window: int = 50
    min_requests: int = 10


@dataclass(frozen=True)
class ABConfig:
    experiment: str
    virtual_model: str
    upstream: str
    arms: tuple[Arm, ...]
    config_version: int = 1
    assignment_log: str = "assignments.jsonl"
    guardrails: Guardrails = field(default_factory=Guardrails)
    max_loras: int | None = None
    max_lora_rank: int | None = None

    @property
    def weights(self) -> dict[str, int]:
        return {a.name: a.weight for a in self.arms}

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise RouterConfigError(f"Unknown arm '{name}': the config has {', '.join(a.name for a in self.arms)}.")

    def with_weights(self, weights: dict[str, int], bump: bool = True) -> "ABConfig":
        """A copy with new weights (unknown arms refused) and, with ``bump``, the next config version."""
        for name in weights:
            self.arm(name)
        arms = tuple(replace(a, weight=int(weights.get(a.name, a.weight))) for a in self.arms)
        cfg = replace(self, arms=arms, config_version=self.config_version + (1 if bump else 0))
        validate(cfg)
        return cfg

    def as_dict(self) -> dict:
        d = asdict(self)
        d["arms"] = [asdict(a) for a in self.arms]
        return {k: v for k, v in d.items() if v is not None}


def validate(cfg: ABConfig) -> ABConfig:
    problems = []
    if not cfg.arms:
        problems.append("no arms: list at least two under `arms:`")
    for key in ("name", "adapter"):
        values = [getattr(a, key) for a in cfg.arms]
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            problems.append(f"arm {key}s used twice: {dup} (each arm needs its own versioned adapter name)")
    for a in cfg.arms:
        if not isinstance(a.weight, int) or isinstance(a.weight, bool) or a.weight < 0:
            problems.append(f"arm '{a.name}': weight must be an integer >= 0, got {a.weight!r}")
        if not re.fullmatch(r"[A-Za-z0-9._-]+", a.adapter or ""):
            problems.append(f"arm '{a.name}': adapter name {a.adapter!r} is not a usable model name")
    if not problems and sum(a.weight for a in cfg.arms) <= 0:
        problems.append("the weights sum to 0: give at least one arm a weight > 0")
    if cfg.virtual_model in {a.adapter for a in cfg.arms}:
        problems.append(f"virtual model '{cfg.virtual_model}' is also an adapter name; use versioned adapter names")
    if problems:
        raise RouterConfigError("A/B config invalid: " + "; ".join(problems))
    return cfg


def load_config(path: str | Path) -> ABConfig:
    path = Path(path)
    if not path.is_file():
        raise RouterConfigError(f"A/B config {path} does not exist; write one (see notebook 09 or "
                                "helpers.router.write_config).")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        arms = tuple(Arm(str(a["name"]), str(a["adapter"]), a.get("weight", 0)) for a in raw.get("arms") or [])
        cfg = ABConfig(experiment=str(raw["experiment"]), virtual_model=str(raw.get("virtual_model", "faq")),
                       upstream=str(raw["upstream"]).rstrip("/"), arms=arms,
                       config_version=int(raw.get("config_version", 1)),
                       assignment_log=str(raw.get("assignment_log", "assignments.jsonl")),
                       guardrails=Guardrails(**(raw.get("guardrails") or {})),
                       max_loras=raw.get("max_loras"), max_lora_rank=raw.get("max_lora_rank"))
    except (KeyError, TypeError) as exc:
        raise RouterConfigError(f"A/B config {path}: missing or unknown field ({exc}); it needs experiment, "
                                "upstream and arms [{name, adapter, weight}].") from exc
    return validate(cfg)


def write_config(cfg: ABConfig, path: str | Path) -> Path:
    validate(cfg)
    return io.write_text(path, yaml.safe_dump(cfg.as_dict(), sort_keys=False, allow_unicode=True))


def log_path(cfg: ABConfig, config_path: str | Path) -> Path:
    p = Path(cfg.assignment_log)
    return p if p.is_absolute() else Path(config_path).resolve().parent / p


# --------------------------------------------------------------------------- assignment
def user_hash(experiment: str, unit: str) -> str:
    return hashlib.sha256(f"{experiment}\x00{unit}".encode("utf-8")).hexdigest()


def position(experiment: str, unit: str) -> float:
    """The unit's fixed position in [0, 1) for this experiment (60 bits of its hash)."""
    return int(user_hash(experiment, unit)[:15], 16) / 16 ** 15


def assign(experiment: str, unit: str, weights: dict[str, int]) -> str:
    """The arm that owns the unit's position; arms own consecutive intervals in the dict's order."""
    total = sum(weights.values())
    if total <= 0:
        raise RouterConfigError("No arm has a weight > 0: nothing to route to.")
    x = position(experiment, unit) * total
    acc = 0
    for name, w in weights.items():
        acc += w
        if w > 0 and x < acc:
            return name
    return next(n for n, w in reversed(weights.items()) if w > 0)


def assignment_moves(experiment: str, units: list[str], before: dict[str, int], after: dict[str, int]):
    """How many units change arm when the weights go from ``before`` to ``after`` (a from x to table)."""
    import pandas as pd

    pairs = [(assign(experiment, u, before), assign(experiment, u, after)) for u in units]
    table = pd.crosstab(pd.Series([a for a, _ in pairs], name="vorher"), pd.Series([b for _, b in pairs], name="nachher"))
    return table


# --------------------------------------------------------------------------- preflight
def adapter_fingerprint(adapter_dir: str | Path) -> str | None:
    """SHA-256 of the adapter's weight files (None when the directory is not readable from here)."""
    files = sorted(Path(adapter_dir).glob("adapter_model.*"))
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def read_max_loras(metrics_text: str) -> int | None:
    """``max_lora`` from vLLM's ``vllm:lora_requests_info`` (present once a LoRA request has run)."""
    m = re.search(r'vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', metrics_text)
    return int(m.group(1)) if m else None


def preflight(cfg: ABConfig, served: list[dict], max_loras: int | None, max_lora_rank: int | None,
              ledger: str | Path | None = None) -> dict:
    """Check the config against what vLLM serves (``served``: the ``data`` of ``GET /v1/models``).

    ``ledger``: a JSON file name -> weight fingerprint of every adapter name ever used with this router;
    a name that now points to other weights is refused (versioned names are never reused). Raises
    ``PreflightError`` with every problem; returns a summary (and records the names in the ledger) when fine.
    """
    from .adapters import adapter_rank, read_config, AdapterError

    validate(cfg)
    problems = []
    live = [a for a in cfg.arms if a.weight > 0]
    if max_loras is None:
        problems.append("max_loras unknown: set `max_loras` in the A/B config to the server's --max-loras")
    elif max_loras < max(2, len(live)):
        problems.append(f"vLLM runs with max_loras={max_loras}: requests of different arms never share a batch and "
                        f"queue behind each other (latency depends on the arm). Start vLLM with --max-loras "
                        f"{max(2, len(live))} or more.")
    by_id = {m.get("id"): m for m in served}
    ledger_path = Path(ledger) if ledger else None
    names = io.read_json(ledger_path) if ledger_path and ledger_path.exists() else {}
    seen = {}
    for arm in cfg.arms:
        entry = by_id.get(arm.adapter)
        if entry is None or not entry.get("parent"):
            problems.append(f"arm '{arm.name}': vLLM does not serve adapter '{arm.adapter}' (it serves "
                            f"{sorted(k for k, v in by_id.items() if v.get('parent'))}). Load it with --lora-modules "
                            f"{arm.adapter}=DIR, or fix the arm.")
            continue
        root = entry.get("root")
        rank = fp = None
        if root and Path(root).is_dir():
            try:
                rank = adapter_rank(read_config(root, arm.adapter))
            except AdapterError as exc:
                problems.append(str(exc))
            fp = adapter_fingerprint(root)
        if rank is not None and max_lora_rank is not None and rank > max_lora_rank:
            problems.append(f"arm '{arm.name}': adapter '{arm.adapter}' has rank {rank} > max_lora_rank "
                            f"{max_lora_rank}; start vLLM with --max-lora-rank >= {rank} (both arms should use the "
                            "same rank).")
        if fp and names.get(arm.adapter) not in (None, fp):
            problems.append(f"arm '{arm.name}': the name '{arm.adapter}' was used for other weights before "
                            f"({names[arm.adapter]} != {fp}). vLLM may serve stale cached state under a reused name "
                            "(vllm#42125): give the new adapter a new version name.")
        seen[arm.adapter] = {"arm": arm.name, "rank": rank, "fingerprint": fp, "root": root}
    if problems:
        raise PreflightError("A/B preflight failed:\n- " + "\n- ".join(problems))
    if ledger_path:
        names.update({k: v["fingerprint"] for k, v in seen.items() if v["fingerprint"]})
        io.write_json(ledger_path, names)
    return {"max_loras": max_loras, "max_lora_rank": max_lora_rank, "adapters": seen}


def preflight_live(cfg: ABConfig, ledger: str | Path | None = None, warmup: bool = True,
                   timeout: float = 120) -> dict:
    """``preflight`` against the running vLLM: one warm-up request per adapter (the first request after
    loading is slow, and it makes vLLM export ``max_lora``), then /v1/models and /metrics."""
    import httpx

    with httpx.Client(base_url=cfg.upstream, timeout=timeout) as client:
        served = client.get("/v1/models").json()["data"]
        if warmup:
            ids = {m["id"] for m in served}
            for arm in cfg.arms:
                if arm.adapter in ids:
                    client.post("/v1/completions", json={"model": arm.adapter, "prompt": "Hallo", "max_tokens": 1})
        metric = read_max_loras(client.get("/metrics").text)
    return preflight(cfg, served, metric if metric is not None else cfg.max_loras, cfg.max_lora_rank, ledger)


# --------------------------------------------------------------------------- the app
class _Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = ("experiment", "arm", "adapter")
        self.requests = Counter(f"{METRIC_PREFIX}requests", "Requests per arm and status (ok, error, mismatch)",
                                labels + ("status",), registry=self.registry)
        self.latency = Histogram(f"{METRIC_PREFIX}request_latency_seconds", "End-to-end latency per arm (s)",
                                 labels, buckets=_LAT_BUCKETS, registry=self.registry)
        self.finish = Counter(f"{METRIC_PREFIX}finish", "Finish reasons per arm", labels + ("finish_reason",),
                              registry=self.registry)
        self.assignments = Counter(f"{METRIC_PREFIX}assignments", "Assignments per arm and unit (user, request_id)",
                                   ("experiment", "arm", "unit"), registry=self.registry)
        self.weight = Gauge(f"{METRIC_PREFIX}arm_weight", "Effective weight per arm (0 after a guardrail trip)",
                            ("experiment", "arm"), registry=self.registry)
        self.trips = Counter(f"{METRIC_PREFIX}guardrail_trips", "Guardrail trips per arm and reason",
                             ("experiment", "arm", "reason"), registry=self.registry)


METRIC_NAMES = ("ab_router_requests_total", "ab_router_request_latency_seconds_bucket",
                "ab_router_request_latency_seconds_count", "ab_router_request_latency_seconds_sum",
                "ab_router_finish_total", "ab_router_assignments_total", "ab_router_arm_weight",
                "ab_router_guardrail_trips_total")


class RouterState:
    """Config (re-read on change), guardrail windows and trips, per-arm counts, the assignment log."""

    def __init__(self, config_path: str | Path):
        self.config_path = Path(config_path)
        self.cfg = load_config(self.config_path)
        self._mtime = self.config_path.stat().st_mtime_ns
        self.log_file = log_path(self.cfg, self.config_path)
        self.tripped: dict[str, str] = {}
        self.windows: dict[str, deque] = {}
        self.counts: dict[str, int] = {}
        self.metrics = _Metrics()
        self._lock = threading.Lock()
        self._fh = None
        self._set_weight_gauges()

    def maybe_reload(self) -> None:
        try:
            mtime = self.config_path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            new = load_config(self.config_path)
        except RouterConfigError as exc:
            self.event({"event": "config_rejected", "reason": str(exc)})
            return
        if new.config_version != self.cfg.config_version:
            self.tripped.clear()
            self.windows.clear()
        self.cfg = new
        self.log_file = log_path(new, self.config_path)
        self.event({"event": "config_loaded", "weights": new.weights})
        self._set_weight_gauges()

    def effective_weights(self) -> dict[str, int]:
        return {a.name: 0 if a.name in self.tripped else a.weight for a in self.cfg.arms}

    def _set_weight_gauges(self) -> None:
        for name, w in self.effective_weights().items():
            self.metrics.weight.labels(self.cfg.experiment, name).set(w)

    def event(self, record: dict) -> None:
        self.write({"ts": time.time(), "experiment": self.cfg.experiment,
                    "config_version": self.cfg.config_version, **record})

    def write(self, record: dict) -> None:
        """Append one line to the assignment log (kept open; flushed per line, so a reader sees every record)."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            if self._fh is None or self._fh.name != str(self.log_file):
                self.close()
                self.log_file.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.log_file, "a", encoding="utf-8")
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def observe(self, arm: str, ok: bool, latency: float) -> None:
        g = self.cfg.guardrails
        win = self.windows.setdefault(arm, deque(maxlen=g.window))
        win.append((ok, latency))
        if arm in self.tripped or len(win) < g.min_requests:
            return
        errors = sum(1 for k, _ in win if not k) / len(win)
        lats = sorted(lat for k, lat in win if k)
        p95 = lats[min(len(lats) - 1, math.ceil(0.95 * len(lats)) - 1)] if lats else 0.0
        reason = None
        if errors > g.max_error_rate:
            reason = f"error rate {errors:.2f} > {g.max_error_rate}"
        elif p95 > g.max_p95_latency_s:
            reason = f"p95 latency {p95:.3f} s > {g.max_p95_latency_s} s"
        if reason:
            self.tripped[arm] = reason
            self.metrics.trips.labels(self.cfg.experiment, arm, "error_rate" if "error" in reason else "latency").inc()
            self._set_weight_gauges()
            self.event({"event": "guardrail", "arm": arm, "reason": reason, "weights": self.effective_weights()})


def _error(status: int, message: str, kind: str = "ab_router_error", headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def create_app(config_path: str | Path):
    """The FastAPI app for ``config_path``. Upstream calls go through one pooled aiohttp session per upstream:
    the router's own CPU time per request is what it takes from vLLM on a CPU host (`make bench router`)."""
    import aiohttp
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    state = RouterState(config_path)
    sessions: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        for sess in sessions.values():
            await sess.close()
        state.close()

    app = FastAPI(title="A/B router", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.ab = state

    def session() -> aiohttp.ClientSession:
        up = state.cfg.upstream
        if up not in sessions:
            sessions[up] = aiohttp.ClientSession(
                base_url=up, timeout=aiohttp.ClientTimeout(total=600, connect=10),
                connector=aiohttp.TCPConnector(limit=512), json_serialize=json.dumps)
        return sessions[up]

    @app.get("/health")
    async def health():
        return {"status": "ok", "experiment": state.cfg.experiment, "config_version": state.cfg.config_version}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.cfg.virtual_model, "object": "model", "owned_by": "ab-router"}]}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ab/state")
    async def ab_state():
        state.maybe_reload()
        from .sequential import srm_check

        return {"experiment": state.cfg.experiment, "config_version": state.cfg.config_version,
                "weights": state.cfg.weights, "effective_weights": state.effective_weights(),
                "tripped": state.tripped, "counts": state.counts,
                "srm": srm_check(state.counts, state.cfg.weights) if state.counts else None}

    async def route(request: Request, path: str):
        state.maybe_reload()
        cfg = state.cfg
        request_id = request.headers.get(REQUEST_HEADER) or uuid.uuid4().hex
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "The request body is not JSON.", "invalid_request_error")
        if body.get("model") != cfg.virtual_model:
            return _error(404, f"Model '{body.get('model')}' is not routed here: ask for '{cfg.virtual_model}'.",
                          "invalid_request_error")
        if body.get("stream"):
            return _error(400, "stream=true is not supported by the A/B router: it checks the full response's "
                          "model before passing it on.", "invalid_request_error")
        user = request.headers.get(USER_HEADER) or body.get("user")
        unit_kind, unit = ("user", str(user)) if user else ("request_id", request_id)
        weights = state.effective_weights()
        base = {"ts": time.time(), "request_id": request_id, "experiment": cfg.experiment,
                "config_version": cfg.config_version, "unit": unit_kind,
                "user_hash": user_hash(cfg.experiment, unit)[:16]}
        if sum(weights.values()) <= 0:
            state.write({**base, "arm": None, "status": "no_arm", "tripped": dict(state.tripped)})
            return _error(503, f"No arm of experiment '{cfg.experiment}' has weight > 0 (guardrails: "
                          f"{state.tripped or 'none tripped'}); fix the arms and raise config_version.")
        arm = cfg.arm(assign(cfg.experiment, unit, weights))
        state.counts[arm.name] = state.counts.get(arm.name, 0) + 1
        state.metrics.assignments.labels(cfg.experiment, arm.name, unit_kind).inc()
        labels = (cfg.experiment, arm.name, arm.adapter)
        headers = {"x-ab-arm": arm.name, "x-ab-adapter": arm.adapter, REQUEST_HEADER: request_id,
                   "x-ab-config-version": str(cfg.config_version)}
        t0 = time.perf_counter()
        forwarded = {**body, "model": arm.adapter}
        try:
            async with session().post(path, json=forwarded) as resp:
                status, raw = resp.status, await resp.read()
            payload = json.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, OSError) as exc:
            status, payload = 502, {"error": {"message": f"upstream failed: {type(exc).__name__}: {exc}"}}
        latency = time.perf_counter() - t0
        served = payload.get("model") if isinstance(payload, dict) else None
        record = {**base, "arm": arm.name, "adapter": arm.adapter, "response_model": served,
                  "latency_s": round(latency, 6)}
        if status != 200:
            message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else str(payload)
            state.metrics.requests.labels(*labels, "error").inc()
            state.write({**record, "status": "error", "upstream_status": status, "error": str(message)[:300]})
            state.observe(arm.name, False, latency)
            return _error(status if status >= 400 else 502,
                          f"arm '{arm.name}' (adapter '{arm.adapter}') failed upstream: {message}. The request was "
                          "not sent to another adapter.", "ab_arm_error", headers)
        if served != arm.adapter:
            state.metrics.requests.labels(*labels, "mismatch").inc()
            state.write({**record, "status": "mismatch"})
            state.observe(arm.name, False, latency)
            return _error(502, f"vLLM answered with model '{served}', not the assigned adapter '{arm.adapter}'; "
                          "the answer was withheld.", "ab_model_mismatch", headers)
        finish = ((payload.get("choices") or [{}])[0]).get("finish_reason")
        state.metrics.requests.labels(*labels, "ok").inc()
        state.metrics.latency.labels(*labels).observe(latency)
        state.metrics.finish.labels(*labels, str(finish)).inc()
        state.write({**record, "status": "ok", "finish_reason": finish})
        state.observe(arm.name, True, latency)
        return Response(raw, media_type="application/json", headers=headers)   # vLLM's bytes, not re-encoded

    async def chat(request: Request):
        return await route(request, "/v1/chat/completions")

    async def completions(request: Request):
        return await route(request, "/v1/completions")

    # the hot paths as plain Starlette routes: FastAPI's dependency solving per request is CPU taken from vLLM
    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])

    return app


def read_log(path: str | Path) -> list[dict]:
    """The router's JSONL log (requests and events)."""
    return io.read_jsonl(path) if Path(path).exists() else []


def requests_table(path: str | Path):
    """One row per routed request (events left out), as a DataFrame."""
    import pandas as pd

    return pd.DataFrame([r for r in read_log(path) if "event" not in r])


# --------------------------------------------------------------------------- as a process
class RouterServer(LoopbackServer):
    """``python -m helpers route`` as a loopback process: ``with RouterServer(cfg_path) as r: r.url``."""

    name = "ab-router"

    def __init__(self, config_path: str | Path, port: int | None = None, host: str = "127.0.0.1",
                 log_path: str | Path | None = None, profile: str = "mini", preflight: bool = True,
                 ledger: str | Path | None = None):
        config_path = Path(config_path)
        super().__init__(host, port, log_path or config_path.parent / f"router-{port or 'auto'}.log")
        self.config_path = config_path
        self.profile_name = profile
        self.preflight = preflight
        self.ledger = ledger

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "helpers", "route", "--profile", self.profile_name, "--config",
               str(self.config_path), "--port", str(self.port), "--host", self.host]
        if not self.preflight:
            cmd.append("--no-preflight")
        if self.ledger:
            cmd += ["--ledger", str(self.ledger)]
        return cmd

    def default_timeout(self) -> float:
        return 180

    def client(self, timeout: float = 120):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key="not-needed-on-loopback", timeout=timeout, max_retries=0)

    def state(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/ab/state", timeout=10).json()


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("route", help="A/B router: virtual model -> LoRA arms by sticky weights, per-arm metrics")
    profile_arg(p, profile)
    p.add_argument("--config", required=True, help="A/B config YAML (experiment, upstream, arms, guardrails)")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--ledger", default=None,
                   help="adapter-name ledger JSON (default: adapter_names.json beside the config)")
    p.add_argument("--no-preflight", action="store_true", help="skip the serving checks (tests of failures only)")
    p.set_defaults(func=cmd_route)


def cmd_route(args) -> int:
    import uvicorn

    cfg = load_config(args.config)
    if cfg.max_loras is None or cfg.max_lora_rank is None:   # the profile's serving limits unless the config says
        cfg = replace(cfg, max_loras=cfg.max_loras or args.profile.vllm.max_loras,
                      max_lora_rank=cfg.max_lora_rank or args.profile.vllm.max_lora_rank)
    if not args.no_preflight:
        ledger = args.ledger or Path(args.config).resolve().parent / "adapter_names.json"
        summary = preflight_live(cfg, ledger)
        print(f"Preflight ok: max_loras={summary['max_loras']}, max_lora_rank={summary['max_lora_rank']}, "
              f"adapters {', '.join(summary['adapters'])}", flush=True)
    app = create_app(args.config)
    print(f"A/B router for '{cfg.virtual_model}' on http://{args.host}:{args.port} -> {cfg.upstream} "
          f"(weights {cfg.weights}, log {log_path(cfg, args.config)})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
