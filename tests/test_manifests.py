import copy

import pytest

from helpers import manifests
from helpers.profiles import load_profile


@pytest.mark.parametrize("target", manifests.targets())
def test_every_target_renders_validates_and_follows_policy(target):
    docs = manifests.render(target)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "NetworkPolicy", "PersistentVolumeClaim",
                                          "ServiceMonitor"}
    for doc in docs:
        manifests.validate(doc)
    assert manifests.policy_problems(docs) == []


def _deployment(docs):
    return next(d for d in docs if d["kind"] == "Deployment")


def test_overlays_set_their_gpu_settings():
    t4 = _deployment(manifests.render("t4"))["spec"]["template"]["spec"]
    args = t4["containers"][0]["args"]
    assert "--dtype=float16" in args and "--quantization=awq" in args
    assert t4["nodeSelector"]["nvidia.com/gpu.product"] == "Tesla-T4"
    l4 = _deployment(manifests.render("l4"))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--dtype=bfloat16" in l4


def test_policy_catches_the_classic_mistakes():
    docs = copy.deepcopy(manifests.render("base"))
    dep = _deployment(docs)
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "vllm/vllm-openai:latest"
    del container["startupProbe"]
    container["env"] = [e for e in container["env"] if e["name"] != "HF_HUB_OFFLINE"]
    dep["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "fetch", "image": "amazon/aws-cli:2.17.0", "args": ["s3", "cp", "s3://bucket/adapter", "/a"]}]
    for doc in docs:
        if doc["kind"] == "NetworkPolicy" and doc["metadata"]["name"] == "default-deny-egress":
            doc["spec"]["egress"] = [{"to": [{"namespaceSelector": {}}]}]
    problems = "\n".join(manifests.policy_problems(docs))
    for expected in ("not pinned", "lacks startupProbe", "HF_HUB_OFFLINE", "public store", "every namespace"):
        assert expected in problems


def test_schema_validation_rejects_a_typo():
    dep = copy.deepcopy(_deployment(manifests.render("base")))
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolicyy"):
        manifests.validate(dep)


@pytest.mark.parametrize("target", sorted(manifests.PROFILE_OF))
def test_each_target_deploys_the_engine_of_the_profile_it_mirrors(target):
    assert manifests.profile_mismatches(manifests.render(target), load_profile(manifests.PROFILE_OF[target])) == []


def test_a_planted_flag_mismatch_is_reported():
    docs = copy.deepcopy(manifests.render("t4"))
    args = _deployment(docs)["spec"]["template"]["spec"]["containers"][0]["args"]
    args[args.index("--max-num-seqs=32")] = "--max-num-seqs=256"
    args.remove("--quantization=awq")
    problems = "\n".join(manifests.profile_mismatches(docs, load_profile("t4")))
    assert "--max-num-seqs: deployed '256', profile 't4' gives '32'" in problems
    assert "--quantization: deployed None, profile 't4' gives 'awq'" in problems
    assert manifests.profile_mismatches(manifests.render("lora"), load_profile("t4"))  # another profile differs
