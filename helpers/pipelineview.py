"""Notebook 10's view of the pipeline: the workflow drawn as a graph, excerpts of its templates, the cluster settings."""

from __future__ import annotations

import yaml

from .pipeline import ANN_CLASS, EXIT_HANDLER, dag_tasks, task_edges, templates, topo_order

COLORS = {"gpu": "#d95f02", "data": "#7570b3", "gate": "#e7298a", "release": "#1b9e77"}
GERMAN = {"gpu": "GPU-Schritt", "data": "CPU-Schritt", "gate": "Gate (ohne Retry)", "release": "Release"}


def step_classes(doc: dict) -> dict[str, str]:
    tpl = templates(doc)
    return {t: tpl[t].get("metadata", {}).get("annotations", {}).get(ANN_CLASS, "data") for t in task_edges(doc)}


def draw(doc: dict, ax=None, title: str | None = None):
    """The DAG left to right in topological layers (networkx), coloured by step class; an edge that skips layers
    (a file read further downstream, e.g. the adapter for register) is drawn as a dashed arc."""
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.patches import Patch

    edges = task_edges(doc)
    graph = nx.DiGraph([(dep, task) for task, deps in edges.items() for dep in deps])
    graph.add_nodes_from(edges)
    for layer, nodes in enumerate(nx.topological_generations(graph)):
        for node in nodes:
            graph.nodes[node]["layer"] = layer
    pos = nx.multipartite_layout(graph, subset_key="layer", align="vertical")
    pos = {n: (x, -y) for n, (x, y) in pos.items()}
    if ax is None:
        _, ax = plt.subplots(figsize=(14, 3.4))
    kinds = step_classes(doc)
    fans = {t["name"]: t["withSequence"]["count"] for t in dag_tasks(doc) if "withSequence" in t}
    layer = nx.get_node_attributes(graph, "layer")
    near = [(a, b) for a, b in graph.edges if layer[b] - layer[a] == 1]
    skip = [(a, b) for a, b in graph.edges if layer[b] - layer[a] > 1]
    common = dict(ax=ax, arrows=True, arrowsize=12, edge_color="#555", node_size=1900)
    nx.draw_networkx_edges(graph, pos, edgelist=near, **common)
    nx.draw_networkx_edges(graph, pos, edgelist=skip, connectionstyle="arc3,rad=-0.35", style="dashed", **common)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=1900, node_color=[COLORS[kinds[n]] for n in graph])
    labels = {n: f"{n}\n×{fans[n]}" if n in fans else n for n in graph}
    nx.draw_networkx_labels(graph, pos, labels=labels, ax=ax, font_size=7, font_color="white")
    ax.set_title(title or f"{doc['metadata']['name']}: {len(edges)} Tasks, onExit: {doc['spec'].get('onExit', EXIT_HANDLER)}")
    ax.legend(handles=[Patch(color=c, label=GERMAN[k]) for k, c in COLORS.items()], loc="lower right", fontsize=8)
    ax.axis("off")
    return ax


def order(doc: dict) -> list[str]:
    return topo_order(task_edges(doc))


def template_excerpt(doc: dict, name: str, keys=("nodeSelector", "tolerations", "retryStrategy", "synchronization")) -> str:
    """The cluster-relevant parts of one template (command, resources and the given keys) as YAML."""
    t = templates(doc)[name]
    c = t["container"]
    part = {"name": name, "image": c["image"], "command": c["command"], "args": c.get("args", [])[:4] + ["..."],
            "resources": c.get("resources", {})}
    part.update({k: t[k] for k in keys if k in t})
    if "retryStrategy" not in t:
        part["retryStrategy"] = None
    return yaml.safe_dump(part, sort_keys=False, allow_unicode=True, width=110)


def workflow_settings(doc: dict) -> str:
    spec = doc["spec"]
    keys = ("activeDeadlineSeconds", "ttlStrategy", "podGC", "onExit", "serviceAccountName", "arguments")
    return yaml.safe_dump({k: spec[k] for k in keys if k in spec}, sort_keys=False, allow_unicode=True, width=110)


def scale_to_zero_settings(profile) -> str:
    """What the cluster needs so GPU nodes exist only while GPU steps run (an assumption, outside Argo)."""
    ps = profile.pipeline
    labels = dict(ps.gpu_node_selector)
    taints = [f"{t['key']}={t.get('value', 'true')}:{t['effect']}" for t in ps.gpu_tolerations]
    asg_tags = {f"k8s.io/cluster-autoscaler/node-template/label/{k}": v for k, v in labels.items()}
    asg_tags.update({f"k8s.io/cluster-autoscaler/node-template/taint/{t['key']}": f"{t.get('value', 'true')}:{t['effect']}"
                     for t in ps.gpu_tolerations})
    asg_tags["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"] = str(ps.gpus_per_step)
    settings = {
        "gpu_node_group": {"minSize": 0, "maxSize": ps.gpu_concurrency, "labels": labels, "taints": taints,
                           "scale_from_zero_tags (EKS/ASG)": asg_tags},
        "cluster_autoscaler_flags": ["--scale-down-unneeded-time=10m", "--scale-down-delay-after-add=10m",
                                     "--expander=least-waste"],
        "karpenter_alternative (NodePool)": {
            "requirements": [{"key": k, "operator": "In", "values": [v]} for k, v in labels.items()],
            "taints": [{"key": t["key"], "value": t.get("value", "true"), "effect": t["effect"]} for t in ps.gpu_tolerations],
            "limits": {"nvidia.com/gpu": ps.gpu_concurrency * ps.gpus_per_step},
            "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": "10m"}},
        "pipeline_side (already in the workflow)": {"semaphore": f"{ps.gpu_concurrency} GPU steps at once",
                                                    "podGC": "OnPodSuccess", "ttlStrategy": "set"},
    }
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True, width=110)


def gate_result(run_dir) -> dict | None:
    """The gate's decision JSON of a run folder, or None when the gate did not run."""
    from pathlib import Path

    from . import io

    path = Path(run_dir) / "gate.json"
    return io.read_json(path) if path.exists() else None


def release_state(run_dir) -> str:
    """Registry and GitOps state after a run: champion record and the config repo's log, or why there is none."""
    import json
    from pathlib import Path

    from .release import git

    run_dir = Path(run_dir)
    champion, repo = run_dir / "registry" / "champion.json", run_dir / "gitops"
    if not champion.exists():
        return "kein Champion registriert: register ist nicht gelaufen (Gate abgelehnt oder Lauf vorher abgebrochen)"
    rec = json.loads(champion.read_text(encoding="utf-8"))
    lines = [f"Champion: {rec['name']} v{rec['version']} -> {rec['path']} (vorher: {rec['previous'] or '-'})"]
    if (repo / ".git").exists():
        lines += ["Config-Repo (git log):"] + ["  " + x for x in git(repo, "log", "--oneline").splitlines()]
    return "\n".join(lines)
