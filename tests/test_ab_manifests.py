"""The A/B deployment offline: the router overlay renders, validates and follows policy; runtime LoRA loading
is never reachable; the Gateway API Inference Extension resources match their CRDs' fields and the overlay
(same adapters, same weights as the router config); each check catches the mistake it exists for."""

import copy

import pytest

from helpers import abmanifests, manifests, router


@pytest.fixture(scope="module")
def overlay():
    return manifests.render("ab")


def test_ab_overlay_serves_both_versioned_adapters_behind_the_router(overlay):
    for doc in overlay:
        manifests.validate(doc)
    assert manifests.policy_problems(overlay) == []
    assert abmanifests.served_adapters(overlay) == {"faq-v1": "/adapters/faq-v1", "faq-v2": "/adapters/faq-v2"}
    flags = manifests.flag_values(manifests.deployment_args("ab"))
    assert int(flags["max-loras"]) >= 2 and flags["max-lora-rank"] == "16"
    cfg = abmanifests.router_config(overlay)
    assert {a.adapter for a in cfg.arms} == set(abmanifests.served_adapters(overlay))
    assert cfg.upstream == "http://vllm:8000" and cfg.max_loras == int(flags["max-loras"])
    svc = next(d for d in overlay if d["kind"] == "Service" and d["metadata"]["name"] == "ab-router")
    dep = next(d for d in overlay if d["kind"] == "Deployment" and d["metadata"]["name"] == "ab-router")
    assert set(svc["spec"]["selector"].items()) <= set(dep["spec"]["template"]["metadata"]["labels"].items())
    args = manifests.flag_values(dep["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args["config"] == "/etc/ab/ab.yaml" and args["port"] == "8100"


def test_runtime_lora_loading_is_never_reachable(overlay, tmp_path):
    cfg_path = router.write_config(abmanifests.router_config(overlay), tmp_path / "ab.yaml")
    app = router.create_app(cfg_path)
    assert abmanifests.exposure_problems(overlay, app) == []
    bad = copy.deepcopy(overlay)
    vllm = next(d for d in bad if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm")
    vllm["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})
    ingress = next(d for d in bad if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "vllm-ingress")
    ingress["spec"]["ingress"][0]["from"].append({"podSelector": {}})
    next(d for d in bad if d["kind"] == "Service" and d["metadata"]["name"] == "vllm")["spec"]["type"] = "LoadBalancer"
    problems = "\n".join(abmanifests.exposure_problems(bad))
    for expected in ("VLLM_ALLOW_RUNTIME_LORA_UPDATING is on", "besides the router", "LoadBalancer"):
        assert expected in problems


def test_gateway_inference_extension_resources_match_the_crds_and_the_router(overlay):
    gw = abmanifests.load_gateway()
    assert {d["kind"] for d in gw} == {"InferencePool", "InferenceModelRewrite", "HTTPRoute"}
    assert abmanifests.gie_problems(gw, overlay) == []


@pytest.mark.parametrize("mutate, expected", [
    (lambda gw: _kind(gw, "InferenceModelRewrite")["spec"]["rules"][0]["targets"][0].update(weight=0),
     "less than the minimum of 1"),
    (lambda gw: _kind(gw, "InferenceModelRewrite")["spec"]["rules"][0]["targets"][1].update(modelRewrite="faq-v3"),
     "not served by vLLM"),
    (lambda gw: _kind(gw, "InferenceModelRewrite")["spec"]["rules"][0]["targets"][1].update(weight=90),
     "differ from the router config"),
    (lambda gw: _kind(gw, "InferenceModelRewrite")["spec"]["rules"][0]["targets"][1].pop("weight"),
     "on every target or on none"),
    (lambda gw: _kind(gw, "InferenceModelRewrite")["spec"]["rules"][0]["matches"][0]["model"].update(type="Prefix"),
     "is not one of ['Exact']"),
    (lambda gw: _kind(gw, "InferencePool")["spec"].pop("targetPorts"), "'targetPorts' is a required property"),
    (lambda gw: _kind(gw, "InferencePool")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "x"}),
     "does not select the vLLM pods"),
    (lambda gw: _kind(gw, "HTTPRoute")["spec"]["rules"][0].update(matches=[{"path": {"type": "PathPrefix", "value": "/v1"}}]),
     "never vLLM's admin routes"),
])
def test_gie_checks_catch_each_mistake(overlay, mutate, expected):
    gw = copy.deepcopy(abmanifests.load_gateway())
    mutate(gw)
    assert expected in "\n".join(abmanifests.gie_problems(gw, overlay))


def _kind(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


def test_ab_dashboard_ships_beside_the_vllm_dashboard_and_queries_only_router_metrics():
    import yaml

    kust = yaml.safe_load((abmanifests.AB_DASHBOARD.parent / "kustomization.yaml").read_text())
    assert {"name": "ab-dashboard", "files": [abmanifests.AB_DASHBOARD.name]} in kust["configMapGenerator"]
    names = abmanifests.dashboard_metric_names()
    assert names <= set(router.METRIC_NAMES)      # live names: tests/test_router.py scrapes a running router
    assert {"ab_router_requests_total", "ab_router_request_latency_seconds_bucket", "ab_router_finish_total"} <= names
