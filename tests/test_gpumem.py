"""Out-of-memory and too-large models: the error names the profile settings to change.

On a CPU runner CUDA memory cannot run out, so the first tests feed the translation real exception types
and messages; the tests marked `gpu` cause the real failures and run wherever CUDA is visible (the GPU
regression machine: `python -m pytest tests/test_gpumem.py`).
"""

import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import gpumem, kursmini, paths
from helpers.profiles import load_profile

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total capacity)"),
    ValueError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
               "initializing the engine."),
    ValueError("To serve at least one request with the models's max seq len (8192), (4.0 GiB KV cache) is needed, "
               "which is larger than the available KV cache memory (1.2 GiB)."),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    "ValueError: Free memory on device (3.1/15.8 GiB) on startup is less than desired GPU memory utilization",
])
def test_memory_failures_are_recognised(error):
    assert gpumem.is_memory_error(error)


@pytest.mark.parametrize("error", [ValueError("max_model_len 9000 > max_position_embeddings 8192"),
                                   FileNotFoundError("models/x/config.json"), KeyboardInterrupt()])
def test_other_failures_pass_through_unchanged(error):
    assert not gpumem.is_memory_error(error)
    assert gpumem.translate(error, "advice") is error


def test_inference_advice_names_the_profile_keys_with_their_values():
    t4 = load_profile("t4")
    err = gpumem.translate(ValueError("No available memory for the cache blocks."), gpumem.inference_advice(t4))
    text = str(err)
    assert isinstance(err, gpumem.GPUMemoryError) and text.startswith("ValueError: No available memory")
    assert "profile 't4'" in text and f"`vllm.max_model_len` (now {t4.vllm.max_model_len})" in text
    assert f"`vllm.gpu_memory_utilization` (now {t4.vllm.gpu_memory_utilization})" in text
    assert "nvidia-smi" in text and "quantization now awq" in text


def test_cpu_advice_points_at_the_kv_cache_setting():
    text = gpumem.inference_advice(load_profile("mini"))
    assert "`vllm.kv_cache_gb`" in text and "VLLM_CPU_KVCACHE_SPACE" in text


def test_training_advice_keeps_the_effective_batch_and_mentions_resume():
    l4 = load_profile("l4")
    text = str(gpumem.translate(torch.OutOfMemoryError("CUDA out of memory."), gpumem.training_advice(l4)))
    assert f"`train.batch_size` (now {l4.train.batch_size})" in text and "`train.grad_accum`" in text
    assert "`train.gradient_checkpointing`" in text and "--resume" in text


def test_weights_larger_than_the_vllm_share_are_refused_before_loading():
    model = kursmini.ensure()
    weights = gpumem.weight_bytes(model)
    assert weights and weights > 1_000_000
    smoke = load_profile("gpu-smoke")  # gpu_memory_utilization 0.3
    with pytest.raises(gpumem.GPUMemoryError, match="too large for this card") as exc:
        gpumem.check_weights_fit(smoke, model, total_bytes=int(weights * 2))  # 30 % of 2x the weights
    assert "`vllm.gpu_memory_utilization` (now 0.3)" in str(exc.value)
    gpumem.check_weights_fit(smoke, model, total_bytes=int(weights * 4))  # fits: no error
    gpumem.check_weights_fit(load_profile("mini"), model, total_bytes=1)  # CPU profile: no GPU check


def test_weight_size_is_unknown_for_a_hub_id_or_a_weightless_directory(tmp_path):
    assert gpumem.weight_bytes("mistralai/Mistral-7B-v0.1") is None
    (tmp_path / "config.json").write_text("{}")
    assert gpumem.weight_bytes(tmp_path) is None
    gpumem.check_weights_fit(load_profile("gpu-smoke"), tmp_path, total_bytes=1)  # nothing to compare: passes


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=paths.ROOT, capture_output=True,
                          text=True, timeout=900)


@gpu
def test_a_7b_model_in_a_small_vllm_share_fails_with_the_settings_to_change(tmp_path):
    proc = _run(f"""
        from helpers import bench_gpu, inference, gpumem
        from helpers.profiles import load_profile
        model = bench_gpu.make_model_dir({str(tmp_path / "m")!r})  # 7B shape, weights filled by vLLM's dummy loader
        try:
            inference.make_llm(load_profile("gpu-smoke"), model=str(model), load_format="dummy", gpu_memory_utilization=0.05)
        except gpumem.GPUMemoryError as exc:
            print("GPUMEMORYERROR", exc)
        """)
    assert "GPUMEMORYERROR" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "`vllm.gpu_memory_utilization`" in proc.stdout and "profile 'gpu-smoke'" in proc.stdout


@gpu
def test_training_out_of_gpu_memory_names_batch_size_and_checkpointing(tmp_path):
    proc = _run(f"""
        import torch
        from helpers import gold, gpumem, training
        from helpers.profiles import load_profile
        free, _ = torch.cuda.mem_get_info()
        hog = torch.empty(free - 8 * 2**20, dtype=torch.uint8, device="cuda")  # leave the run ~8 MB
        try:
            training.train(load_profile("gpu-smoke"), gold.load_qa()[:16], None, {str(tmp_path / "a")!r}, max_steps=2,
                           progress=False)
        except gpumem.GPUMemoryError as exc:
            print("GPUMEMORYERROR", exc)
        """)
    assert "GPUMEMORYERROR" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "`train.batch_size`" in proc.stdout and "--resume" in proc.stdout


def test_release_cached_collects_what_training_left():
    import gc
    import weakref

    class Model:  # stands for the trained model the caller has deleted, kept alive only by a reference cycle
        pass

    m = Model()
    m.self = m
    ref = weakref.ref(m)
    del m
    gc.disable()
    try:
        gpumem.release_cached()
    finally:
        gc.enable()
    assert ref() is None


def test_a_shared_gpu_lane_counts_only_the_processes_of_its_scope():
    """Rehearsal lanes on one GPU: a process counts when its environment carries the lane's scope (read from
    /proc, as for the engine, server and training processes a lane starts); others are another lane's."""
    import os

    env = dict(os.environ, **{gpumem.SCOPE_ENV: "/runs/lane-a"})
    other = dict(os.environ, **{gpumem.SCOPE_ENV: "/runs/lane-b"})
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    a, b = subprocess.Popen(sleep, env=env), subprocess.Popen(sleep, env=other)
    try:
        assert gpumem.process_scope(a.pid) == "/runs/lane-a"
        procs = [(a.pid, 700), (b.pid, 300), (os.getpid(), 50), (2 ** 22 + 7, 999)]   # last: no such process
        assert gpumem.scoped_used_bytes(procs, "/runs/lane-a") == 700
        assert gpumem.scoped_used_bytes(procs, "/runs/lane-b") == 300
        assert gpumem.scoped_used_bytes(procs, "/runs/lane-c") == 0
    finally:
        a.kill(), b.kill()


def test_an_engine_start_is_retried_only_on_a_shared_gpu(monkeypatch, capsys):
    """Another lane freeing memory while vLLM profiles its start stops that start (a race this machine cannot
    cause on purpose): on a shared GPU the start is retried; alone on a card the first failure is the answer,
    and the emulated card's refusal is never retried."""
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise AssertionError("Error in memory profiling. Initial free memory 80 GiB, current free memory 90 GiB.")
        return "engine"

    monkeypatch.delenv(gpumem.SCOPE_ENV, raising=False)
    with pytest.raises(AssertionError, match="memory profiling"):
        gpumem.start_engine(flaky, "vLLM engine", wait_s=0)
    calls.clear()
    monkeypatch.setenv(gpumem.SCOPE_ENV, "/runs/lane-a")
    assert gpumem.start_engine(flaky, "vLLM engine", wait_s=0) == "engine" and len(calls) == 2
    assert "retrying" in capsys.readouterr().out

    def refused():
        calls.append(1)
        raise gpumem.GPUMemoryError("the real card would refuse the start")

    calls.clear()
    with pytest.raises(gpumem.GPUMemoryError):
        gpumem.start_engine(refused, "vLLM engine", wait_s=0)
    assert len(calls) == 1
