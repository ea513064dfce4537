"""Offline checks for the A/B deployment: the router overlay (``manifests/overlays/ab``), the equivalent Gateway
API Inference Extension resources (``manifests/gateway``) and the per-arm Grafana dashboard
(``manifests/grafana/ab-dashboard.json``).

* ``gie_problems``: the GIE resources against the fields of their CRDs (InferencePool v1,
  InferenceModelRewrite v1alpha2, HTTPRoute v1: required fields, enums, weight range 1..1e6) and against the
  overlay: the pool selects the vLLM pods, every rewrite target is an adapter the vLLM Deployment serves, the
  weights equal the router config's, and the route sends only the inference paths to the pool.
* ``exposure_problems``: runtime LoRA loading is never reachable: no Deployment enables
  ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``, vLLM's ingress admits only the router (and Prometheus), and the router
  app itself forwards no admin route.
* ``dashboard_metric_names``: the ``ab_router_*`` names the A/B dashboard queries (compared with a live
  router's ``/metrics`` in tests/test_router.py, like ``helpers.dashboard`` does for ``vllm:`` names).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from . import dashboard, manifests, paths

GATEWAY_DIR = paths.ROOT / "manifests" / "gateway"
AB_DASHBOARD = paths.ROOT / "manifests" / "grafana" / "ab-dashboard.json"
INFERENCE_PATHS = {"/v1/chat/completions", "/v1/completions"}
_AB_METRIC = re.compile(r"ab_router_[a-z_]*[a-z]")

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_PORT = {"type": "object", "required": ["number"], "additionalProperties": False,
         "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}}
# The fields the course uses, as the CRDs define them (types, required, enums, ranges).
SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): {
        "type": "object", "required": ["selector", "targetPorts", "endpointPickerRef"], "additionalProperties": False,
        "properties": {
            "selector": {"type": "object", "required": ["matchLabels"], "additionalProperties": False,
                         "properties": {"matchLabels": {"type": "object", "minProperties": 1,
                                                        "additionalProperties": {"type": "string", "maxLength": 63}}}},
            "targetPorts": {"type": "array", "minItems": 1, "maxItems": 1, "items": _PORT},
            "endpointPickerRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                  "properties": {"name": _NAME, "group": {"type": "string"}, "kind": {"type": "string"},
                                                 "port": _PORT, "failureMode": {"enum": ["FailOpen", "FailClose"]}}}}},
    ("inference.networking.x-k8s.io/v1alpha2", "InferenceModelRewrite"): {
        "type": "object", "required": ["poolRef", "rules"], "additionalProperties": False,
        "properties": {
            "poolRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                        "properties": {"name": _NAME, "group": {"type": "string"}, "kind": {"type": "string"}}},
            "rules": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "matches": {"type": "array", "items": {
                        "type": "object", "required": ["model"], "additionalProperties": False,
                        "properties": {"model": {"type": "object", "required": ["value"], "additionalProperties": False,
                                                 "properties": {"type": {"enum": ["Exact"]},
                                                                "value": {"type": "string", "minLength": 1}}}}}},
                    "targets": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["modelRewrite"], "additionalProperties": False,
                        "properties": {"modelRewrite": {"type": "string", "minLength": 1},
                                       "weight": {"type": "integer", "minimum": 1, "maximum": 1000000}}}}}}}}},
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): {
        "type": "object", "required": ["parentRefs", "rules"], "properties": {
            "parentRefs": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name"]}},
            "rules": {"type": "array", "items": {"type": "object", "properties": {
                "matches": {"type": "array", "items": {"type": "object", "properties": {
                    "path": {"type": "object", "properties": {
                        "type": {"enum": ["Exact", "PathPrefix", "RegularExpression"]}, "value": {"type": "string"}}}}}},
                "backendRefs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": _NAME, "group": {"type": "string"}, "kind": {"type": "string"},
                                   "weight": {"type": "integer", "minimum": 0, "maximum": 1000000}}}}}}}}},
}


def load_gateway(directory: Path = GATEWAY_DIR) -> list[dict]:
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    return [doc for res in kust["resources"] for doc in manifests.load_file(directory / res)]


def router_config(docs: list[dict]):
    """The ABConfig the overlay's ConfigMap ships."""
    from .router import ABConfig, Arm, Guardrails, validate

    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "ab-config")
    raw = yaml.safe_load(cm["data"]["ab.yaml"])
    return validate(ABConfig(experiment=raw["experiment"], virtual_model=raw["virtual_model"], upstream=raw["upstream"],
                             arms=tuple(Arm(**a) for a in raw["arms"]), config_version=raw["config_version"],
                             assignment_log=raw["assignment_log"], guardrails=Guardrails(**raw["guardrails"]),
                             max_loras=raw.get("max_loras"), max_lora_rank=raw.get("max_lora_rank")))


def _deployment(docs: list[dict], name: str) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)


def served_adapters(docs: list[dict]) -> dict[str, str]:
    """``--lora-modules`` of the vLLM Deployment: adapter name -> path."""
    args = _deployment(docs, "vllm")["spec"]["template"]["spec"]["containers"][0]["args"]
    i = args.index("--lora-modules")
    out = {}
    for a in args[i + 1:]:
        if a.startswith("--"):
            break
        name, _, path = a.partition("=")
        out[name] = path
    return out


def gie_problems(gateway_docs: list[dict], overlay_docs: list[dict]) -> list[str]:
    import jsonschema

    problems = []
    for doc in gateway_docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if key not in SCHEMAS:
            problems.append(f"{name}: unknown apiVersion/kind {key}")
            continue
        for err in jsonschema.Draft7Validator(SCHEMAS[key]).iter_errors(doc.get("spec", {})):
            problems.append(f"{name}: spec.{'.'.join(map(str, err.absolute_path))}: {err.message}")
    if problems:
        return problems
    pools = {d["metadata"]["name"]: d for d in gateway_docs if d["kind"] == "InferencePool"}
    vllm_labels = _deployment(overlay_docs, "vllm")["spec"]["template"]["metadata"]["labels"]
    vllm_port = _deployment(overlay_docs, "vllm")["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    for name, pool in pools.items():
        sel = pool["spec"]["selector"]["matchLabels"]
        if any(vllm_labels.get(k) != v for k, v in sel.items()):
            problems.append(f"InferencePool/{name}: selector {sel} does not select the vLLM pods ({vllm_labels})")
        if pool["spec"]["targetPorts"][0]["number"] != vllm_port:
            problems.append(f"InferencePool/{name}: targetPort is not vLLM's port {vllm_port}")
    adapters = served_adapters(overlay_docs)
    cfg = router_config(overlay_docs)
    for rw in (d for d in gateway_docs if d["kind"] == "InferenceModelRewrite"):
        rname = f"InferenceModelRewrite/{rw['metadata']['name']}"
        if rw["spec"]["poolRef"]["name"] not in pools:
            problems.append(f"{rname}: poolRef names no InferencePool here")
        for rule in rw["spec"]["rules"]:
            weights = {t["modelRewrite"]: t.get("weight") for t in rule["targets"]}
            missing = sorted(set(weights) - set(adapters))
            if missing:
                problems.append(f"{rname}: targets {missing} are not served by vLLM (--lora-modules {sorted(adapters)})")
            if len({w is None for w in weights.values()}) > 1:
                problems.append(f"{rname}: set a weight on every target or on none")
            values = {m["model"]["value"] for m in rule.get("matches", [])}
            if cfg.virtual_model in values:
                live = {a.adapter: a.weight for a in cfg.arms if a.weight > 0}
                if weights != live:
                    problems.append(f"{rname}: weights {weights} differ from the router config's {live}")
    for route in (d for d in gateway_docs if d["kind"] == "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            to_pool = [b for b in rule.get("backendRefs", []) if b.get("kind") == "InferencePool"]
            if not to_pool:
                continue
            if any(b["name"] not in pools for b in to_pool):
                problems.append(f"HTTPRoute/{route['metadata']['name']}: a backendRef names no InferencePool here")
            paths_ = [(m.get("path") or {}) for m in rule.get("matches") or [{}]]
            for p in paths_:
                if p.get("type") != "Exact" or p.get("value") not in INFERENCE_PATHS:
                    problems.append(f"HTTPRoute/{route['metadata']['name']}: routes {p or 'every path'} to the pool; "
                                    f"route only {sorted(INFERENCE_PATHS)} (Exact), never vLLM's admin routes")
    return problems


def exposure_problems(overlay_docs: list[dict], router_app=None) -> list[str]:
    """Ways a client could reach runtime LoRA loading or pick an adapter past the router."""
    problems = []
    for dep in (d for d in overlay_docs if d["kind"] == "Deployment"):
        for c in manifests.containers(dep):
            env = {e["name"]: str(e.get("value", "")) for e in c.get("env", [])}
            if env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").lower() in ("1", "true"):
                problems.append(f"Deployment/{dep['metadata']['name']}: VLLM_ALLOW_RUNTIME_LORA_UPDATING is on "
                                "(load/unload routes open to every caller that reaches the pod)")
    ingress = next(d for d in overlay_docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "vllm-ingress")
    for rule in ingress["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            pod = peer.get("podSelector")
            if pod is not None and "namespaceSelector" not in peer and \
                    pod.get("matchLabels", {}).get("app.kubernetes.io/name") != "ab-router":
                problems.append(f"NetworkPolicy/vllm-ingress: admits pods {pod or 'all'} besides the router: "
                                "clients could bypass the A/B split and vLLM's admin routes")
    for svc in (d for d in overlay_docs if d["kind"] == "Service"):
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service/{svc['metadata']['name']}: type {svc['spec']['type']} exposes it outside")
    if router_app is not None:
        routes = {getattr(r, "path", "") for r in router_app.routes}
        for r in sorted(routes):
            if "lora" in r.lower():
                problems.append(f"router forwards {r}")
    return problems


def dashboard_metric_names(path: str | Path = AB_DASHBOARD) -> set[str]:
    """The ``ab_router_*`` sample names the A/B dashboard queries."""
    return {n for q in dashboard.queries(dashboard.load(path)) for n in _AB_METRIC.findall(q["expr"])}
