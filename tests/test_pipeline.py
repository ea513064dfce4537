"""The pipeline of post 10, checked offline: golden YAML, Hera round trip, graph contract, GPU placement, retries,
hygiene, checkov - each check with a fixture proving it can fail. The local runner's mechanics (cache, partial
rerun, resume after a kill, failure, missing input) run on a small graph of cheap real steps (chunk, qc, split)."""

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import localrun, manifests, paths, pipeline
from helpers.pipeline import DATA, Step
from helpers.profiles import load_profile

HERE = Path(__file__).parent
SNAPSHOT = HERE / "pipeline" / "checkov-failed.txt"
WORKFLOW_KINDS = {"Workflow", "WorkflowTemplate", "ClusterWorkflowTemplate", "CronWorkflow"}


def committed_workflows() -> list[Path]:
    out = []
    for path in sorted(manifests.MANIFEST_DIR.rglob("*.yaml")):
        docs = manifests.load_file(path)
        if any(isinstance(d, dict) and d.get("kind") in WORKFLOW_KINDS for d in docs):
            out.append(path)
    return out


@pytest.fixture(scope="module")
def l4():
    return load_profile("l4")


@pytest.fixture(scope="module")
def doc(l4):
    return pipeline.workflow_dict(l4)


# --------------------------------------------------------------------------- golden YAML and round trip
@pytest.mark.parametrize("name", pipeline.EXPORT_PROFILES)
def test_committed_yaml_is_what_the_code_builds(name):
    profile = load_profile(name)
    path = pipeline.export_path(name)
    if os.environ.get("UPDATE_GOLDEN") == "1" and not os.environ.get("CI"):
        pipeline.export(profile)
    assert path.exists(), f"{path} missing: UPDATE_GOLDEN=1 pytest {__file__} writes it"
    assert path.read_text(encoding="utf-8") == pipeline.to_yaml(profile), (
        f"{path} differs from helpers/pipeline.py: regenerate on purpose with UPDATE_GOLDEN=1 (or "
        f"`python -m helpers pipeline export --profile {name}`) and review the diff")


def test_every_committed_workflow_yaml_round_trips_through_hera():
    found = committed_workflows()
    assert {p.name for p in found} >= {f"workflowtemplate-{n}.yaml" for n in pipeline.EXPORT_PROFILES}
    for path in found:
        for d in manifests.load_file(path):
            assert pipeline.round_trip_problems(d) == [], path


def test_an_unknown_key_fails_the_round_trip(doc):
    bad = copy.deepcopy(doc)
    train = next(t for t in bad["spec"]["templates"] if t["name"] == "train")
    train["retryStratgy"] = train.pop("retryStrategy")          # a typo a schema check would not catch
    problems = pipeline.round_trip_problems(bad)
    assert any("retryStratgy" in p and "dropped" in p for p in problems), problems


# --------------------------------------------------------------------------- graph contract
def test_graph_contract_holds_and_matches_the_local_plan(doc, l4):
    plan = localrun.plan(doc)
    assert pipeline.graph_problems(doc, plan) == []
    assert sorted(plan) == sorted(pipeline.STEPS)
    assert pipeline.task_edges(doc) == pipeline.edges(pipeline.steps(l4))
    edges = pipeline.task_edges(doc)
    assert edges["chunk"] == set() and edges["gate"] == {"evaluate", "judge"}
    assert edges["register"] == {"gate", "train"} and edges["deploy"] == {"register"}


@pytest.mark.parametrize("breakage, expected", [
    ("drop_judge", "subcommand judge runs 0 times"),
    ("twice_qc", "subcommand qc runs 2 times"),
    ("cycle", "cycle"),
    ("dangling", "depends on unknown task"),
    ("template", "template 'nope' does not exist"),
    ("no_edge", "reads /data/accepted.jsonl from qc, which it does not depend on"),
    ("command", "is not the explicit `python -m helpers`"),
    ("exit", "onExit 'missing' names no template"),
])
def test_each_graph_rule_can_fail(doc, breakage, expected):
    bad = copy.deepcopy(doc)
    tasks = pipeline.dag_tasks(bad)
    by = {t["name"]: t for t in tasks}
    tpl = pipeline.templates(bad)
    if breakage == "drop_judge":
        tasks.remove(by["judge"])
        by["gate"]["depends"] = "evaluate"
    elif breakage == "twice_qc":
        tasks.append({**by["qc"], "name": "qc2"})
    elif breakage == "cycle":
        by["chunk"]["depends"] = "deploy"
    elif breakage == "dangling":
        by["qc"]["depends"] = "merge && ghost"
    elif breakage == "template":
        by["qc"]["template"] = "nope"
    elif breakage == "no_edge":
        by["split"].pop("depends")
    elif breakage == "command":
        tpl["qc"]["container"]["command"] = ["helpers"]
    elif breakage == "exit":
        bad["spec"]["onExit"] = "missing"
    problems = "\n".join(pipeline.graph_problems(bad))
    assert expected in problems, problems


def test_a_plan_that_differs_from_the_workflow_is_reported(doc):
    plan = localrun.plan(doc)
    swapped = plan[:]
    swapped[4], swapped[5] = swapped[5], swapped[4]
    assert "differs from the workflow's order" in "\n".join(pipeline.graph_problems(doc, swapped))


# --------------------------------------------------------------------------- placement, retries, hygiene
def test_gpu_steps_are_placed_and_cpu_steps_are_not(doc, l4):
    assert pipeline.placement_problems(doc, l4) == []
    tpl = pipeline.templates(doc)
    gpu = {n for n, t in tpl.items() if t.get("metadata", {}).get("annotations", {}).get(pipeline.ANN_CLASS) == "gpu"}
    assert gpu == {"generate", "train", "evaluate", "judge"}
    train = tpl["train"]
    assert train["container"]["resources"]["requests"]["nvidia.com/gpu"] == train["container"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert train["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert "nvidia.com/gpu" not in json.dumps(tpl["qc"]) and "nodeSelector" not in tpl["qc"]


@pytest.mark.parametrize("breakage, expected", [
    (lambda t: t["train"].pop("nodeSelector"), "train: nodeSelector None"),
    (lambda t: t["train"]["container"]["resources"]["limits"].update({"nvidia.com/gpu": "2"}), "train: nvidia.com/gpu requests 1 / limits 2"),
    (lambda t: t["evaluate"].pop("tolerations"), "evaluate: tolerations None"),
    (lambda t: t["generate"].pop("synchronization"), "generate: GPU step without the concurrency semaphore"),
    (lambda t: t["qc"]["container"].setdefault("resources", {}).setdefault("limits", {}).update({"nvidia.com/gpu": "1"}),
     "qc: a data step requests nvidia.com/gpu"),
    (lambda t: t["split"].update(nodeSelector={"nvidia.com/gpu.present": "true"}), "split: a data step carries GPU placement"),
])
def test_each_placement_rule_can_fail(doc, l4, breakage, expected):
    bad = copy.deepcopy(doc)
    breakage(pipeline.templates(bad))
    assert expected in "\n".join(pipeline.placement_problems(bad, l4))


def test_retries_by_step_class(doc):
    assert pipeline.retry_problems(doc) == []
    tpl = pipeline.templates(doc)
    assert "retryStrategy" not in tpl["gate"]
    assert tpl["train"]["retryStrategy"]["retryPolicy"] == "OnError"
    assert tpl["train"]["retryStrategy"]["affinity"] == {"nodeAntiAffinity": {}}
    assert int(tpl["generate"]["retryStrategy"]["limit"]) >= 1 and "backoff" in tpl["generate"]["retryStrategy"]


@pytest.mark.parametrize("breakage, expected", [
    (lambda t: t["gate"].update(retryStrategy={"limit": 1, "retryPolicy": "OnError"}), "the gate has a retryStrategy"),
    (lambda t: t["train"]["retryStrategy"].update(retryPolicy="Always"), "would also retry real failures"),
    (lambda t: t["generate"]["retryStrategy"].pop("backoff"), "need a limit ≥ 1 and a backoff"),
    (lambda t: t["qc"].pop("retryStrategy"), "qc: data step without retryStrategy"),
    (lambda t: t["evaluate"]["retryStrategy"].pop("affinity"), "another node"),
])
def test_each_retry_rule_can_fail(doc, breakage, expected):
    bad = copy.deepcopy(doc)
    breakage(pipeline.templates(bad))
    assert expected in "\n".join(pipeline.retry_problems(bad))


def test_hygiene_and_its_failures(doc):
    assert pipeline.hygiene_problems(doc) == []
    bad = copy.deepcopy(doc)
    for key in ("ttlStrategy", "podGC", "activeDeadlineSeconds"):
        bad["spec"].pop(key)
    pipeline.templates(bad)["qc"]["container"]["image"] = "ghcr.io/souveraene-llms/course:latest"
    problems = "\n".join(pipeline.hygiene_problems(bad))
    for expected in ("ttlStrategy", "podGC", "activeDeadlineSeconds", "is not pinned"):
        assert expected in problems


def test_the_semaphore_configmap_matches_the_profile(l4):
    cm = manifests.load_file(manifests.MANIFEST_DIR / "pipeline" / "configmap-gpu-semaphore.yaml")[0]
    assert cm["metadata"]["name"] == pipeline.SEMAPHORE[0]
    assert int(cm["data"][pipeline.SEMAPHORE[1]]) == l4.pipeline.gpu_concurrency


def test_pipeline_manifests_validate():
    for path in (manifests.MANIFEST_DIR / "pipeline").glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        for d in manifests.load_file(path):
            manifests.validate(d)


# --------------------------------------------------------------------------- checkov
def _snapshot() -> set[str]:
    return {line.strip() for line in SNAPSHOT.read_text().splitlines() if line.strip() and not line.startswith("#")}


needs_checkov = pytest.mark.skipif(manifests.checkov_bin() is None,
                                   reason="checkov not installed (scripts/setup_env.sh puts it into .venv-tools)")


@needs_checkov
def test_checkov_finds_exactly_the_known_findings():
    found = manifests.checkov_findings()
    assert found - _snapshot() == set(), "new checkov findings: fix them or justify a skip in manifests/.checkov.yaml"
    assert _snapshot() - found == set(), f"fixed findings: delete their lines from {SNAPSHOT}"


@needs_checkov
def test_checkov_reports_a_new_finding(tmp_path):
    shutil.copytree(manifests.MANIFEST_DIR, tmp_path / "m")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": "souveraene-llms"},
           "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "securityContext": {"privileged": True}}]}}
    (tmp_path / "m" / "debug-pod.yaml").write_text(yaml.safe_dump(pod))
    new = manifests.checkov_findings(tmp_path / "m") - _snapshot()
    assert "CKV_K8S_16 Pod.souveraene-llms.debug" in new        # privileged container


# --------------------------------------------------------------------------- the local runner
def tiny_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    src = sorted((paths.corpus_dir() / "it-betrieb").glob("*.md"))[:2]
    (corpus / "it-betrieb").mkdir(parents=True)
    for f in src:
        shutil.copy(f, corpus / "it-betrieb" / f.name)
    return corpus


def cheap_graph(profile, chunk_after_split: bool = False) -> dict:
    """chunk (corpus -> chunks), qc (a source file -> accepted), split (accepted -> splits): real steps."""
    d = DATA
    steps = [
        Step("chunk", ("chunk", "--profile", profile.name, "--input", f"{d}/corpus", "--output", f"{d}/chunks.jsonl",
                       "--no-progress"), inputs=(f"{d}/corpus",), outputs=(f"{d}/chunks.jsonl",),
             state=(f"{d}/chunk.state",), after=("split",) if chunk_after_split else ()),
        Step("qc", ("qc", "--profile", profile.name, "--input", f"{d}/generated.jsonl", "--output", f"{d}/accepted.jsonl"),
             inputs=(f"{d}/generated.jsonl",), outputs=(f"{d}/accepted.jsonl",), state=(f"{d}/qc.state",)),
        Step("split", ("split", "--input", f"{d}/accepted.jsonl", "--output-dir", f"{d}/splits"),
             inputs=(f"{d}/accepted.jsonl",), outputs=(f"{d}/splits/train.jsonl", f"{d}/splits/eval.jsonl")),
    ]
    return pipeline.build(profile, steps, name="cheap").to_dict()


@pytest.fixture()
def cheap(tmp_path):
    profile = load_profile("mini")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    gold = [json.loads(x) for x in (paths.data_dir() / "gold" / "qa_eval.jsonl").read_text().splitlines()[:12]]
    (run_dir / "generated.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in gold))
    return profile, run_dir, tiny_corpus(tmp_path)


def statuses(result) -> dict[str, str]:
    return {r["task"]: r["status"] for r in result.records}


def test_cache_partial_rerun_and_a_failing_step(cheap):
    profile, run_dir, corpus = cheap
    doc = cheap_graph(profile)
    first = localrun.run(doc, run_dir, corpus=corpus, echo=False)
    assert first.ok and statuses(first) == {"chunk": "ran", "qc": "ran", "split": "ran"}
    assert all((run_dir / p).exists() for p in ("chunks.jsonl", "accepted.jsonl", "splits/train.jsonl"))
    second = localrun.run(doc, run_dir, corpus=corpus, echo=False)
    assert statuses(second) == {"chunk": "cached", "qc": "cached", "split": "cached"}
    (run_dir / "generated.jsonl").touch()                     # same content: still cached
    assert statuses(localrun.run(doc, run_dir, corpus=corpus, echo=False))["qc"] == "cached"
    gen = run_dir / "generated.jsonl"
    gen.write_text("".join(gen.read_text().splitlines(keepends=True)[:-2]))   # one input changes
    third = localrun.run(doc, run_dir, corpus=corpus, echo=False)
    assert statuses(third) == {"chunk": "cached", "qc": "ran", "split": "ran"}
    broken = gen.read_text() + "{not json\n"                  # a failing step: qc rejects the file
    gen.write_text(broken)
    fourth = localrun.run(doc, run_dir, corpus=corpus, echo=False)
    assert not fourth.ok and fourth.failed == "qc" and "split" not in statuses(fourth)
    assert gen.read_text() == broken and "rerun the same command to resume" in fourth.message
    assert (run_dir / "report.md").exists() and "Abgebrochen bei `qc`" in (run_dir / "report.md").read_text()
    gen.write_text(broken.replace("{not json\n", ""))
    fifth = localrun.run(doc, run_dir, corpus=corpus, echo=False)
    assert statuses(fifth) == {"chunk": "cached", "qc": "cached", "split": "cached"}   # back to the cached content


def test_a_missing_input_names_the_step_that_produces_it(cheap):
    profile, run_dir, corpus = cheap
    result = localrun.run(cheap_graph(profile), run_dir, only="split", corpus=corpus, echo=False)
    assert not result.ok
    assert "input /data/accepted.jsonl" in result.message and "produced by step `qc`" in result.message
    assert "--until qc" in result.message


def test_until_runs_a_step_with_what_it_needs(cheap):
    profile, run_dir, corpus = cheap
    result = localrun.run(cheap_graph(profile), run_dir, until="split", corpus=corpus, echo=False)
    assert statuses(result) == {"qc": "ran", "split": "ran"}


def test_resume_after_a_kill(cheap):
    profile, run_dir, corpus = cheap
    doc = cheap_graph(profile, chunk_after_split=True)          # order: qc, split, chunk (the slow one last)
    wf = run_dir.parent / "wf.yaml"
    wf.write_text(yaml.safe_dump(doc))
    cmd = [sys.executable, "-m", "helpers", "pipeline", "run", "--workflow", str(wf), "--run-dir", str(run_dir),
           "--corpus", str(corpus)]
    proc = subprocess.Popen(cmd, cwd=paths.ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    attempt = run_dir / localrun.STATE_DIR / "steps" / "chunk.attempt"
    deadline = time.time() + 120
    while not attempt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert attempt.exists(), "chunk never started"
    os.killpg(proc.pid, signal.SIGKILL)                          # runner and step, like a lost node
    proc.wait()
    assert not (run_dir / localrun.STATE_DIR / "steps" / "chunk.json").exists()
    (run_dir / "chunk.state").write_text("resume state of the interrupted try")
    again = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = {line.split()[0]: line.split()[1] for line in again.stdout.splitlines() if line.split()[:1] in
             (["qc"], ["split"], ["chunk"])}
    assert lines == {"qc": "cached", "split": "cached", "chunk": "ran"}
    assert (run_dir / "chunk.state").exists()                   # same inputs: resume state kept


def test_resume_state_is_dropped_when_the_inputs_changed(cheap):
    profile, run_dir, corpus = cheap
    doc = cheap_graph(profile)
    runner = localrun.Runner(doc, run_dir, corpus=corpus, echo=False)
    inv = runner.invocations["qc"][0]
    attempt = runner.state_dir / "qc.attempt"
    attempt.parent.mkdir(parents=True)
    attempt.write_text("key-of-an-older-input")
    (run_dir / "qc.state").write_text("stale")
    runner.execute(inv, runner.key(inv))
    assert not (run_dir / "qc.state").exists() and not attempt.exists()


def test_a_step_without_its_subcommand_fails_clearly(cheap):
    profile, run_dir, corpus = cheap
    d = DATA
    ghost = Step("judge", ("judge-v0", "--input", f"{d}/generated.jsonl", "--output", f"{d}/j.json"),
                 inputs=(f"{d}/generated.jsonl",), outputs=(f"{d}/j.json",))
    result = localrun.run(pipeline.build(profile, [ghost], name="g").to_dict(), run_dir, corpus=corpus, echo=False)
    assert not result.ok and "no subcommand `judge-v0`" in result.message and not (run_dir / "j.json").exists()


def test_the_judge_step_is_never_faked(tmp_path):
    if "judge" in localrun._registered_subcommands():
        pytest.skip("`helpers judge` is registered in this checkout: the pipeline runs the real judge")
    doc = pipeline.workflow_dict(load_profile("mini"))
    runner = localrun.Runner(doc, tmp_path, echo=False)
    inv = runner.invocations["judge"][0]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "answers.jsonl").write_text("{}\n")
    with pytest.raises(pipeline.PipelineError, match="no subcommand `judge`.*--set judge=skip"):
        runner.execute(inv, runner.key(inv))
    assert not (tmp_path / "eval" / "judge.jsonl").exists()


def test_judge_skip_is_an_explicit_parameter(doc):
    runner_params = localrun.workflow_params(doc, {"judge": "skip"})
    inv = localrun.expand(doc, runner_params)
    assert inv["judge"][0].when == "skip != skip" and not localrun.evaluate_when(inv["judge"][0].when)
    assert "--judge-policy" in inv["gate"][0].argv and inv["gate"][0].argv[inv["gate"][0].argv.index("--judge-policy") + 1] == "skip"
    assert localrun.evaluate_when(localrun.expand(doc, localrun.workflow_params(doc))["judge"][0].when)
    with pytest.raises(pipeline.PipelineError, match="unknown workflow parameter"):
        localrun.workflow_params(doc, {"jugde": "skip"})


def test_shards_fan_out_and_paths_map_to_the_run_folder(doc, tmp_path):
    inv = localrun.expand(doc, localrun.workflow_params(doc))["generate"]
    assert [i.label for i in inv] == [f"generate[{k}]" for k in range(4)]
    assert "2/4" in inv[2].argv and f"{DATA}/generated/shard-2.jsonl" in inv[2].outputs
    m = localrun.path_map(tmp_path)
    assert localrun.to_local("sqlite:////data/mlflow/mlflow.db", m) == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert localrun.to_local("candidate=/data/adapters/x", m) == f"candidate={tmp_path.resolve()}/adapters/x"
    assert localrun.to_local("/data/corpus", m) == str(paths.corpus_dir().resolve())
    assert localrun.to_local("/database", m) == "/database"


def test_register_and_deploy_run_as_graph_steps(tmp_path):
    """The real graph's last two tasks with their mapped paths: MLflow store, registry and GitOps repo in the run."""
    from helpers import release

    doc = pipeline.workflow_dict(load_profile("mini"))
    run_dir = tmp_path / "run"
    (run_dir / "adapters" / "candidate").mkdir(parents=True)
    (run_dir / "adapters" / "candidate" / "adapter_config.json").write_text('{"r": 16}')
    (run_dir / "gate.json").write_text(json.dumps({"decision": "pass", "candidate": {"stop_rate": 1.0}, "metrics": []}))
    for version in (1, 2):
        (run_dir / "adapters" / "candidate" / "adapter_model.safetensors").write_bytes(f"weights {version}".encode())
        for step in ("register", "deploy"):
            result = localrun.run(doc, run_dir, only=step, echo=False)
            assert result.ok, result.message
        champion = json.loads((run_dir / "registry" / "champion.json").read_text())
        assert champion["version"] == version
        patch = (run_dir / "gitops" / pipeline.RELEASE_PATCH).read_text()
        assert release.champion_ref(patch) == f"/adapters/souveraene-qa/v{version}"
    log = release.git(run_dir / "gitops", "log", "--format=%s").splitlines()
    assert log == ["deploy souveraene-qa v2 as champion", "import the course's manifests"]   # v1 was already there
    assert (run_dir / "mlflow" / "mlflow.db").exists()
