"""The Grafana dashboard for vLLM (``manifests/grafana/vllm-dashboard.json``): its queries, the metric names
they use, the ConfigMap that ships it, and a check of those names against what a live server exposes.

A dashboard whose query names a metric the server does not export shows an empty panel and no error;
vLLM renamed several series between releases (e.g. ``gpu_cache_usage_perc`` -> ``kv_cache_usage_perc``).
So every ``vllm:`` name in the dashboard is compared with the sample names of a real ``/metrics`` page.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import paths

DASHBOARD = paths.ROOT / "manifests" / "grafana" / "vllm-dashboard.json"
_METRIC = re.compile(r"vllm:[A-Za-z0-9_:]*[A-Za-z0-9_]")


def load(path: str | Path = DASHBOARD) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def queries(dashboard: dict) -> list[dict]:
    """Every PromQL expression of the dashboard (panels and template variables) with its panel title."""
    out = []
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append({"panel": panel.get("title"), "legend": target.get("legendFormat", ""),
                            "expr": target["expr"]})
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query" and isinstance(var.get("query"), str):
            out.append({"panel": f"variable ${var['name']}", "legend": "", "expr": var["query"]})
    return out


def metric_names(dashboard: dict) -> set[str]:
    """The ``vllm:`` sample names the dashboard queries (exactly as written, e.g. ``..._total``, ``..._bucket``)."""
    return {name for q in queries(dashboard) for name in _METRIC.findall(q["expr"])}


def missing_metrics(dashboard: dict, exposed: set[str]) -> list[str]:
    """Names the dashboard queries that are not among ``exposed`` (servermetrics.sample_names of a live /metrics)."""
    return sorted(metric_names(dashboard) - set(exposed))


def configmap(path: str | Path = DASHBOARD, namespace: str = "monitoring") -> dict:
    """The ConfigMap ``kubectl apply -k manifests/grafana`` creates (Grafana's sidecar loads it by label)."""
    path = Path(path)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "vllm-dashboard", "namespace": namespace,
                         "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "souveraene-llms"}},
            "data": {path.name: path.read_text(encoding="utf-8")}}


def panels_table(dashboard: dict | None = None):
    """One row per query: panel, legend and PromQL (for the notebook)."""
    import pandas as pd

    return pd.DataFrame(queries(dashboard or load()))
