"""What a vLLM server tells about itself on ``/metrics``: the Prometheus text parsed, totals, the few series the
course reads, and what can (and cannot) be told apart per adapter. Notebooks 02 and 06; the Grafana dashboard's
queries are checked against the live names (``dashboard.py``)."""

from __future__ import annotations


def parse_metrics(text: str, prefix: str = "vllm:") -> dict[str, list[dict]]:
    """Prometheus text format → {metric family: [{"sample", "labels", "value"}, ...]} for one prefix."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[dict]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(prefix):
            continue
        out[family.name] = [{"sample": s.name, "labels": dict(s.labels), "value": s.value}
                            for s in family.samples]
    return out


def metric_total(metrics: dict[str, list[dict]], family: str, sample_suffix: str = "") -> float:
    """Sum of all samples of a family (optionally only samples whose name ends in ``sample_suffix``)."""
    return sum(s["value"] for s in metrics.get(family, []) if s["sample"].endswith(sample_suffix))


def metrics_summary(metrics: dict[str, list[dict]]):
    """The handful of vLLM series the course looks at, as a small DataFrame."""
    import pandas as pd

    rows = [
        ("vllm:num_requests_running", "laufende Requests", metric_total(metrics, "vllm:num_requests_running")),
        ("vllm:num_requests_waiting", "wartende Requests", metric_total(metrics, "vllm:num_requests_waiting")),
        ("vllm:kv_cache_usage_perc", "KV-Cache-Auslastung", metric_total(metrics, "vllm:kv_cache_usage_perc")),
        ("vllm:prompt_tokens", "Prompt-Tokens gesamt", metric_total(metrics, "vllm:prompt_tokens", "_total")),
        ("vllm:generation_tokens", "generierte Tokens gesamt",
         metric_total(metrics, "vllm:generation_tokens", "_total")),
        ("vllm:request_success", "erfolgreiche Requests", metric_total(metrics, "vllm:request_success", "_total")),
        ("vllm:e2e_request_latency_seconds", "Summe der Latenzen (s)",
         metric_total(metrics, "vllm:e2e_request_latency_seconds", "_sum")),
    ]
    return pd.DataFrame(rows, columns=["metric", "bedeutung", "wert"])


# --------------------------------------------------------------------------- per model and per adapter
def sample_names(metrics: dict[str, list[dict]]) -> set[str]:
    """Every exposed sample name (counters as ``<family>_total``, histograms as ``_bucket/_sum/_count``)."""
    return {s["sample"] for samples in metrics.values() for s in samples}


def lora_info(metrics: dict[str, list[dict]]):
    """Per adapter, from ``vllm:lora_requests_info``: when it was last seen running / waiting, max_loras.

    vLLM labels every request counter and histogram with the *base* model name only (``model_name``), so
    /metrics cannot tell adapters apart there. The one per-adapter series is this gauge: its labels list
    the adapters running and waiting at a moment, its value is that moment's Unix time. Per-adapter
    latencies therefore come from the client side (helpers.loadtest).
    """
    import pandas as pd

    rows: dict[str, dict] = {}
    max_lora = None
    for s in metrics.get("vllm:lora_requests_info", []):
        max_lora = s["labels"].get("max_lora", max_lora)
        for state in ("running", "waiting"):
            for name in filter(None, s["labels"].get(f"{state}_lora_adapters", "").split(",")):
                row = rows.setdefault(name, {"adapter": name, "zuletzt_laufend": None, "zuletzt_wartend": None})
                key = "zuletzt_laufend" if state == "running" else "zuletzt_wartend"
                row[key] = max(row[key] or 0.0, s["value"])
    df = pd.DataFrame(list(rows.values()), columns=["adapter", "zuletzt_laufend", "zuletzt_wartend"])
    for col in ("zuletzt_laufend", "zuletzt_wartend"):
        df[col] = pd.to_datetime(df[col], unit="s")
    df["max_loras"] = max_lora
    return df


def per_model(metrics: dict[str, list[dict]]):
    """Request counters per ``model_name`` label: finished requests by reason, tokens, mean e2e latency."""
    import pandas as pd

    rows: dict[str, dict] = {}

    def row(labels: dict) -> dict:
        name = labels.get("model_name", "?")
        return rows.setdefault(name, {"model_name": name})

    for s in metrics.get("vllm:request_success", []):
        if s["sample"].endswith("_total"):
            r = row(s["labels"])
            key = f"fertig_{s['labels'].get('finished_reason', '?')}"
            r[key] = r.get(key, 0.0) + s["value"]
    for family, key in (("vllm:generation_tokens", "generation_tokens"), ("vllm:prompt_tokens", "prompt_tokens")):
        for s in metrics.get(family, []):
            if s["sample"].endswith("_total"):
                r = row(s["labels"])
                r[key] = r.get(key, 0.0) + s["value"]
    sums: dict[str, list[float]] = {}
    for s in metrics.get("vllm:e2e_request_latency_seconds", []):
        if s["sample"].endswith(("_sum", "_count")):
            acc = sums.setdefault(s["labels"].get("model_name", "?"), [0.0, 0.0])
            acc[0 if s["sample"].endswith("_sum") else 1] += s["value"]
    for name, (total, count) in sums.items():
        rows.setdefault(name, {"model_name": name})["mittlere_latenz_s"] = total / count if count else None
    return pd.DataFrame(list(rows.values()))
