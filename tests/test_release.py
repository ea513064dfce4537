"""register (real MLflow registry, local sqlite store) and deploy (real git): idempotent registration, alias moves,
a deploy diff that touches only the champion's path, and a revert that restores the manifest byte for byte."""

import json
import subprocess

import pytest

from helpers import manifests, release
from helpers.pipeline import RELEASE_PATCH


def adapter(path, payload: bytes):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    (path / "adapter_model.safetensors").write_bytes(payload)
    return path


def gate_file(path, decision="pass", stop=0.95):
    path.write_text(json.dumps({"decision": decision, "judge_policy": "required",
                                "candidate": {"stop_rate": stop, "refusal": 0.6},
                                "metrics": [{"metric": "stop_rate", "value": stop}]}))
    return path


def test_register_refuses_a_failed_gate(tmp_path):
    with pytest.raises(release.ReleaseError, match="only an adapter that passed the gate"):
        release.register(gate_file(tmp_path / "g.json", "fail"), adapter(tmp_path / "a", b"x"), tmp_path / "mlflow",
                         tmp_path / "registry")


def test_register_is_idempotent_and_moves_the_alias(tmp_path):
    from mlflow.tracking import MlflowClient

    store, reg = tmp_path / "mlflow", tmp_path / "registry"
    g = gate_file(tmp_path / "g.json")
    one = release.register(g, adapter(tmp_path / "a1", b"one"), store, reg)
    assert one["version"] == 1 and one["previous"] is None and (reg / "souveraene-qa" / "v1" / "adapter_config.json").exists()
    with pytest.raises(release.ReleaseError, match="no `previous` version"):
        release.move_alias_back(store)                             # one version: nothing to roll back to
    again = release.register(g, tmp_path / "a1", store, reg)
    assert again["version"] == 1                                   # same content, same version
    two = release.register(gate_file(tmp_path / "g2.json", stop=0.97), adapter(tmp_path / "a2", b"two"), store, reg)
    assert two["version"] == 2 and two["previous"] == 1 and two["path"] == "/adapters/souveraene-qa/v2"
    uri = f"sqlite:///{store.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("souveraene-qa", "champion").version) == "2"
    assert client.get_model_version("souveraene-qa", "2").tags["metric.stop_rate"] == "0.9700"
    assert json.loads((reg / "champion.json").read_text())["version"] == 2
    assert release.move_alias_back(store) == 1
    assert str(client.get_model_version_by_alias("souveraene-qa", "champion").version) == "1"


def champion(tmp_path, version):
    path = tmp_path / f"champion-v{version}.json"
    path.write_text(json.dumps({"name": "souveraene-qa", "version": version, "alias": "champion",
                                "path": f"/adapters/souveraene-qa/v{version}", "adapter_sha256": "ab" * 32}))
    return path


def test_deploy_commits_only_the_adapter_reference_and_revert_restores_it(tmp_path):
    repo = tmp_path / "gitops"
    original = (manifests.MANIFEST_DIR / RELEASE_PATCH).read_bytes()
    same = release.deploy(champion(tmp_path, 1), repo)           # the overlay already points at v1
    assert same["changed"] is False
    out = release.deploy(champion(tmp_path, 2), repo)
    assert out["changed"] and out["was"] == "/adapters/souveraene-qa/v1" and not out["pushed"]
    diff = release.git(repo, "show", "--format=", "--unified=0", out["commit"])
    changed = [line for line in diff.splitlines() if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]
    assert changed == ["-  value: champion=/adapters/souveraene-qa/v1", "+  value: champion=/adapters/souveraene-qa/v2"]
    assert release.git(repo, "show", "--name-only", "--format=", out["commit"]).splitlines() == [RELEASE_PATCH]
    before = release.git(repo, "show", f"{out['commit']}~1:{RELEASE_PATCH}")
    after = (repo / RELEASE_PATCH).read_text()
    assert release.changed_paths(before, after) == release.allowed_change_paths(before) == {"/4/value"}
    back = release.rollback(repo)
    assert back["reverted"] == out["commit"] and back["path"] == "/adapters/souveraene-qa/v1"
    assert (repo / RELEASE_PATCH).read_bytes() == original           # byte for byte
    assert release.git(repo, "status", "--porcelain") == ""


def test_the_diff_check_catches_any_other_change():
    text = (manifests.MANIFEST_DIR / RELEASE_PATCH).read_text()
    other = text.replace("--max-loras=4", "--max-loras=8").replace("souveraene-qa/v1", "souveraene-qa/v2")
    assert release.changed_paths(text, other) - release.allowed_change_paths(text) == {"/2/value"}
    with pytest.raises(release.ReleaseError, match="exactly one"):
        release.champion_ref(text + "- op: add\n  value: champion=/x\n")


def test_deploy_pushes_to_origin_when_there_is_one(tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    repo = release.init_repo(tmp_path / "gitops")
    release.git(repo, "remote", "add", "origin", str(remote))
    release.git(repo, "push", "-q", "origin", "main")
    out = release.deploy(champion(tmp_path, 3), repo, push=True)
    assert out["pushed"] and release.git(remote, "rev-parse", "main") == out["commit"]


def test_the_release_overlay_serves_the_champion():
    dep = next(d for d in manifests.render("release") if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    args = spec["containers"][0]["args"]
    assert args[args.index("--lora-modules") + 1] == "champion=/adapters/souveraene-qa/v1"
    vol = next(v for v in spec["volumes"] if v["name"] == "adapters")
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "adapters")
    assert vol["persistentVolumeClaim"]["claimName"] == "pipeline-data" and mount["subPath"] == "registry"
    assert mount["readOnly"] is True
