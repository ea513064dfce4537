"""Manifests for LoRA serving (overlay ``lora``) and the Grafana dashboard, whose every vllm: metric name is
checked against a live server's /metrics."""

import copy

import pytest
import yaml

from helpers import dashboard, manifests, serve, servermetrics


def _deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def _vllm_args(args):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(args)


def lora_problems(docs):
    """Adapters must come from a read-only PersistentVolumeClaim, never from an init container."""
    problems = []
    pod = _deployment(docs)["spec"]["template"]["spec"]
    if pod.get("initContainers"):
        problems.append("init container present (adapters must not be fetched at pod start)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in pod["containers"][0].get("volumeMounts", [])}
    args = _vllm_args(pod["containers"][0]["args"])
    for module in args.lora_modules or []:
        mount = next((m for p, m in mounts.items() if module.path.startswith(p.rstrip("/") + "/")), None)
        if mount is None:
            problems.append(f"adapter {module.name}: {module.path} is on no mounted volume")
            continue
        volume = volumes[mount["name"]]
        if "persistentVolumeClaim" not in volume:
            problems.append(f"adapter {module.name}: volume {mount['name']} is not a PersistentVolumeClaim")
        if not mount.get("readOnly"):
            problems.append(f"adapter {module.name}: volume {mount['name']} is mounted writable")
    return problems


def test_lora_overlay_renders_validates_and_follows_policy():
    assert "lora" in manifests.targets()
    docs = manifests.render("lora")
    for doc in docs:
        manifests.validate(doc)
    assert manifests.policy_problems(docs) == []
    assert lora_problems(docs) == []
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} >= {("PersistentVolumeClaim", "lora-adapters"),
                                                                  ("PersistentVolumeClaim", "models")}


def test_lora_args_parse_with_vllms_own_parser():
    args = _vllm_args(_deployment(manifests.render("lora"))["spec"]["template"]["spec"]["containers"][0]["args"])
    assert args.enable_lora is True
    names = [m.name for m in args.lora_modules]
    assert names == ["fixed", "padbug"]  # one --lora-modules flag: a repeated flag would keep only the last
    assert all(m.path == f"/adapters/{m.name}" for m in args.lora_modules)
    assert args.max_loras >= len(names)
    assert args.max_lora_rank == 16  # the rank the course trains (profiles: lora.r)


def test_lora_policy_catches_an_init_container_and_a_non_pvc_volume():
    docs = copy.deepcopy(manifests.render("lora"))
    pod = _deployment(docs)["spec"]["template"]["spec"]
    pod["initContainers"] = [{"name": "fetch", "image": "amazon/aws-cli:2.17.0",
                              "args": ["s3", "cp", "s3://public-bucket/adapter", "/adapters/fixed"]}]
    for vol in pod["volumes"]:
        if vol["name"] == "adapters":
            vol.pop("persistentVolumeClaim")
            vol["emptyDir"] = {}
    problems = "\n".join(lora_problems(docs) + manifests.policy_problems(docs))
    assert "init container present" in problems
    assert "is not a PersistentVolumeClaim" in problems
    assert "public store (s3://)" in problems


def test_dashboard_is_valid_and_ships_as_a_configmap():
    dash = dashboard.load()
    assert dash["panels"] and all(p.get("targets") for p in dash["panels"])
    cm = dashboard.configmap()
    manifests.validate(cm)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    kust = yaml.safe_load((dashboard.DASHBOARD.parent / "kustomization.yaml").read_text())
    assert kust["configMapGenerator"][0]["files"] == [dashboard.DASHBOARD.name]
    names = dashboard.metric_names(dash)
    assert {"vllm:lora_requests_info", "vllm:request_success_total",
            "vllm:e2e_request_latency_seconds_bucket"} <= names


def test_metric_name_check_catches_a_renamed_metric():
    dash = {"panels": [{"targets": [{"expr": "max(vllm:gpu_cache_usage_perc)"},
                                    {"expr": "rate(vllm:generation_tokens_total[1m])"}]}]}
    exposed = {"vllm:kv_cache_usage_perc", "vllm:generation_tokens_total"}
    assert dashboard.missing_metrics(dash, exposed) == ["vllm:gpu_cache_usage_perc"]
    # family names are not enough: a counter is exposed as <name>_total
    assert dashboard.missing_metrics({"panels": [{"targets": [{"expr": "vllm:generation_tokens"}]}]},
                                     exposed) == ["vllm:generation_tokens"]


def test_every_dashboard_metric_exists_on_a_live_lora_server(lora_server):
    serve.ask(lora_server, [{"role": "user", "content": "Hallo"}], model="a", max_tokens=4)
    exposed = servermetrics.sample_names(servermetrics.parse_metrics(lora_server.metrics_text()))
    assert len(exposed) > 20
    missing = dashboard.missing_metrics(dashboard.load(), exposed)
    assert missing == [], f"dashboard queries metrics the server does not expose: {missing}"
