"""Memory failures on the GPU (and vLLM's KV cache on a CPU): recognise them and say which setting to lower.

vLLM, PyTorch and bitsandbytes report memory trouble in their own words ("CUDA out of memory", "No
available memory for the cache blocks", "larger than the available KV cache memory", ...) and name engine
arguments. A course user changes a profile in helpers/profiles.yaml instead, so these helpers translate:
the original message stays first, followed by the profile keys to change with their current values.

Also a pre-flight check before vLLM starts: a model whose weight files alone exceed the memory the profile
gives vLLM cannot run on this card, and it is cheaper to say so than to let a 7B load fail after minutes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .profiles import PROFILES_FILE, Profile, TrainSettings
from .errors import HelpersError

MEMORY_PATTERNS = [
    r"out of memory",
    r"no available memory for the cache blocks",
    r"larger than the (?:maximum number of tokens that can be stored in )?(?:available )?kv cache",
    r"less than desired gpu memory utilization",
    r"insufficient (?:gpu |kv cache )?memory",
    r"cuda error: out of memory",
    r"cublas_status_alloc_failed",
]
_MEMORY_RE = re.compile("|".join(MEMORY_PATTERNS), re.IGNORECASE)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class GPUMemoryError(HelpersError, RuntimeError):
    """A run did not fit into the device's memory; the message names the settings to change."""


def is_memory_error(error: BaseException | str) -> bool:
    """True for an out-of-memory exception or a message/log text that reports one."""
    if not isinstance(error, str):
        if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, also torch.cuda's alias
            return True
        error = f"{type(error).__name__}: {error}"
    return bool(_MEMORY_RE.search(error))


def gpu_memory_bytes() -> int | None:
    """Total memory of GPU 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory


def weight_bytes(model_dir: str | Path) -> int | None:
    """Size of the weight files in a local model directory (None if it is not one)."""
    path = Path(model_dir)
    if not path.is_dir():
        return None
    files = [f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    if any(f.suffix == ".safetensors" for f in files):  # a directory may carry both formats: count one
        files = [f for f in files if f.suffix == ".safetensors"]
    return sum(f.stat().st_size for f in files) or None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def inference_settings(profile: Profile, engine_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    kw = engine_kwargs or {}
    v = profile.vllm
    return {key: kw.get(key, getattr(v, key)) for key in
            ("gpu_memory_utilization", "max_model_len", "max_num_seqs", "quantization", "kv_cache_gb",
             "tensor_parallel_size")}


def inference_advice(profile: Profile, engine_kwargs: dict[str, Any] | None = None) -> str:
    """What to change in the profile when a vLLM engine or server does not fit."""
    s = inference_settings(profile, engine_kwargs)
    where = f"profile '{profile.name}' in {PROFILES_FILE.name}"
    if profile.device == "cpu":
        return (f"vLLM's KV cache on the CPU is too small for this model and context. In {where}: raise "
                f"`vllm.kv_cache_gb` (now {s['kv_cache_gb']}, the VLLM_CPU_KVCACHE_SPACE in GiB) or lower "
                f"`vllm.max_model_len` (now {s['max_model_len']}).")
    lines = [f"The model does not fit into GPU memory with the settings of {where}. Change, in this order:",
             f"- `vllm.max_model_len` (now {s['max_model_len']}): the KV cache must hold at least one sequence "
             "this long; halve it if your prompts allow.",
             f"- `vllm.gpu_memory_utilization` (now {s['gpu_memory_utilization'] or 'vLLM default 0.9'}): the "
             "share of the card vLLM may take. Raise it if the card is free; lower it if another process "
             "(a second engine, a notebook kernel, a training run) holds memory -- see `nvidia-smi`.",
             f"- `vllm.max_num_seqs` (now {s['max_num_seqs']}): fewer parallel sequences need less activation "
             "memory.",
             f"- the model itself (quantization now {s['quantization'] or 'none'}): a 4-bit AWQ model (profile "
             "`t4`) needs about a quarter of the bf16 weights' memory."]
    return "\n".join(lines)


def training_advice(profile: Profile, train: TrainSettings | None = None) -> str:
    """What to change in the profile when QLoRA training runs out of GPU memory."""
    c = train or profile.train
    where = f"profile '{profile.name}' in {PROFILES_FILE.name}"
    return "\n".join([
        f"Training ran out of GPU memory with the settings of {where}. Change, in this order:",
        f"- `train.batch_size` (now {c.batch_size}): halve it and double `train.grad_accum` (now "
        f"{c.grad_accum}) to keep the effective batch size.",
        f"- `train.gradient_checkpointing` (now {c.gradient_checkpointing}): true trades about 30 % "
        "speed for much less activation memory.",
        f"- `train.max_length` (now {c.max_length}): longer examples are rejected with a reason, never cut.",
        f"- `train.quantize_4bit` (now {c.quantize_4bit}): NF4 keeps a 7B base at about 4 GB.",
        "Checkpoints written so far stay; `--resume` (or `train(..., resume=True)`) continues from the newest.",
    ])


def check_weights_fit(profile: Profile, model_dir: str | Path, total_bytes: int | None = None,
                      engine_kwargs: dict[str, Any] | None = None) -> None:
    """Refuse a model whose weight files alone exceed what the profile lets vLLM use on this GPU."""
    if profile.device != "cuda":
        return
    total = total_bytes if total_bytes is not None else gpu_memory_bytes()
    weights = weight_bytes(model_dir)
    if not total or not weights:
        return
    settings = inference_settings(profile, engine_kwargs)
    share = settings["gpu_memory_utilization"] or 0.9
    budget = total * share * max(1, settings["tensor_parallel_size"] or 1)   # weights are split over the GPUs
    if weights > budget:
        raise GPUMemoryError(
            f"Model {model_dir} is too large for this card: its weights alone take {_gb(weights)}, but profile "
            f"'{profile.name}' gives vLLM {_gb(budget)} ({share:.0%} of {_gb(total)}).\n"
            + inference_advice(profile, engine_kwargs))


def translate(exc: BaseException, advice: str) -> BaseException:
    """The same failure, as a GPUMemoryError whose message ends with the advice; other errors unchanged."""
    if not is_memory_error(exc):
        return exc
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return GPUMemoryError(f"{type(exc).__name__}: {first[:500]}\n{advice}")


@contextmanager
def advise(advice: Callable[[], str]) -> Iterator[None]:
    """``with gpumem.advise(lambda: ...):`` re-raises a memory failure inside as GPUMemoryError + advice."""
    try:
        yield
    except Exception as exc:
        translated = translate(exc, advice())
        if translated is exc:
            raise
        raise translated from exc


# --------------------------------------------------------------------------- measurement (dress rehearsal)
def release_cached() -> None:
    """Collect what the caller dropped and give the CUDA caching allocator's blocks back to the card, so an
    engine started next in the same process finds them free (on a GPU training runs in its own process instead,
    helpers/childproc.py)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort during teardown
        pass


SCOPE_ENV = "COURSE_GPU_SCOPE"   # set by `rehearsal run --shared-gpu`: count only this lane's processes


def process_scope(pid: int) -> str | None:
    """The ``COURSE_GPU_SCOPE`` value in a process's environment (None: not set, gone or not readable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = SCOPE_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def scoped_used_bytes(processes: list[tuple[int, int]], scope: str) -> int:
    """Sum of ``(pid, used_bytes)`` over the processes whose environment carries ``scope``.

    Several dress-rehearsal lanes share one large GPU: each lane (its notebook kernel, engine processes,
    ``vllm serve``, training child -- all inherit the variable) counts only its own memory, as on its own card.
    """
    return sum(used for pid, used in processes if process_scope(pid) == scope)


def gpu_used_bytes() -> int | None:
    """Used memory of this process's GPU 0 as ``nvidia-smi`` counts it (all processes); None without NVML.

    NVML numbers all GPUs; torch's GPU 0 is the first one ``CUDA_VISIBLE_DEVICES`` names. With
    ``COURSE_GPU_SCOPE`` set, only the processes of that scope count (``scoped_used_bytes``).
    """
    import os

    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(first) if first.isdigit() else 0)
        scope = os.environ.get(SCOPE_ENV)
        if scope:
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
            return scoped_used_bytes([(p.pid, int(p.usedGpuMemory or 0)) for p in procs], scope)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception:  # noqa: BLE001 - no NVML, no driver, no GPU: nothing to measure
        return None


SHARED_GPU_ACTIVATION_BYTES = 2 * 2**30   # activation peak + non-torch memory of a 7B engine, set aside from the KV


def shared_gpu_kv_bytes(profile: Profile, model_dir: str | Path, utilization: float | None) -> int | None:
    """On a GPU shared by rehearsal lanes: the KV cache size to give vLLM instead of letting it measure.

    vLLM sizes its KV cache from the change in the card's free memory during a profiling pass; another lane
    allocating or freeing meanwhile makes that size wrong in either direction (measured: an l4 lane held
    37 GB of its 24 GB card) or stops the start. Here the KV cache is what the emulated card leaves: the
    engine's share of the card minus the weights minus ``SHARED_GPU_ACTIVATION_BYTES``. None outside a shared
    GPU, for a model that is not a local folder, or when nothing would be left.
    """
    import os

    if not (os.environ.get(SCOPE_ENV) and profile.emulate_card and profile.card_gb and utilization):
        return None
    total = gpu_memory_bytes()
    return kv_bytes_left(utilization * total, model_dir) if total else None


def kv_bytes_left(engine_bytes: float, model_dir: str | Path) -> int | None:
    """The KV cache an engine of ``engine_bytes`` has after the weights in ``model_dir`` and
    ``SHARED_GPU_ACTIVATION_BYTES``; None for a model that is not a local folder or when nothing is left."""
    weights = weight_bytes(model_dir)
    if weights is None:
        return None
    kv = int(engine_bytes - weights - SHARED_GPU_ACTIVATION_BYTES)
    return kv if kv > 0 else None


def start_engine(start: Callable[[], Any], what: str, retries: int = 2, wait_s: float = 10.0) -> Any:
    """Run ``start()`` (an engine or server start); on a GPU shared by rehearsal lanes retry a failed start.

    vLLM measures its memory at start-up from the card's free memory and stops ("Error in memory profiling")
    when another process frees memory meanwhile -- on a GPU shared by several lanes that is another lane, not
    a fault of this one. Outside ``COURSE_GPU_SCOPE`` a failure is raised at once.
    """
    import os
    import time

    attempts = 1 + (retries if os.environ.get(SCOPE_ENV) else 0)
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except GPUMemoryError:
            raise                       # the emulated card's own refusal is the result, not a race
        except Exception as exc:  # noqa: BLE001 - re-raised on the last attempt
            if attempt == attempts:
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            print(f"{what}: start {attempt} failed on the shared GPU ({first}); retrying in {wait_s:g} s", flush=True)
            time.sleep(wait_s)


def check_emulated_card(profile: Profile, requested_share: float | None, used_bytes: int | None = None,
                        total_bytes: int | None = None) -> None:
    """With ``emulate_card``: refuse an engine start that the real card would refuse.

    On a real card vLLM needs ``gpu_memory_utilization`` x card free at start; on a larger GPU that check
    passes even when a second engine would not fit the card. This applies it to the emulated card: memory
    in use (every process) plus what the new engine asks for must fit ``card_gb``.
    """
    if not profile.emulate_card or not profile.card_gb:
        return
    used = used_bytes if used_bytes is not None else gpu_used_bytes()
    total = total_bytes if total_bytes is not None else gpu_memory_bytes()
    if used is None or not total:
        return
    requested = (requested_share or 0.9) * total
    card = profile.card_gb * 1e9
    if used + requested > card:
        raise GPUMemoryError(
            f"On the emulated {profile.card_gb:g} GB card of profile '{profile.name}', {used / 1e9:.1f} GB are "
            f"already in use and this engine asks for {requested / 1e9:.1f} GB: the real card would refuse the "
            "start (vLLM: free memory on device less than desired). Stop the engine or server that still holds "
            "memory first (`inference.shutdown(llm)`, `server.stop()`), or lower `vllm.gpu_memory_utilization`.")


class PeakMemory:
    """Peak used memory of this process's GPU 0 -- every process on it, as ``nvidia-smi`` counts -- sampled in a
    thread.

    ``with PeakMemory() as peak: ...`` then ``peak.peak_bytes`` (None without NVML or a GPU). A notebook's
    engines run in their own processes, so ``torch.cuda.max_memory_allocated`` would miss them; NVML sees all.
    """

    def __init__(self, interval_s: float = 0.25):
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self._stop = None
        self._thread = None

    def __enter__(self) -> "PeakMemory":
        import threading

        if gpu_used_bytes() is None:
            return self
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                used = gpu_used_bytes()
                if used is not None and (self.peak_bytes is None or used > self.peak_bytes):
                    self.peak_bytes = used
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=sample, name="gpu-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)


def record_engine_start(kind: str, seconds: float | None, model: str = "") -> None:
    """Append an engine or server start time to the course run's ``engine_starts.jsonl`` (runner sets the run)."""
    import json
    import os

    run_dir = os.environ.get("COURSE_RUN_DIR")
    if not run_dir or seconds is None:
        return
    line = {"notebook": os.environ.get("COURSE_NOTEBOOK", ""), "kind": kind, "seconds": seconds, "model": model}
    with open(Path(run_dir) / "engine_starts.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")
