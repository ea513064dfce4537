"""`register` and `deploy`: the end of the pipeline, after the gate passed.

register: the adapter becomes a version of a registered model in the MLflow Model Registry (the local sqlite
store on the PVC, no server) and gets the alias ``champion`` (stages are deprecated since MLflow 2.9). The
adapter files are copied to ``<registry>/<name>/v<version>``; the version carries the adapter's content hash,
so registering the same adapter twice returns the same version. The former champion keeps the alias
``previous``. ``<registry>/champion.json`` records the result for ``deploy`` and for the next run's gate.

deploy: GitOps. The serving manifests live in a git repository (Argo CD syncs it); deploy edits ONE value,
the champion adapter's path in ``overlays/release/deployment-patch.yaml``, and commits. Rollback is
``git revert`` of that commit (under Argo CD auto-sync a rollback in the UI is refused, a revert is not), and
the alias moves back. Nothing else in the manifests can change: the diff is checked before committing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from . import io, paths, promotion
from .errors import HelpersError
from .pipeline import MODEL_NAME, RELEASE_PATCH

ALIAS, PREVIOUS = promotion.CHAMPION, "previous"
SERVING_ROOT = "/adapters"   # where the release overlay mounts <registry> (pipeline-data, subPath registry)
VALUE_RE = re.compile(r"^(?P<head>\s*value:\s*)champion=(?P<path>\S+)(?P<tail>.*)$", re.M)
GIT_ID = ["-c", "user.name=souveraene-llms pipeline", "-c", "user.email=pipeline@souveraene-llms.invalid"]


class ReleaseError(HelpersError, RuntimeError):
    pass


# --------------------------------------------------------------------------- register
def _client(store: str | Path):
    """The registry client for the pipeline's store folder (``<store>/mlflow.db``)."""
    Path(store).mkdir(parents=True, exist_ok=True)
    return promotion.registry_client(f"sqlite:///{Path(store).resolve() / 'mlflow.db'}")


def register(gate_path: str | Path, adapter: str | Path, store: str | Path, registry: str | Path,
             name: str = MODEL_NAME) -> dict:
    """Register the adapter (idempotent), set alias champion, write ``<registry>/champion.json``."""
    from .localrun import content_hash

    gate = io.read_json(gate_path)
    if gate.get("decision") != "pass":
        raise ReleaseError(f"{gate_path} says {gate.get('decision')!r}: only an adapter that passed the gate is "
                           "registered.")
    adapter, registry = Path(adapter), Path(registry)
    if not (adapter / "adapter_config.json").exists():
        raise ReleaseError(f"{adapter} is no adapter (no adapter_config.json); run `train` first.")
    sha = content_hash(adapter)
    client = _client(store)
    promotion.ensure_registered_model(client, name, "LoRA adapters of the course pipeline (post 10)")
    same = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("adapter_sha256") == sha]
    if same:
        version = same[0].version
    else:
        staging = registry / name / f".incoming-{sha[:12]}"
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(adapter, staging)
        mv = client.create_model_version(name, source=str(staging.resolve()), tags={
            "adapter_sha256": sha, "gate": gate["decision"], "judge_policy": gate.get("judge_policy", "")})
        version = mv.version
        target = registry / name / f"v{version}"
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        for row in gate.get("metrics", []):
            if row.get("value") is not None:
                client.set_model_version_tag(name, version, f"metric.{row['metric']}", f"{row['value']:.4f}")
    previous = promotion.alias_version(client, name, ALIAS)
    if previous is not None and str(previous) != str(version):
        client.set_registered_model_alias(name, PREVIOUS, previous)
    client.set_registered_model_alias(name, ALIAS, version)
    record = {"name": name, "version": int(version), "alias": ALIAS, "adapter_sha256": sha,
              "path": f"{SERVING_ROOT}/{name}/v{version}", "registry_path": str(registry / name / f"v{version}"),
              "previous": int(previous) if previous is not None and str(previous) != str(version) else None,
              "metrics": dict(gate.get("candidate", {}))}
    io.write_json(registry / "champion.json", record)
    return record


def move_alias_back(store: str | Path, name: str = MODEL_NAME) -> int:
    """Rollback in the registry: ``champion`` goes to the version under ``previous``."""
    client = _client(store)
    prev, cur = promotion.alias_version(client, name, PREVIOUS), promotion.alias_version(client, name, ALIAS)
    if prev is None or cur is None:
        raise ReleaseError(f"{name} has no `{PREVIOUS}` version to roll back to.")
    client.set_registered_model_alias(name, ALIAS, prev)
    client.set_registered_model_alias(name, PREVIOUS, cur)
    return int(prev)


# --------------------------------------------------------------------------- deploy (GitOps)
def git(repo: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(["git", *GIT_ID, "-C", str(repo), *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)} failed in {repo}: {proc.stderr.strip()[:400]}")
    return proc.stdout.strip()


def init_repo(repo: str | Path, source: str | Path | None = None) -> Path:
    """A config repository from the course's manifests (the first time only)."""
    repo = Path(repo)
    if (repo / ".git").exists():
        return repo
    shutil.copytree(Path(source or paths.ROOT / "manifests"), repo, dirs_exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "import the course's manifests")
    return repo


def champion_ref(text: str) -> str:
    found = VALUE_RE.findall(text)
    if len(found) != 1:
        raise ReleaseError(f"{RELEASE_PATCH} must hold exactly one `value: champion=PATH` line, found {len(found)}.")
    return VALUE_RE.search(text).group("path")


def allowed_change_paths(text: str) -> set[str]:
    """The only JSON paths deploy may change: the value of the op that carries ``champion=``."""
    ops = yaml.safe_load(text)
    return {f"/{i}/value" for i, op in enumerate(ops) if str(op.get("value", "")).startswith("champion=")}


def changed_paths(old: str, new: str) -> set[str]:
    from .pipeline import _diff

    return {path for path, _ in _diff(yaml.safe_load(old), yaml.safe_load(new), "")}


def deploy(champion_path: str | Path, repo: str | Path, push: bool = False) -> dict:
    """Point the release overlay at the champion and commit (no commit when it already points there)."""
    champion = io.read_json(champion_path)
    repo = init_repo(repo)
    patch = repo / RELEASE_PATCH
    old = patch.read_text(encoding="utf-8")
    current = champion_ref(old)
    if current == champion["path"]:
        return {"changed": False, "commit": git(repo, "rev-parse", "HEAD"), "path": current}
    new = VALUE_RE.sub(lambda m: f"{m.group('head')}champion={champion['path']}{m.group('tail')}", old)
    bad = changed_paths(old, new) - allowed_change_paths(old)
    if bad:
        raise ReleaseError(f"deploy would change {sorted(bad)} besides the champion's path; refusing.")
    io.write_text(patch, new)
    git(repo, "add", RELEASE_PATCH)
    git(repo, "commit", "-q", "-m", f"deploy {champion['name']} v{champion['version']} as {champion['alias']}",
        "-m", f"adapter {champion['path']} (sha256 {champion['adapter_sha256'][:12]}); was {current}")
    commit = git(repo, "rev-parse", "HEAD")
    pushed = False
    if push:
        if "origin" in git(repo, "remote").split():
            git(repo, "push", "-q", "origin", "HEAD")
            pushed = True
    return {"changed": True, "commit": commit, "path": champion["path"], "was": current, "pushed": pushed}


def rollback(repo: str | Path, store: str | Path | None = None, name: str = MODEL_NAME) -> dict:
    """``git revert`` of the newest deploy commit (plus the alias back, with ``store``)."""
    repo = Path(repo)
    log = git(repo, "log", "--format=%H %s", "--", RELEASE_PATCH).splitlines()
    deploys = [line.split(" ", 1)[0] for line in log if line.split(" ", 1)[1].startswith("deploy ")]
    if not deploys:
        raise ReleaseError(f"{repo} has no deploy commit to revert.")
    git(repo, "revert", "--no-edit", deploys[0])
    out = {"reverted": deploys[0], "commit": git(repo, "rev-parse", "HEAD"),
           "path": champion_ref((repo / RELEASE_PATCH).read_text(encoding="utf-8"))}
    if store:
        out["champion_version"] = move_alias_back(store, name)
    return out


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    p = sub.add_parser("register", help="MLflow Model Registry: adapter version + alias champion (after the gate)")
    p.add_argument("--gate", required=True, help="`gate` decision JSON (must say pass)")
    p.add_argument("--adapter", required=True, help="adapter directory")
    p.add_argument("--store", required=True, help="folder of the MLflow sqlite store (mlflow.db)")
    p.add_argument("--registry", required=True, help="folder for adapter versions and champion.json")
    p.add_argument("--name", default=MODEL_NAME, help="registered model name (default %(default)s)")
    p.set_defaults(func=cmd_register)
    d = sub.add_parser("deploy", help="GitOps: point the release overlay at the champion and commit (or --rollback)")
    d.add_argument("--repo", required=True, help="the config repository (created from manifests/ if missing)")
    d.add_argument("--champion", default=None, help="`register`'s champion.json")
    d.add_argument("--push", action="store_true", help="push to the remote `origin` when the repo has one")
    d.add_argument("--rollback", action="store_true", help="git revert the newest deploy commit")
    d.add_argument("--store", default=None, help="--rollback: also move the alias back in this MLflow store")
    d.add_argument("--name", default=MODEL_NAME)
    d.set_defaults(func=cmd_deploy)


def cmd_register(args) -> int:
    rec = register(args.gate, args.adapter, args.store, args.registry, args.name)
    prev = f", previous champion v{rec['previous']}" if rec["previous"] else ""
    print(f"registered {rec['name']} v{rec['version']} (alias {rec['alias']}{prev}) -> {rec['registry_path']}")
    return 0


def cmd_deploy(args) -> int:
    if args.rollback:
        out = rollback(args.repo, args.store, args.name)
        print(f"rolled back: reverted {out['reverted'][:10]}, serving {out['path']} (commit {out['commit'][:10]})")
        return 0
    if not args.champion:
        raise ReleaseError("deploy needs --champion (register's champion.json) or --rollback.")
    out = deploy(args.champion, args.repo, push=args.push)
    if not out["changed"]:
        print(f"deploy: {out['path']} is already deployed (commit {out['commit'][:10]}), nothing to commit")
    else:
        where = "pushed to origin" if out["pushed"] else "local commit (no remote `origin` to push to)"
        print(f"deploy: {out['was']} -> {out['path']}, commit {out['commit'][:10]} ({where})")
    return 0
