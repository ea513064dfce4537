"""The course's steps as ONE graph, defined once with Hera: an Argo WorkflowTemplate for the cluster, and the
same dict for the local runner (``helpers.localrun``).

chunk → generate (sharded) → merge → qc → split → train → diagnose → evaluate → judge → gate → register → deploy.
Every task is the container command ``python -m helpers <step> ...`` with an explicit ``command`` (Argo's
emissary would otherwise ask the registry for the image's entrypoint, which an air-gapped cluster cannot), the
course image pinned, and all files on the PVC ``pipeline-data`` mounted at ``/data``. The Argo template also
carries, as annotations, the files each step reads and writes: the local runner caches and orders by them,
and the contract checks below compare them with the ``depends`` edges.

Nothing here needs a cluster: ``build(profile)`` makes the Hera object, ``export`` writes the YAML, and the
``*_problems`` functions walk the dict (graph contract, GPU placement, retries, hygiene).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import HelpersError
from .profiles import Profile

STEPS = ("chunk", "generate", "merge", "qc", "split", "train", "diagnose", "evaluate", "judge", "gate", "register",
         "deploy")
EXIT_HANDLER = "summary"
NAMESPACE = "souveraene-llms"
DATA = "/data"                       # the PVC pipeline-data
MODELS = "/models"                   # the PVC models (weights, read-only)
PVC_DATA, PVC_MODELS = "pipeline-data", "models"
SEMAPHORE = ("pipeline-gpu-semaphore", "gpu-steps")    # ConfigMap name, key: GPU steps at once
SERVICE_ACCOUNT = "souveraene-pipeline"
MODEL_NAME = "souveraene-qa"          # the registered model (MLflow) and the served adapter name's directory
EXPORT_DIR = paths.ROOT / "manifests" / "pipeline"
EXPORT_PROFILES = ("l4",)             # workflow YAMLs committed under manifests/pipeline/
ANN_IN, ANN_OPT, ANN_OUT, ANN_STATE, ANN_CLASS = (f"souveraene-llms/{k}" for k in
                                                  ("inputs", "optional-inputs", "outputs", "state", "class"))
SHARD = "{{inputs.parameters.shard}}"
JUDGE_PARAM = "{{workflow.parameters.judge}}"
# Retry policy per step class. GPU steps: a lost node or evicted pod is retried elsewhere with backoff (train
# and generate resume from checkpoints / progress files). Data and release steps: one retry on infra errors.
# The gate is deterministic: a fail must stay a fail, so it never retries.
RETRY = {
    "gpu": {"limit": 2, "policy": "OnError", "backoff": ("2m", 2, "30m"), "other_node": True},
    "data": {"limit": 1, "policy": "OnError", "backoff": ("30s", 2, "5m"), "other_node": False},
    "release": {"limit": 1, "policy": "OnError", "backoff": ("30s", 2, "5m"), "other_node": False},
    "gate": None,
}
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
       "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false", "HOME": "/tmp/home",
       "HF_HOME": f"{MODELS}/hf"}


class PipelineError(HelpersError, RuntimeError):
    pass


@dataclass(frozen=True)
class Step:
    """One task: its ``python -m helpers`` arguments and the files it reads and writes on the PVC."""
    name: str
    args: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()   # read when present (not produced in this graph, or by a skippable step)
    state: tuple[str, ...] = ()      # resume state: kept after a kill, removed when the inputs changed
    after: tuple[str, ...] = ()      # order-only edges (nothing passes on a file)
    kind: str = "data"               # gpu | data | gate | release
    shards: int | None = None        # fan-out: withSequence over {{inputs.parameters.shard}}
    when: str | None = None


def steps(profile: Profile) -> list[Step]:
    """The pipeline for one profile, in order. Paths are PVC paths (``/data/...``)."""
    p, d, n = profile.name, DATA, profile.pipeline.shards
    shard_out = f"{d}/generated/shard-{SHARD}.jsonl"
    limit = profile.dataset.generate_chunks
    judge_file, champion = f"{d}/eval/judge.jsonl", f"{d}/registry/champion.json"
    adapter = f"{d}/adapters/candidate"
    return [
        Step("chunk", ("chunk", "--profile", p, "--input", f"{d}/corpus", "--output", f"{d}/chunks.jsonl",
                       "--rejects", f"{d}/rejects/chunk.jsonl", "--no-progress"),
             inputs=(f"{d}/corpus",), outputs=(f"{d}/chunks.jsonl",)),
        Step("generate", ("generate", "--profile", p, "--chunks", f"{d}/chunks.jsonl", "--shard", f"{SHARD}/{n}",
                          *(("--limit", str(limit)) if limit else ()), "--output", shard_out,
                          "--rejects", f"{d}/rejects/generate-shard-{SHARD}.jsonl", "--resume", "--no-progress"),
             inputs=(f"{d}/chunks.jsonl",), outputs=(shard_out,), state=(f"{shard_out}.progress.jsonl",),
             kind="gpu", shards=n),
        Step("merge", ("merge", "--inputs", *(f"{d}/generated/shard-{i}.jsonl" for i in range(n)),
                       "--output", f"{d}/generated.jsonl", "--rejects", f"{d}/rejects/generate.jsonl"),
             inputs=tuple(f"{d}/generated/shard-{i}.jsonl" for i in range(n)), outputs=(f"{d}/generated.jsonl",)),
        Step("qc", ("qc", "--profile", p, "--input", f"{d}/generated.jsonl", "--output", f"{d}/accepted.jsonl",
                    "--rejects", f"{d}/rejects/qc.jsonl"),
             inputs=(f"{d}/generated.jsonl",), outputs=(f"{d}/accepted.jsonl",)),
        Step("split", ("split", "--input", f"{d}/accepted.jsonl", "--output-dir", f"{d}/splits",
                       "--rejects", f"{d}/rejects/split.jsonl"),
             inputs=(f"{d}/accepted.jsonl",), outputs=tuple(f"{d}/splits/{s}.jsonl" for s in ("train", "val", "eval"))),
        Step("train", ("train", "--profile", p, "--train", f"{d}/splits/train.jsonl", "--eval", f"{d}/splits/val.jsonl",
                       "--output", adapter, "--resume", "--tracking-uri", f"sqlite:///{d}/mlflow/mlflow.db",
                       "--experiment", "pipeline"),
             inputs=(f"{d}/splits/train.jsonl", f"{d}/splits/val.jsonl"), outputs=(adapter,),
             state=(f"{adapter}.checkpoints",), kind="gpu"),
        Step("diagnose", ("diagnose", "--profile", p, "--data", f"{d}/splits/train.jsonl", "--json"),
             inputs=(f"{d}/splits/train.jsonl",), after=("train",)),
        Step("evaluate", ("evaluate", "--profile", p, "--adapter", f"candidate={adapter}", "--eval",
                          f"{d}/splits/eval.jsonl", "--limit", str(profile.samples.eval_prompts),
                          "--output", f"{d}/eval/metrics.json", "--answers", f"{d}/eval/answers.jsonl",
                          "--no-progress"),
             inputs=(adapter, f"{d}/splits/eval.jsonl"), outputs=(f"{d}/eval/metrics.json", f"{d}/eval/answers.jsonl"),
             after=("diagnose",), kind="gpu"),
        Step("judge", ("judge", "--profile", p, "--input", f"{d}/eval/answers.jsonl", "--output", judge_file, "--no-base"),
             inputs=(f"{d}/eval/answers.jsonl",), outputs=(judge_file,), kind="gpu", when=f"{JUDGE_PARAM} != skip"),
        Step("gate", ("gate", "--profile", p, "--metrics", f"{d}/eval/metrics.json", "--variant", "candidate",
                      "--judge", judge_file, "--judge-policy", JUDGE_PARAM, "--champion", champion,
                      "--output", f"{d}/gate.json"),
             inputs=(f"{d}/eval/metrics.json",), optional=(judge_file,), outputs=(f"{d}/gate.json",),
             after=("judge",), kind="gate"),
        Step("register", ("register", "--gate", f"{d}/gate.json", "--adapter", adapter, "--store", f"{d}/mlflow",
                          "--name", MODEL_NAME, "--registry", f"{d}/registry"),
             inputs=(f"{d}/gate.json", adapter), outputs=(champion,), kind="release"),
        Step("deploy", ("deploy", "--champion", champion, "--repo", f"{d}/gitops", "--push"),
             inputs=(champion,), outputs=(f"{d}/gitops/{RELEASE_PATCH}",), kind="release"),
    ]


RELEASE_PATCH = "overlays/release/deployment-patch.yaml"   # the file `deploy` edits, relative to manifests/


def edges(step_list: list[Step]) -> dict[str, set[str]]:
    """task -> the tasks it depends on: the producer of every input, plus order-only edges."""
    producer = {out: s.name for s in step_list for out in s.outputs}
    for s in step_list:                      # a fan-out's outputs, expanded per shard
        if s.shards:
            for out in s.outputs:
                for i in range(s.shards):
                    producer[out.replace(SHARD, str(i))] = s.name
    return {s.name: {producer[i] for i in (*s.inputs, *s.optional) if i in producer and producer[i] != s.name}
            | set(s.after) for s in step_list}


# --------------------------------------------------------------------------- Hera
def _retry(kind: str):
    from hera.workflows import RetryStrategy, models as m

    rule = RETRY[kind]
    if rule is None:
        return None
    duration, factor, cap = rule["backoff"]
    affinity = m.RetryAffinity(node_anti_affinity=m.RetryNodeAntiAffinity()) if rule["other_node"] else None
    return RetryStrategy(limit=rule["limit"], retry_policy=rule["policy"], affinity=affinity,
                         backoff=m.Backoff(duration=duration, factor=factor, max_duration=cap))


def _container(step: Step, profile: Profile):
    from hera.workflows import Container, Env, Parameter, Resources, models as m

    ps = profile.pipeline
    gpu = step.kind == "gpu"
    mounts = [m.VolumeMount(name="data", mount_path=DATA), m.VolumeMount(name="tmp", mount_path="/tmp")]
    if gpu:
        mounts += [m.VolumeMount(name="models", mount_path=MODELS, read_only=True),
                   m.VolumeMount(name="shm", mount_path="/dev/shm")]
    annotations = {ANN_CLASS: step.kind, ANN_IN: json.dumps(list(step.inputs)),
                   ANN_OUT: json.dumps(list(step.outputs))}
    if step.optional:
        annotations[ANN_OPT] = json.dumps(list(step.optional))
    if step.state:
        annotations[ANN_STATE] = json.dumps(list(step.state))
    resources = (Resources(gpus=ps.gpus_per_step, cpu_request=ps.gpu_cpu, memory_request=ps.gpu_memory,
                           memory_limit=ps.gpu_memory) if gpu else
                 Resources(cpu_request="1", memory_request=ps.cpu_memory, memory_limit=ps.cpu_memory))
    return Container(
        name=step.name, image=ps.image, image_pull_policy="IfNotPresent",
        command=["python", "-m", "helpers"], args=list(step.args),
        inputs=[Parameter(name="shard")] if step.shards else None,
        env=[Env(name=k, value=v) for k, v in ENV.items()], resources=resources, volume_mounts=mounts,
        annotations=annotations, retry_strategy=_retry(step.kind),
        node_selector=dict(ps.gpu_node_selector) if gpu else None,
        tolerations=[m.Toleration(**t) for t in ps.gpu_tolerations] if gpu else None,
        synchronization=m.Synchronization(semaphores=[m.SemaphoreRef(config_map_key_ref=m.ConfigMapKeySelector(
            name=SEMAPHORE[0], key=SEMAPHORE[1]))]) if gpu else None,
        security_context=m.SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                                           capabilities=m.Capabilities(drop=["ALL"])),
    )


def build(profile: Profile, step_list: list[Step] | None = None, name: str | None = None):
    """The pipeline as a Hera ``WorkflowTemplate`` (one per profile: image, shards and placement differ).

    ``step_list`` and ``name`` exist for tests that run the runner's mechanics on a few cheap steps."""
    from hera.workflows import DAG, Container, Env, Parameter, Resources, Task, WorkflowTemplate, models as m

    ps = profile.pipeline
    step_list = step_list if step_list is not None else steps(profile)
    deps = edges(step_list)
    volumes = [m.Volume(name="data", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(claim_name=PVC_DATA)),
               m.Volume(name="models", persistent_volume_claim=m.PersistentVolumeClaimVolumeSource(
                   claim_name=PVC_MODELS, read_only=True)),
               m.Volume(name="shm", empty_dir=m.EmptyDirVolumeSource(medium="Memory", size_limit="8Gi")),
               m.Volume(name="tmp", empty_dir=m.EmptyDirVolumeSource(size_limit="20Gi"))]
    with WorkflowTemplate(
        name=name or f"souveraene-llms-pipeline-{profile.name}", namespace=NAMESPACE,
        labels={"app.kubernetes.io/part-of": "souveraene-llms", "souveraene-llms/profile": profile.name},
        entrypoint="pipeline", on_exit=EXIT_HANDLER,
        arguments=[Parameter(name="judge", value="required",
                             description="required: gate needs the judge's grades; skip: judge not run, logged by gate")],
        active_deadline_seconds=int(ps.deadline_hours * 3600),
        ttl_strategy=m.TTLStrategy(seconds_after_success=86400, seconds_after_failure=7 * 86400),
        pod_gc=m.PodGC(strategy="OnPodSuccess"),   # failed pods keep their logs (no artifact repository needed)
        service_account_name=SERVICE_ACCOUNT, automount_service_account_token=True,
        security_context=m.PodSecurityContext(run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
                                              seccomp_profile=m.SeccompProfile(type="RuntimeDefault")),
        volumes=volumes,
    ) as wt:
        templates = {s.name: _container(s, profile) for s in step_list}
        Container(name=EXIT_HANDLER, image=ps.image, image_pull_policy="IfNotPresent",
                  command=["python", "-m", "helpers"],
                  args=["pipeline", "report", "--run-dir", DATA, "--status", "{{workflow.status}}",
                        "--output", f"{DATA}/report.md"],
                  env=[Env(name=k, value=v) for k, v in ENV.items()],
                  resources=Resources(cpu_request="1", memory_request=ps.cpu_memory, memory_limit=ps.cpu_memory),
                  volume_mounts=[m.VolumeMount(name="data", mount_path=DATA), m.VolumeMount(name="tmp", mount_path="/tmp")],
                  annotations={ANN_CLASS: "data", ANN_IN: "[]", ANN_OUT: json.dumps([f"{DATA}/report.md"])},
                  retry_strategy=_retry("data"),
                  security_context=m.SecurityContext(allow_privilege_escalation=False, read_only_root_filesystem=True,
                                                     capabilities=m.Capabilities(drop=["ALL"])))
        with DAG(name="pipeline"):
            for s in step_list:
                Task(name=s.name, template=templates[s.name],
                     depends=" && ".join(sorted(deps[s.name], key=_rank)) or None, when=s.when,
                     with_sequence=m.Sequence(count=str(s.shards)) if s.shards else None,
                     arguments={"shard": "{{item}}"} if s.shards else None)
    return wt


def _rank(name: str) -> tuple[int, str]:
    return (STEPS.index(name) if name in STEPS else len(STEPS), name)


def workflow_dict(profile: Profile) -> dict:
    return build(profile).to_dict()


def export_path(profile_name: str) -> Path:
    return EXPORT_DIR / f"workflowtemplate-{profile_name}.yaml"


HEADER = ("# Generated by `python -m helpers pipeline export --profile {p}` from helpers/pipeline.py - do not edit by\n"
          "# hand (tests/test_pipeline.py compares it with the code and round-trips it through Hera).\n")


def to_yaml(profile: Profile) -> str:
    import yaml

    return HEADER.format(p=profile.name) + yaml.safe_dump(workflow_dict(profile), sort_keys=False, allow_unicode=True,
                                                          width=120)


def export(profile: Profile, path: str | Path | None = None) -> Path:
    from . import io

    return io.write_text(path or export_path(profile.name), to_yaml(profile))


def load_yaml(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def round_trip_problems(doc: dict) -> list[str]:
    """Keys Hera's models drop or change: ``WorkflowTemplate.from_dict(doc).to_dict()`` must equal ``doc``."""
    from hera.workflows import Workflow, WorkflowTemplate

    cls = WorkflowTemplate if doc.get("kind") == "WorkflowTemplate" else Workflow
    back = cls.from_dict(doc).to_dict()
    return [f"{path}: {why}" for path, why in _diff(doc, back, "")]


def _diff(a, b, where: str):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in b:
                yield f"{where}/{k}", "dropped by the round trip (unknown key?)"
            elif k not in a:
                yield f"{where}/{k}", "added by the round trip"
            else:
                yield from _diff(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diff(x, y, f"{where}/{i}")
    elif a != b:
        yield where, f"{a!r} became {b!r}"


# --------------------------------------------------------------------------- contract checks on the dict
def templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def dag_tasks(doc: dict) -> list[dict]:
    return templates(doc)[doc["spec"]["entrypoint"]]["dag"]["tasks"]


def task_edges(doc: dict) -> dict[str, set[str]]:
    """task -> tasks in its ``depends`` (plain names joined by &&, the only form this pipeline uses)."""
    out = {}
    for t in dag_tasks(doc):
        dep = t.get("depends") or ""
        out[t["name"]] = {x.strip() for x in dep.split("&&") if x.strip()}
    return out


def annotation(template: dict, key: str) -> list[str]:
    return json.loads(template.get("metadata", {}).get("annotations", {}).get(key, "[]"))


def topo_order(graph: dict[str, set[str]]) -> list[str]:
    """Kahn's algorithm in STEPS order; raises on a cycle or an edge to an unknown task."""
    for node, deps in graph.items():
        unknown = deps - set(graph)
        if unknown:
            raise PipelineError(f"task {node} depends on unknown task(s) {sorted(unknown)}")
    done: list[str] = []
    pending = dict(graph)
    while pending:
        ready = sorted((n for n, d in pending.items() if d <= set(done)), key=_rank)
        if not ready:
            raise PipelineError(f"the graph has a cycle among {sorted(pending)}")
        done.append(ready[0])
        del pending[ready[0]]
    return done


def graph_problems(doc: dict, plan: list[str] | None = None) -> list[str]:
    """Each step exactly once, references resolve, acyclic, edges = what the files imply (and = ``plan``)."""
    problems = []
    tpl = templates(doc)
    spec = doc["spec"]
    for ref, what in ((spec.get("entrypoint"), "entrypoint"), (spec.get("onExit"), "onExit")):
        if ref not in tpl:
            problems.append(f"{what} {ref!r} names no template")
    tasks = dag_tasks(doc) if spec.get("entrypoint") in tpl else []
    names = [t["name"] for t in tasks]
    commands = []
    for t in tasks:
        if t.get("template") not in tpl:
            problems.append(f"task {t['name']}: template {t.get('template')!r} does not exist")
            continue
        c = tpl[t["template"]].get("container", {})
        if c.get("command") != ["python", "-m", "helpers"]:
            problems.append(f"task {t['name']}: command {c.get('command')} is not the explicit `python -m helpers`")
        commands.append((c.get("args") or ["?"])[0])
    for step in STEPS:
        if commands.count(step) != 1:
            problems.append(f"subcommand {step} runs {commands.count(step)} times (must be exactly once)")
    extra = sorted(set(commands) - set(STEPS))
    if extra:
        problems.append(f"tasks run subcommands outside the pipeline: {extra}")
    graph = task_edges(doc) if tasks else {}
    try:
        order = topo_order(graph)
    except PipelineError as exc:
        return problems + [str(exc)]
    if plan is not None and plan != order:
        problems.append(f"the local runner's plan {plan} differs from the workflow's order {order}")
    # the files: every input must come from an upstream task (or be a declared source)
    producer = {}
    for t in tasks:
        for out in annotation(tpl.get(t["template"], {}), ANN_OUT):
            producer[out] = t["name"]
    upstream = {n: _ancestors(graph, n) for n in graph}
    for t in tasks:
        t_tpl = tpl.get(t["template"], {})
        for path in annotation(t_tpl, ANN_IN) + annotation(t_tpl, ANN_OPT):
            src = _producer_of(path, producer)
            if src and src != t["name"] and src not in upstream[t["name"]]:
                problems.append(f"task {t['name']} reads {path} from {src}, which it does not depend on")
    return problems


def _producer_of(path: str, producer: dict[str, str]) -> str | None:
    if path in producer:
        return producer[path]
    for out, task in producer.items():      # a sharded output stands for each shard's file
        if SHARD in out:
            head, tail = out.split(SHARD)
            if path.startswith(head) and path.endswith(tail) and path[len(head):len(path) - len(tail)].isdigit():
                return task
    return None


def _ancestors(graph: dict[str, set[str]], node: str) -> set[str]:
    seen, stack = set(), list(graph[node])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(graph.get(n, ()))
    return seen


def placement_problems(doc: dict, profile: Profile) -> list[str]:
    """GPU steps: nvidia.com/gpu requests = limits, the profile's nodeSelector and tolerations, the semaphore.
    CPU steps: no GPU, no GPU placement."""
    problems = []
    ps = profile.pipeline
    for name, t in templates(doc).items():
        if "container" not in t:
            continue
        res = t["container"].get("resources", {})
        req, lim = res.get("requests", {}).get("nvidia.com/gpu"), res.get("limits", {}).get("nvidia.com/gpu")
        kind = t.get("metadata", {}).get("annotations", {}).get(ANN_CLASS)
        if kind == "gpu":
            if req is None or req != lim or int(req) != ps.gpus_per_step:
                problems.append(f"{name}: nvidia.com/gpu requests {req} / limits {lim}, expected {ps.gpus_per_step} both")
            if t.get("nodeSelector") != ps.gpu_node_selector:
                problems.append(f"{name}: nodeSelector {t.get('nodeSelector')} is not the profile's {ps.gpu_node_selector}")
            if t.get("tolerations") != list(ps.gpu_tolerations):
                problems.append(f"{name}: tolerations {t.get('tolerations')} are not the profile's {ps.gpu_tolerations}")
            sems = t.get("synchronization", {}).get("semaphores", [])
            if not any(s.get("configMapKeyRef", {}).get("name") == SEMAPHORE[0] for s in sems):
                problems.append(f"{name}: GPU step without the concurrency semaphore {SEMAPHORE[0]}")
            if not any(mnt.get("mountPath") == "/dev/shm" for mnt in t["container"].get("volumeMounts", [])):
                problems.append(f"{name}: GPU step without a /dev/shm emptyDir")
        else:
            if req is not None or lim is not None:
                problems.append(f"{name}: a {kind} step requests nvidia.com/gpu")
            if t.get("nodeSelector") or t.get("tolerations"):
                problems.append(f"{name}: a {kind} step carries GPU placement (nodeSelector/tolerations)")
    return problems


def retry_problems(doc: dict) -> list[str]:
    """GPU steps retry on infra errors with backoff on another node; the gate never retries."""
    problems = []
    for name, t in templates(doc).items():
        if "container" not in t:
            continue
        kind = t.get("metadata", {}).get("annotations", {}).get(ANN_CLASS)
        rs = t.get("retryStrategy")
        if kind == "gate":
            if rs is not None:
                problems.append(f"{name}: the gate has a retryStrategy; a deterministic fail must not be retried")
            continue
        if not rs:
            problems.append(f"{name}: {kind} step without retryStrategy")
            continue
        if rs.get("retryPolicy") not in ("OnError", "OnTransientError"):
            problems.append(f"{name}: retryPolicy {rs.get('retryPolicy')!r} would also retry real failures")
        if "backoff" not in rs or int(rs.get("limit", 0)) < 1:
            problems.append(f"{name}: retries need a limit ≥ 1 and a backoff")
        if kind == "gpu" and "nodeAntiAffinity" not in rs.get("affinity", {}):
            problems.append(f"{name}: a GPU retry should go to another node (affinity.nodeAntiAffinity)")
    return problems


def hygiene_problems(doc: dict) -> list[str]:
    """Deadline, TTL, pod GC, exit handler, pinned image, non-root, no default service account."""
    spec = doc["spec"]
    problems = [f"spec.{k} is missing" for k in ("activeDeadlineSeconds", "ttlStrategy", "podGC", "onExit",
                                                  "serviceAccountName") if k not in spec]
    if not spec.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("spec.securityContext.runAsNonRoot is not set")
    for name, t in templates(doc).items():
        image = t.get("container", {}).get("image")
        if image is not None and not ("@sha256:" in image or (":" in image.rsplit("/", 1)[-1]
                                                              and not image.endswith(":latest"))):
            problems.append(f"{name}: image {image!r} is not pinned (tag or digest)")
    return problems


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("pipeline", help="the steps as an Argo WorkflowTemplate (export) or a local cached run")
    p.add_argument("action", choices=["export", "run", "report", "check"],
                   help="export: write manifests/pipeline/workflowtemplate-<profile>.yaml; run: the same graph "
                        "locally (cached, resumable); report: the run summary (also the workflow's exit handler); "
                        "check: the offline contract checks")
    profile_arg(p, profile)
    p.add_argument("--run-dir", default=None, help="run: the folder /data maps to; report: the folder to summarise")
    p.add_argument("--output", default=None, help="export: YAML path; report: Markdown path")
    p.add_argument("--workflow", default=None, help="run/check: a workflow YAML instead of the profile's graph")
    p.add_argument("--until", default=None, metavar="STEP", help="run: this step and what it needs")
    p.add_argument("--only", default=None, metavar="STEP", help="run: just this step (its inputs must exist)")
    p.add_argument("--force", action="append", default=[], metavar="STEP", help="run: rerun STEP even if cached")
    p.add_argument("--corpus", default=None, help="run: the folder /data/corpus maps to (default: the course corpus)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="run: a workflow parameter, e.g. judge=skip (logged by the gate)")
    p.add_argument("--status", default="Succeeded", help="report: the workflow status ({{workflow.status}})")
    p.set_defaults(func=cmd_pipeline)


def cmd_pipeline(args) -> int:
    from . import localrun

    if args.action == "export":
        print(f"wrote {export(args.profile, args.output)}")
        return 0
    if args.action == "report":
        run_dir = Path(args.run_dir or DATA)
        out = Path(args.output) if args.output else run_dir / "report.md"
        localrun.write_report(run_dir, args.status, out)
        print(f"report ({args.status}) -> {out}")
        return 0
    doc = load_yaml(args.workflow) if args.workflow else workflow_dict(args.profile)
    if args.action == "check":
        found = (round_trip_problems(doc) + graph_problems(doc) + placement_problems(doc, args.profile)
                 + retry_problems(doc) + hygiene_problems(doc))
        print("\n".join(found) or "workflow ok: round trip, graph contract, GPU placement, retries, hygiene")
        return 1 if found else 0
    if not args.run_dir:
        raise PipelineError("pipeline run needs --run-dir (the folder that stands for the PVC /data).")
    params = dict(kv.split("=", 1) for kv in args.set)
    result = localrun.run(doc, args.run_dir, params=params, until=args.until, only=args.only, force=args.force,
                          corpus=args.corpus)
    print(result.summary(steps=False))     # the steps were printed as they ran
    return 0 if result.ok else 1
