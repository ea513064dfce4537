"""A small, bounded load test against a running VLLMServer on loopback, with true latency percentiles.

Every request's latency (and, when streaming, its time to first token) is *recorded*, and the percentiles
are computed from those recorded values with ``numpy.percentile``.

Why not read them off the server's Prometheus histograms? ``vllm:e2e_request_latency_seconds`` is a
histogram with fixed bucket edges (…, 1, 2.5, 5, 10, 15, 20, 30, … s). A histogram only knows how many
requests fell *between* two edges; "p95 = 10 s" read off a bucket edge means "somewhere between 5 and
10 s", and Grafana's ``histogram_quantile`` interpolates linearly inside the bucket, which is a guess, not
a measurement. The original series reported such bucket edges as latency percentiles. Server histograms are
right for dashboards (cheap, aggregatable over pods); a load test that owns every request records the
exact values instead.

Bounded: ``n_requests`` and ``concurrency`` are capped, every request has a client timeout, and the test
never retries silently (a failed request is recorded with its error and counted).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from .errors import HelpersError

MAX_REQUESTS = 2000
MAX_CONCURRENCY = 256
PERCENTILES = (50, 90, 95, 99)


class LoadTestError(HelpersError, ValueError):
    pass


def _one(client, model: str, messages: list[dict], max_tokens: int, stream: bool, temperature: float) -> dict:
    t0 = time.perf_counter()
    rec = {"model": model, "ok": False, "latency_s": None, "ttft_s": None, "completion_tokens": 0,
           "finish_reason": None, "error": None}
    try:
        if stream:
            chunks = 0
            resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                  temperature=temperature, stream=True,
                                                  stream_options={"include_usage": True})
            for chunk in resp:
                if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
                    if rec["ttft_s"] is None:
                        rec["ttft_s"] = time.perf_counter() - t0
                    chunks += 1
                if chunk.choices and chunk.choices[0].finish_reason:
                    rec["finish_reason"] = chunk.choices[0].finish_reason
                if getattr(chunk, "usage", None):
                    rec["completion_tokens"] = chunk.usage.completion_tokens
            rec["completion_tokens"] = rec["completion_tokens"] or chunks
        else:
            resp = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                                  temperature=temperature)
            rec["finish_reason"] = resp.choices[0].finish_reason
            rec["completion_tokens"] = resp.usage.completion_tokens
        rec["ok"] = True
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is retried silently
        rec["error"] = f"{type(exc).__name__}: {exc}"[:300]
    rec["latency_s"] = time.perf_counter() - t0
    return rec


def check_models(server, models: Sequence[str]) -> None:
    """Fail before sending anything if a model/adapter name is not served (lists the served ones)."""
    served = [server.served_model_name, *server.adapters]
    unknown = sorted(set(models) - set(served))
    if unknown:
        raise LoadTestError(f"Unknown model/adapter name(s) {', '.join(unknown)}: this server serves "
                            f"{', '.join(served)}. Start it with --adapter NAME=DIR for each adapter.")


def run(server, conversations: Sequence[list[dict]], models: Sequence[str] | None = None,
        n_requests: int = 16, concurrency: int = 4, max_tokens: int | None = None, stream: bool = True,
        timeout: float = 120, temperature: float = 0.0, progress: bool = True) -> list[dict]:
    """Send ``n_requests`` chat requests at ``concurrency`` in flight; returns one record per request.

    Request i uses ``conversations[i % len]`` and ``models[i % len]`` (round robin over adapters), so
    every adapter gets the same prompts.
    """
    from tqdm.auto import tqdm

    if not 1 <= n_requests <= MAX_REQUESTS:
        raise LoadTestError(f"n_requests must be between 1 and {MAX_REQUESTS}, got {n_requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise LoadTestError(f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}")
    if not conversations:
        raise LoadTestError("no conversations to send")
    models = list(models or [server.served_model_name])
    check_models(server, models)
    max_tokens = max_tokens or server.profile.generation.max_tokens
    client = server.client(timeout=timeout, max_retries=0)
    jobs = [(models[i % len(models)], conversations[i % len(conversations)]) for i in range(n_requests)]
    records: list[dict] = [None] * n_requests  # type: ignore[list-item]
    t_start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool, \
            tqdm(total=n_requests, desc="Requests", disable=not progress) as bar:
        futures = {pool.submit(_one, client, m, msgs, max_tokens, stream, temperature): i
                   for i, (m, msgs) in enumerate(jobs)}
        for fut in futures:
            i = futures[fut]
            records[i] = {"i": i, **fut.result()}
            bar.update(1)
    wall = time.perf_counter() - t_start
    for rec in records:
        rec["wall_s"] = wall
    return records


def percentiles(values: Sequence[float], qs: Sequence[int] = PERCENTILES) -> dict[str, float | None]:
    """True percentiles of recorded values (numpy's linear interpolation between order statistics)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return {f"p{q}": None for q in qs}
    return {f"p{q}": float(np.percentile(x, q)) for q in qs}


def summarize(records: Sequence[dict], by: str = "model") -> list[dict]:
    """Per model/adapter and overall: count, errors, latency and TTFT percentiles, output tokens/s."""
    groups = {"(alle)": list(records)}
    for rec in records:
        groups.setdefault(rec[by], []).append(rec)
    rows = []
    for name, recs in groups.items():
        ok = [r for r in recs if r["ok"]]
        wall = max((r["wall_s"] for r in recs), default=0) or float("nan")
        row = {by: name, "requests": len(recs), "errors": len(recs) - len(ok),
               "mean_latency_s": float(np.mean([r["latency_s"] for r in ok])) if ok else None}
        row.update({f"latency_{k}_s": v for k, v in percentiles([r["latency_s"] for r in ok]).items()})
        row.update({f"ttft_{k}_s": v for k, v in percentiles([r["ttft_s"] for r in ok], (50, 95)).items()})
        row["output_tokens"] = sum(r["completion_tokens"] for r in ok)
        row["tokens_per_s"] = row["output_tokens"] / wall
        rows.append(row)
    return rows


def summary_table(records: Sequence[dict]):
    import pandas as pd

    return pd.DataFrame(summarize(records)).set_index("model")


def plot_latencies(records: Sequence[dict]):
    """Sorted recorded latencies per adapter (an empirical CDF) with the p50/p95 marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for model in dict.fromkeys(r["model"] for r in records):
        lat = np.sort([r["latency_s"] for r in records if r["model"] == model and r["ok"]])
        if lat.size:
            ax.step(lat, np.arange(1, lat.size + 1) / lat.size, where="post", label=model)
    all_lat = [r["latency_s"] for r in records if r["ok"]]
    for q, style in ((50, ":"), (95, "--")):
        if all_lat:
            ax.axvline(np.percentile(all_lat, q), color="grey", linestyle=style, label=f"p{q} (alle)")
    ax.set_xlabel("Latenz pro Request (s)")
    ax.set_ylabel("Anteil der Requests ≤ x")
    ax.legend()
    fig.tight_layout()
    return fig


def histogram_quantile(metrics: dict[str, list[dict]], family: str, q: float) -> dict:
    """What Prometheus/Grafana's ``histogram_quantile`` reports for a vLLM histogram (summed over labels).

    It finds the bucket holding the q-th request and interpolates *linearly* inside it. Returned with
    the bucket's edges, to show how wide the guess is.
    """
    buckets: dict[float, float] = {}
    for s in metrics.get(family, []):
        if s["sample"].endswith("_bucket"):
            le = float(s["labels"]["le"])
            buckets[le] = buckets.get(le, 0.0) + s["value"]
    edges = sorted(buckets)
    if not edges or buckets[edges[-1]] == 0:
        return {"estimate": None, "bucket_low": None, "bucket_high": None}
    rank = q * buckets[edges[-1]]
    prev_edge, prev_count = 0.0, 0.0
    for edge in edges:
        count = buckets[edge]
        if count >= rank:
            if edge == float("inf"):
                return {"estimate": prev_edge, "bucket_low": prev_edge, "bucket_high": edge}
            frac = (rank - prev_count) / (count - prev_count) if count > prev_count else 0.0
            return {"estimate": prev_edge + (edge - prev_edge) * frac, "bucket_low": prev_edge, "bucket_high": edge}
        prev_edge, prev_count = edge, count
    return {"estimate": None, "bucket_low": None, "bucket_high": None}


def bucket_comparison(records: Sequence[dict], metrics: dict[str, list[dict]],
                      family: str = "vllm:e2e_request_latency_seconds", qs: Sequence[float] = (0.5, 0.95)):
    """Recorded percentiles next to the server histogram's estimate and the bucket it falls into."""
    import pandas as pd

    lat = [r["latency_s"] for r in records if r["ok"]]
    rows = []
    for q in qs:
        est = histogram_quantile(metrics, family, q)
        rows.append({"perzentil": f"p{round(q * 100)}",
                     "gemessen_s (jede Latenz aufgezeichnet)": float(np.percentile(lat, q * 100)) if lat else None,
                     "histogram_quantile_s (Schätzung)": est["estimate"],
                     "bucket": f"{est['bucket_low']} – {est['bucket_high']} s"})
    return pd.DataFrame(rows)
