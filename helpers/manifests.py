"""Read, render and check the Kubernetes manifests under ``manifests/`` (offline, no cluster needed).

``render(overlay)`` applies the overlay's JSON patches to the base the way ``kubectl apply -k`` does for
the subset this course uses (resources + JSON6902 patches with a kind/name target), so tests and notebooks
can validate exactly what an overlay would deploy.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from . import paths

MANIFEST_DIR = paths.ROOT / "manifests"
K8S_VERSION = "1.31"
# The profile each deploy target mirrors: `helpers serve --profile <p>` and the target's Deployment must start
# the same engine (checked by tests/test_manifests.py through profile_mismatches).
PROFILE_OF = {"base": "l4", "l4": "l4", "t4": "t4", "lora": "l4", "release": "l4", "ab": "l4"}
# vLLM flags that come from the profile; the model path, names, host, port and adapter list do not.
PROFILE_FLAGS = ("dtype", "max-model-len", "max-num-seqs", "gpu-memory-utilization", "quantization",
                 "enforce-eager", "enable-lora", "max-lora-rank", "max-loras", "tensor-parallel-size")
CRD_KINDS = {"ServiceMonitor", "Workflow", "WorkflowTemplate", "PodMonitor", "PrometheusRule"}


def load_file(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc]


def _kustomization(directory: Path) -> dict:
    return load_file(directory / "kustomization.yaml")[0]


def render(target: str = "base") -> list[dict]:
    """All resources of ``base`` or ``overlays/<name>`` with the overlay's patches applied."""
    import jsonpatch

    directory = MANIFEST_DIR / target if target == "base" or "/" in target else MANIFEST_DIR / "overlays" / target
    kust = _kustomization(directory)
    docs: list[dict] = []
    for res in kust.get("resources", []):
        path = (directory / res).resolve()
        if path.is_dir():
            docs += render(str(path.relative_to(MANIFEST_DIR)))
        else:
            docs += load_file(path)
    docs = [copy.deepcopy(d) for d in docs]
    for patch in kust.get("patches", []):
        ops = load_file(directory / patch["path"])[0]
        tgt = patch["target"]
        hits = [d for d in docs if d["kind"] == tgt["kind"] and d["metadata"]["name"] == tgt["name"]]
        if not hits:
            raise ValueError(f"{directory}: patch {patch['path']} targets {tgt} which no resource matches")
        for doc in hits:
            docs[docs.index(doc)] = jsonpatch.apply_patch(doc, ops)
    return docs


def targets() -> list[str]:
    return ["base"] + sorted(p.name for p in (MANIFEST_DIR / "overlays").iterdir() if p.is_dir())


def validate(doc: dict, version: str = K8S_VERSION) -> None:
    """Schema-validate one resource offline (kubernetes-validate); CRDs get a structural check."""
    import kubernetes_validate

    if doc.get("kind") in CRD_KINDS:
        for key in ("apiVersion", "kind", "metadata", "spec"):
            if key not in doc:
                raise ValueError(f"{doc.get('kind')} {doc.get('metadata', {}).get('name')}: missing {key}")
        return
    kubernetes_validate.validate(doc, version, strict=True)


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec.get("jobTemplate", {}).get("spec", {})
                                        .get("template", {}).get("spec", {}))
    return list(pod.get("containers", [])) + list(pod.get("initContainers", []))


def policy_problems(docs: list[dict]) -> list[str]:
    """Course policy: pinned images, probes, resources, offline env, non-root, default-deny egress."""
    problems = []
    kinds = {d["kind"] for d in docs}
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        for c in containers(doc):
            image = c.get("image", "")
            tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
            if not tag or tag == "latest":
                problems.append(f"{name}: image '{image}' is not pinned to a version tag")
            if doc["kind"] == "Deployment":
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe not in c:
                        problems.append(f"{name}: container {c['name']} lacks {probe}")
                if "limits" not in c.get("resources", {}):
                    problems.append(f"{name}: container {c['name']} has no resource limits")
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                if env.get("HF_HUB_OFFLINE") != "1":
                    problems.append(f"{name}: HF_HUB_OFFLINE=1 not set")
            text = yaml.safe_dump(c)
            for marker in ("s3://", "amazonaws.com", "storage.googleapis.com", "huggingface.co"):
                if marker in text:
                    problems.append(f"{name}: container {c['name']} reaches a public store ({marker})")
        if doc["kind"] == "Deployment":
            sec = doc["spec"]["template"]["spec"].get("securityContext", {})
            if not sec.get("runAsNonRoot"):
                problems.append(f"{name}: runAsNonRoot is not set")
        if doc["kind"] == "NetworkPolicy":
            for rule in doc["spec"].get("egress", []) + doc["spec"].get("ingress", []):
                for peer in rule.get("to", []) + rule.get("from", []):
                    if peer.get("namespaceSelector") == {} or peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0":
                        problems.append(f"{name}: a peer allows every namespace/address")
    if "Deployment" in kinds:
        deny = [d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"].get("podSelector") == {}
                and "Egress" in d["spec"].get("policyTypes", [])]
        if not deny:
            problems.append("no default-deny egress NetworkPolicy (podSelector {} with policyTypes Egress)")
    return problems


def summary(target: str = "base"):
    """A table of what a target deploys (for the notebooks)."""
    import pandas as pd

    rows = []
    for doc in render(target):
        row = {"kind": doc["kind"], "name": doc["metadata"]["name"]}
        cs = containers(doc)
        if cs:
            row["image"] = cs[0].get("image")
            row["args"] = " ".join(a for a in cs[0].get("args", []) if a.startswith(("--model", "--dtype", "--max-model", "--quant")))
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- manifests vs. profiles
def flag_values(args: list[str]) -> dict[str, str | bool]:
    """``["--a=1", "--b", "2", "--c"]`` -> ``{"a": "1", "b": "2", "c": True}`` (both spellings of vLLM flags)."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if eq:
                out[name] = value
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                out[name] = args[i + 1]
                i += 1
            else:
                out[name] = True
        i += 1
    return out


def _same(a: str | bool | None, b: str | bool | None) -> bool:
    try:
        return float(a) == float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return a == b


def profile_mismatches(docs: list[dict], profile) -> list[str]:
    """Where the Deployment's vLLM flags differ from ``serve.engine_flags(profile)`` (model path excepted)."""
    from .serve import engine_flags

    dep = next(d for d in docs if d["kind"] == "Deployment")
    deployed = flag_values(dep["spec"]["template"]["spec"]["containers"][0].get("args", []))
    expected = flag_values(engine_flags(profile, enable_lora=bool(deployed.get("enable-lora"))))
    found = [f"--{flag}: deployed {deployed.get(flag)!r}, profile '{profile.name}' gives {expected.get(flag)!r}"
             for flag in PROFILE_FLAGS if not _same(deployed.get(flag), expected.get(flag))]
    if ("chat-template" in deployed) != ("chat-template" in expected):   # the path differs; presence must not
        found.append(f"--chat-template: deployed {deployed.get('chat-template')!r}, profile '{profile.name}' "
                     f"{'needs the course template' if 'chat-template' in expected else 'ships its own template'}")
    return found


def deployment_args(target: str = "lora") -> list[str]:
    """The vLLM container arguments a manifest target deploys (for the notebook)."""
    dep = next(d for d in render(target) if d["kind"] == "Deployment")
    return list(dep["spec"]["template"]["spec"]["containers"][0]["args"])


# --------------------------------------------------------------------------- checkov (static security checks)
CHECKOV_CONFIG = MANIFEST_DIR / ".checkov.yaml"   # the justified skip list


def checkov_bin() -> str | None:
    """checkov runs from its own venv (it pins packaging<24): $CHECKOV, .venv-tools/bin/checkov, or PATH."""
    import os
    import shutil

    for cand in (os.environ.get("CHECKOV"), str(paths.ROOT / ".venv-tools" / "bin" / "checkov"), shutil.which("checkov")):
        if cand and Path(cand).exists():
            return cand
    return None


def checkov_findings(directory: str | Path = MANIFEST_DIR, config: str | Path = CHECKOV_CONFIG) -> set[str]:
    """Failed checks as ``"CHECK_ID kind.namespace.name"`` (offline, with the committed skip list)."""
    import json
    import subprocess

    exe = checkov_bin()
    if exe is None:
        raise FileNotFoundError("checkov is not installed: scripts/setup_env.sh puts it into .venv-tools")
    proc = subprocess.run([exe, "-d", str(directory), "--config-file", str(config), "-o", "json", "--quiet",
                           "--compact"], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed ({proc.returncode}): {proc.stderr[-500:]}")
    reports = json.loads(proc.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    return {f"{c['check_id']} {c['resource']}" for r in reports for c in r.get("results", {}).get("failed_checks", [])}
