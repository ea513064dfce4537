"""The Indexed Job for sharded QA generation: valid Kubernetes, course policy, and args the CLI accepts."""

import re

from helpers import cli, generation, manifests

JOB_FILE = manifests.MANIFEST_DIR / "jobs" / "generate-indexed-job.yaml"


def _docs():
    return manifests.load_file(JOB_FILE)


def test_job_validates_and_follows_policy():
    docs = _docs()
    for doc in docs:
        manifests.validate(doc)
    assert manifests.policy_problems(docs) == []


def test_job_is_indexed_and_shards_match_completions():
    job = next(d for d in _docs() if d["kind"] == "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["restartPolicy"] == "Never"
    container = spec["template"]["spec"]["containers"][0]
    args = container["args"]
    shard = next(a for a in args if a.startswith("--shard="))
    assert shard == f"--shard=$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    assert "--resume" in args
    outputs = [a for a in args if a.startswith(("--output=", "--rejects="))]
    assert all("$(JOB_COMPLETION_INDEX)" in a for a in outputs)    # each pod writes its own files
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"models", "dataset"}


def test_cli_accepts_the_pod_arguments():
    job = next(d for d in _docs() if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"][3:] + [re.sub(r"\$\(JOB_COMPLETION_INDEX\)", "2", a) for a in container["args"]]
    args = cli.build_parser().parse_args(argv)
    assert args.func is generation.cmd_generate and args.shard == "2/4" and args.resume


def test_every_dataset_step_has_help(capsys):
    import pytest

    for step in ("pii", "chunk", "generate", "merge", "qc", "split"):
        with pytest.raises(SystemExit) as exc:
            cli.build_parser().parse_args([step, "--help"])
        assert exc.value.code == 0
        assert "usage: python -m helpers " + step in capsys.readouterr().out
