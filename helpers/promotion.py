"""Promotion and rollback of an A/B winner as one operation: the MLflow Model Registry alias ``champion`` and
the router's weights move together, and rollback puts both back exactly.

* ``register_adapter``: an adapter directory logged as run artifacts and registered as a model version
  (tags: adapter name, rank, dataset fingerprint). The registry holds *which* adapter is champion; vLLM
  serves the directory.
* ``promote``: alias ``champion`` -> the winner's version, the test's statistics as version tags, router
  weights winner 100 / others 0 (next ``config_version``; the running router re-reads its config). Before
  changing anything it saves a snapshot (alias, the tags it will overwrite, the config file's bytes).
* ``apply_outcome``: what a finished test does: "v1 wins" / "v2 wins" promotes that arm; "no decision" leaves
  production as it is, or, where a ``drill_arm`` is named, runs the same promotion as a drill (version tags
  ``drill=true`` and ``decision``) so promotion, retire and rollback are exercised on real parts every time.
* ``rollback``: from that snapshot, alias and tags back as they were and the config file byte for byte.
* Both are idempotent: promoting the current champion at 100 % changes nothing (and keeps the first
  snapshot); rolling back without a pending promotion changes nothing.

* ``retire``: after a grace period (requests already sent to the losing arm finish; the router assigns it no
  new ones), the adapters of the arms at weight 0 are unloaded from vLLM (``/v1/unload_lora_adapter``; the
  server runs with runtime adapter loading, on loopback only). The snapshot records name and path of each, and
  ``rollback`` loads them again *before* it restores the weights, so no request reaches a missing adapter.

An alias move alone does not change routing, and a weight change alone leaves the registry wrong; doing one
without the other is the failure this module exists to prevent.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

from . import io, router
from .errors import HelpersError

CHAMPION = "champion"


class PromotionError(HelpersError, RuntimeError):
    pass


def registry_client(tracking_uri: str):
    """An MLflow client whose tracking and model registry are the same store (post 09's and post 10's registry)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_registered_model(client, name: str, description: str | None = None) -> None:
    """Create the registered model ``name`` unless it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)


def alias_version(client, name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None where the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_adapter(tracking_uri: str, model_name: str, adapter_dir: str | Path, adapter_name: str,
                     experiment: str = "ab-adapters", tags: dict | None = None) -> str:
    """Log ``adapter_dir`` as artifacts of a new run and register it as the next version of ``model_name``.

    Returns the version (a string). The version carries ``adapter_name`` (the name vLLM serves it under).
    """
    from .adapters import adapter_rank, read_config
    from .training import adapter_info

    client = registry_client(tracking_uri)
    adapter_dir = Path(adapter_dir)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=adapter_name)
    client.log_artifacts(run.info.run_id, str(adapter_dir), "adapter")
    client.set_terminated(run.info.run_id)
    ensure_registered_model(client, model_name)
    info = adapter_info(adapter_dir) or {}
    vtags = {"adapter_name": adapter_name, "lora_rank": str(adapter_rank(read_config(adapter_dir))),
             "dataset_fingerprint": str(info.get("dataset_fingerprint", "")), **{k: str(v) for k, v in (tags or {}).items()}}
    mv = client.create_model_version(model_name, source=f"{run.info.artifact_uri}/adapter", run_id=run.info.run_id,
                                     tags=vtags)
    return str(mv.version)


def champion(tracking_uri: str, model_name: str) -> str | None:
    return alias_version(registry_client(tracking_uri), model_name, CHAMPION)


def set_champion(tracking_uri: str, model_name: str, version: str) -> None:
    """Point the ``champion`` alias at ``version`` (the starting state before a test; promotions use ``promote``)."""
    registry_client(tracking_uri).set_registered_model_alias(model_name, CHAMPION, str(version))


def registry_state(tracking_uri: str, model_name: str) -> dict:
    """Aliases and tags of every version: what promote/rollback must leave exactly as it found it."""
    client = registry_client(tracking_uri)
    model = client.get_registered_model(model_name)
    versions = client.search_model_versions(f"name='{model_name}'")
    return {"aliases": dict(sorted((model.aliases or {}).items())),
            "versions": {str(v.version): dict(sorted(v.tags.items())) for v in sorted(versions, key=lambda v: int(v.version))}}


def snapshot_path(config_path: str | Path) -> Path:
    return Path(config_path).with_suffix(".promotion.json")


def promote(tracking_uri: str, model_name: str, version: str, config_path: str | Path, arm: str,
            stats: dict | None = None) -> dict:
    """Make ``version`` the champion and send 100 % of traffic to ``arm``; idempotent. Returns what changed."""
    client = registry_client(tracking_uri)
    cfg = router.load_config(config_path)
    cfg.arm(arm)
    target = {a.name: (100 if a.name == arm else 0) for a in cfg.arms}
    current = champion(tracking_uri, model_name)
    tags = {k: str(v) for k, v in (stats or {}).items()}
    mv = client.get_model_version(model_name, str(version))
    if current == str(version) and cfg.weights == target and all(mv.tags.get(k) == v for k, v in tags.items()):
        return {"changed": False, "champion": current, "weights": cfg.weights}
    snap = snapshot_path(config_path)
    if not snap.exists():   # a second, partial promote keeps the state from before the first one
        io.write_json(snap, {"model": model_name, "version": str(version), "previous_champion": current,
                             "previous_tags": {k: mv.tags.get(k) for k in tags},
                             "config_b64": base64.b64encode(Path(config_path).read_bytes()).decode("ascii"),
                             "at": time.time()})
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    if cfg.weights != target:
        router.write_config(cfg.with_weights(target), config_path)
    return {"changed": True, "champion": str(version), "previous_champion": current, "weights": target}


def apply_outcome(tracking_uri: str, model_name: str, versions: dict[str, str], config_path: str | Path,
                  outcome: str, stats: dict | None = None, drill_arm: str | None = None) -> dict:
    """Apply a sequential test's ``outcome`` (``helpers.sequential``) to registry and router; ``versions`` maps each
    arm to its registered version. A win promotes the winning arm. Without a decision production stays as it is,
    unless ``drill_arm`` names an arm: then the same promotion runs as a drill, tagged ``drill=true`` and
    ``decision=<outcome>`` on the version, to be rolled back with ``rollback``. Idempotent like ``promote``."""
    from .sequential import V1_WINS, V2_WINS

    winner = {V1_WINS: "v1", V2_WINS: "v2"}.get(outcome)
    arm = winner or drill_arm
    if arm is None:
        return {"changed": False, "arm": None, "drill": False, "reason": f"{outcome}: traffic unchanged"}
    if arm not in versions:
        raise PromotionError(f"arm {arm!r} has no registered version (known: {sorted(versions)}); register its "
                             "adapter with promotion.register_adapter first.")
    tags = {**(stats or {}), "decision": outcome, "drill": str(winner is None).lower()}
    return {**promote(tracking_uri, model_name, versions[arm], config_path, arm, tags), "arm": arm,
            "drill": winner is None}


def _vllm_api(cfg: "router.ABConfig") -> str:
    """The OpenAI API root of the vLLM behind the router (its ``upstream``)."""
    return f"{cfg.upstream.rstrip('/')}/v1"


def retire(config_path: str | Path, grace_s: float = 30.0) -> dict:
    """Unload the adapters of the arms the pending promotion set to weight 0, once ``grace_s`` seconds have
    passed since it; idempotent. Returns {"unloaded": {adapter: path}, "waited_s": ...}."""
    from . import serve

    snap = snapshot_path(config_path)
    if not snap.exists():
        raise PromotionError(f"No pending promotion for {config_path}: retire follows `promote` (nothing to unload).")
    data = io.read_json(snap)
    cfg = router.load_config(config_path)
    base_url = _vllm_api(cfg)
    losers = {a.adapter for a in cfg.arms if a.weight == 0} - {a.adapter for a in cfg.arms if a.weight > 0}
    waited = max(0.0, data["at"] + grace_s - time.time())
    if waited:
        time.sleep(waited)
    served = serve.served_adapters(base_url)
    unloaded = dict(data.get("unloaded", {}))
    for adapter in sorted(losers):
        if adapter in served:
            unloaded[adapter] = served[adapter]
            data["unloaded"] = unloaded
            io.write_json(snap, data)          # recorded before the call: a rollback reloads it either way
            serve.lora_admin(base_url, "unload", adapter)
    return {"unloaded": unloaded, "waited_s": round(waited, 2), "served": sorted(serve.served_adapters(base_url))}


def rollback(tracking_uri: str, config_path: str | Path) -> dict:
    """Undo the pending promotion exactly (adapters reloaded, alias, tags, config bytes); a no-op when none is
    pending."""
    snap = snapshot_path(config_path)
    if not snap.exists():
        return {"changed": False}
    data = io.read_json(snap)
    if data.get("unloaded"):                  # serve the retired adapters again before traffic returns to them
        from . import serve

        base_url = _vllm_api(router.load_config(config_path))
        served = serve.served_adapters(base_url)
        for adapter, path in data["unloaded"].items():
            if adapter not in served:
                serve.lora_admin(base_url, "load", adapter, path)
    client = registry_client(tracking_uri)
    name, version = data["model"], data["version"]
    for key, old in data["previous_tags"].items():
        if old is None:
            client.delete_model_version_tag(name, version, key)
        else:
            client.set_model_version_tag(name, version, key, old)
    if data["previous_champion"] is None:
        client.delete_registered_model_alias(name, CHAMPION)
    else:
        client.set_registered_model_alias(name, CHAMPION, data["previous_champion"])
    io.write_text(config_path, base64.b64decode(data["config_b64"]).decode("utf-8"))
    snap.unlink()
    return {"changed": True, "champion": data["previous_champion"], "reloaded": sorted(data.get("unloaded", {}))}
