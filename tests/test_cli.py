"""The command lines the Makefile and README give parse as written (argparse quirks included)."""

from helpers import bench, bench_gpu, cli


def test_make_bench_without_names_runs_every_benchmark():
    args = cli.build_parser().parse_args(["bench"])  # `make bench`: an empty nargs="*" list
    assert args.func is bench.cmd_bench and args.names == []
    assert cli.build_parser().parse_args(["bench", "model", "train"]).names == ["model", "train"]


def test_unknown_benchmark_names_fail_before_anything_runs(capsys):
    assert cli.main(["bench", "model", "warp-speed"]) == 2
    err = capsys.readouterr().err
    assert "warp-speed" in err and all(name in err for name in bench.BENCHMARKS)


def test_bench_gpu_parts_and_merge_parse():
    args = cli.build_parser().parse_args(["bench-gpu", "generation", "qlora", "--merge"])
    assert args.func is bench_gpu.cmd_bench_gpu and args.parts == ["generation", "qlora"] and args.merge
    assert cli.build_parser().parse_args(["bench-gpu"]).parts == []


def test_unknown_bench_gpu_part_fails_before_the_gpu_check(capsys):
    assert cli.main(["bench-gpu", "warp-speed"]) == 2
    assert "warp-speed" in capsys.readouterr().err


def test_a_spawned_engine_process_does_not_rerun_the_cli():
    # on a GPU vLLM's engine core is a spawned process; spawn re-imports `python -m helpers`'s main module
    import runpy

    namespace = runpy.run_module("helpers.__main__", run_name="__mp_main__")   # would raise SystemExit
    assert callable(namespace["main"])


def test_gpu_engines_run_in_their_own_process():
    # only a process exit frees an engine's GPU memory (measured on the l4 rehearsal: 21.2 GB in-process
    # vs 0.65 GB left after shutdown with its own process); on CPU the engine stays in the notebook's process
    from helpers import inference
    from helpers.profiles import load_profile

    assert inference.engine_process_environment(load_profile("l4")) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    assert inference.engine_process_environment(load_profile("mini")) == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}



def test_bench_profile_applies_to_the_router_benchmark_only(capsys):
    # `bench router --profile gpu-smoke` measures the router against a GPU vLLM; the budgets stay on mini
    assert cli.main(["bench", "course", "--profile", "gpu-smoke"]) == 2
    assert "applies to router only" in capsys.readouterr().err
    assert cli.build_parser().parse_args(["bench", "router", "--profile", "gpu-smoke"]).names == ["router"]


def test_router_bench_pairs_alternate_their_order():
    orders = [bench.paired_order(i, "direct", "routed") for i in range(4)]
    assert orders == [("direct", "routed"), ("routed", "direct")] * 2
