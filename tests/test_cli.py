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
