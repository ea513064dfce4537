"""Parallel generation, measured: a per-request loop vs vLLM offline batching vs ``vllm serve`` with
several client concurrencies, all on the same generation prompts (JSON-schema constrained).

The slow modes run on the first ``n_sequential`` prompts only (a full sequential pass would take minutes
on 2 cores); every mode is compared by output tokens per second, which does not depend on how many
prompts it ran as long as prompts and ``max_tokens`` are the same kind.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import dataset, generation, workunits
from .profiles import Profile


@dataclass
class BenchRequest:
    prompt: str
    schema: dict
    seed: int
    request_id: str


def bench_requests(profile: Profile, n: int | None = None,
                   max_tokens: int | None = None) -> tuple[list[BenchRequest], int]:
    """``n`` generation requests (chunks of the course corpus × the four types) and their ``max_tokens``."""
    from . import chunking, inference

    cfg = profile.dataset
    n = n or cfg.bench_prompts
    tok = chunking.get_tokenizer(profile)
    docs = dataset.prepare_documents()
    chunks = chunking.chunk_documents(docs, tok, cfg.chunk_max_tokens, cfg.chunk_overlap, progress=False)
    chosen = workunits.select_chunks(chunks, cfg.chunk_min_tokens, -(-n // len(generation.TYPES)))
    metas = [(c, t) for c in chosen for t in generation.TYPES][:n]
    texts = inference.chat_prompts(tok, [generation.messages(c, t) for c, t in metas])
    reqs = [BenchRequest(text, generation.schema(t, cfg), generation.request_seed(generation.record_id(c["id"], t)),
                         generation.record_id(c["id"], t)) for text, (c, t) in zip(texts, metas)]
    return reqs, max_tokens or cfg.bench_max_tokens


def _params(profile: Profile, req: BenchRequest, max_tokens: int):
    return generation.json_params(req.schema, req.seed, max_tokens, profile.generation.temperature)


def _result(mode: str, concurrency: int, n: int, tokens: int, seconds: float, ok: int) -> dict:
    return {"mode": mode, "concurrency": concurrency, "requests": n, "ok": ok, "output_tokens": tokens,
            "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1) if seconds else 0.0,
            "requests_per_s": round(n / seconds, 2) if seconds else 0.0}


def run_offline(llm, profile: Profile, reqs: list[BenchRequest], max_tokens: int, sequential: bool) -> dict:
    """Offline engine: one ``generate`` call per request (the loop) or one call for all (the batch)."""
    params = [_params(profile, r, max_tokens) for r in reqs]
    t0 = time.perf_counter()
    if sequential:
        outs = [llm.generate([r.prompt], p, use_tqdm=False)[0] for r, p in zip(reqs, params)]
    else:
        outs = llm.generate([r.prompt for r in reqs], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return _result("offline-loop" if sequential else "offline-batch", 1 if sequential else len(reqs), len(reqs),
                   tokens, seconds, len(outs))


def warm_up(llm, profile: Profile, reqs: list[BenchRequest], max_tokens: int) -> None:
    """First calls pay one-off costs (grammar compiler, kernels); keep them out of the measurement."""
    llm.generate([r.prompt for r in reqs[:4]], [_params(profile, r, max_tokens) for r in reqs[:4]], use_tqdm=False)


SERVER_ARGS = ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}',
               "--no-enable-prefix-caching"]


def make_server(profile: Profile, **kwargs):
    """A ``vllm serve`` process configured like the offline generation engine (same decoding rules)."""
    from . import serve

    return serve.VLLMServer(profile, extra_args=SERVER_ARGS, **kwargs)


def run_server(server, reqs: list[BenchRequest], max_tokens: int, concurrency: int, timeout: float = 300,
               retries: int = 2) -> dict:
    """``concurrency`` client threads send the requests to ``/v1/completions`` (generous timeout, retries)."""
    client = server.client(timeout=timeout, max_retries=retries)
    temperature = server.profile.generation.temperature

    def one(req: BenchRequest) -> int:
        resp = client.completions.create(model=server.served_model_name, prompt=req.prompt, max_tokens=max_tokens,
                                         temperature=temperature, seed=req.seed,
                                         extra_body={"structured_outputs": {"json": req.schema}})
        return resp.usage.completion_tokens

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        tokens = list(pool.map(one, reqs))
    return _result("server", concurrency, len(reqs), sum(tokens), time.perf_counter() - t0, len(tokens))


def speedup_table(results: list[dict]):
    """Results with the speedup in tokens/s over the per-request offline loop."""
    import pandas as pd

    df = pd.DataFrame(results)
    base = df.loc[df["mode"] == "offline-loop", "tokens_per_s"]
    df["speedup"] = (df["tokens_per_s"] / float(base.iloc[0])).round(1) if len(base) else None
    return df


def plot_speedup(table):
    import matplotlib.pyplot as plt

    labels = [m if m != "server" else f"server c={c}" for m, c in zip(table["mode"], table["concurrency"])]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.bar(labels, table["tokens_per_s"], color=["tab:gray" if m == "offline-loop" else
                                                        "tab:blue" if m == "offline-batch" else "tab:orange"
                                                        for m in table["mode"]])
    for bar, s in zip(bars, table["speedup"]):
        ax.annotate(f"{s}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    ax.set_ylabel("Output-Tokens pro Sekunde")
    ax.set_title("Gleiche Prompts, verschiedene Betriebsarten")
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    fig.tight_layout()
    return fig


def batching_benchmark(profile: Profile) -> dict:
    """``make bench``: offline batch vs the per-request loop, same prompts, one engine, one run."""
    from . import inference

    cfg = profile.dataset
    reqs, max_tokens = bench_requests(profile)
    llm = generation.make_generator(profile)
    try:
        warm_up(llm, profile, reqs, max_tokens)
        loop = run_offline(llm, profile, reqs[:cfg.bench_sequential], max_tokens, sequential=True)
        batch = run_offline(llm, profile, reqs, max_tokens, sequential=False)
    finally:
        inference.shutdown(llm)
    speedup = batch["tokens_per_s"] / loop["tokens_per_s"]
    print(f"offline batch {batch['tokens_per_s']} tok/s ({batch['requests']} prompts) vs per-request loop "
          f"{loop['tokens_per_s']} tok/s ({loop['requests']} of the same prompts): {speedup:.1f}x", flush=True)
    return {"generation_batch_tokens_per_s": batch["tokens_per_s"], "generation_loop_tokens_per_s": loop["tokens_per_s"],
            "generation_batch_speedup": round(speedup, 2),
            # as a "measured/limit ≤ 1" target: the loop's share of the batch throughput (≤ 0.1 means ≥ 10×)
            "generation_loop_over_batch": round(1 / speedup, 4)}
