"""``make bench-gpu``: 7B-scale measurements on a Mistral-7B-shaped model with random weights.

No 7B checkpoint can be downloaded on an offline runner, and none is needed to measure speed: vLLM loads
the architecture with ``load_format="dummy"`` (random weights), QLoRA trains a saved random checkpoint.
Everything runs in one process so the numbers are comparable; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import time
from pathlib import Path

from . import io, paths, workunits
from .bench_gpu_report import write_markdown
from .profiles import load_profile

MISTRAL_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                  rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False)
PROMPT_TOKENS = 512
OUTPUT_TOKENS = 256


def make_model_dir(out: str | Path, tokenizer_dir: str | Path | None = None, **overrides) -> Path:
    """A Mistral-7B-shaped model directory (config + tokenizer, no weights: vLLM's dummy loader fills them)."""
    from transformers import MistralConfig

    from . import kursmini

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = MistralConfig(**{**MISTRAL_7B, **overrides}, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["MistralForCausalLM"]
    cfg.save_pretrained(out)
    tok_src = Path(tokenizer_dir or kursmini.ensure())
    for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json"):
        if (tok_src / name).exists():
            shutil.copy(tok_src / name, out / name)
    return out


def token_prompts(n: int, length: int = PROMPT_TOKENS, vocab: int = 4000, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt_token_ids": [rng.randrange(10, vocab) for _ in range(length)]} for _ in range(n)]


def _params(max_tokens: int = OUTPUT_TOKENS):
    from vllm import SamplingParams

    return SamplingParams(max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True, temperature=0.0)


def _rate(requests: int, tokens: int, seconds: float) -> dict:
    return {"requests": requests, "output_tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds, 1)}


def throughput(llm, prompts: list, max_tokens: int = OUTPUT_TOKENS, lora_request=None, params=None) -> dict:
    """Output tokens per second for one ``generate`` call over all prompts (``params``: one or one per prompt;
    default: exactly ``max_tokens`` each, EOS ignored)."""
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params or _params(max_tokens), lora_request=lora_request, use_tqdm=False)
    seconds = time.perf_counter() - t0
    return _rate(len(prompts), sum(len(o.outputs[0].token_ids) for o in outs), seconds)


def sequential(llm, prompts: list, max_tokens: int = OUTPUT_TOKENS, params: list | None = None) -> dict:
    """The per-request loop of the original series: one prompt, wait, next prompt."""
    params = params or [_params(max_tokens)] * len(prompts)
    t0 = time.perf_counter()
    tokens = 0
    for prompt, p in zip(prompts, params):
        out = llm.generate([prompt], p, use_tqdm=False)
        tokens += len(out[0].outputs[0].token_ids)
    return _rate(len(prompts), tokens, time.perf_counter() - t0)


def random_lora_adapter(out: str | Path, model_cfg: dict, rank: int = 16, seed: int = 0,
                        targets=("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    """A real peft-format LoRA adapter with random (non-zero) A and B matrices for the given shape."""
    import torch
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    h, hd = model_cfg["hidden_size"], model_cfg["head_dim"]
    dims = {"q_proj": (h, model_cfg["num_attention_heads"] * hd), "k_proj": (h, model_cfg["num_key_value_heads"] * hd),
            "v_proj": (h, model_cfg["num_key_value_heads"] * hd), "o_proj": (model_cfg["num_attention_heads"] * hd, h)}
    tensors = {}
    for layer in range(model_cfg["num_hidden_layers"]):
        for t in targets:
            d_in, d_out = dims[t]
            base = f"base_model.model.model.layers.{layer}.self_attn.{t}"
            tensors[f"{base}.lora_A.weight"] = (torch.randn(rank, d_in, generator=g) * 0.01).to(torch.bfloat16)
            tensors[f"{base}.lora_B.weight"] = (torch.randn(d_out, rank, generator=g) * 0.01).to(torch.bfloat16)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    io.write_json(out / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0,
        "target_modules": list(targets), "bias": "none", "base_model_name_or_path": "mistral-7b-dummy",
        "fan_in_fan_out": False, "inference_mode": True})
    return out


def environment() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import vllm

        info["vllm"] = vllm.__version__
    except ImportError:
        pass
    for name in ("transformers", "peft", "bitsandbytes"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def lora_tuning_options() -> dict:
    """Engine options of this vLLM version that specialise to the active LoRA set (empty if none exist)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    fields = {f.name for f in dataclasses.fields(EngineArgs)}
    options = {}
    if "specialize_active_lora" in fields:
        options["specialize_active_lora"] = True
    if "max_cpu_loras" in fields:
        options["max_cpu_loras"] = 4
    return options


def random_checkpoint(out: str | Path, model_cfg: dict | None = None, seed: int = 0) -> Path:
    """Save a Mistral-7B-shaped checkpoint with random bf16 weights (for QLoRA speed/memory, not quality)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = Path(out)
    if (out / "config.json").exists() and list(out.glob("*.safetensors")):
        return out
    torch.manual_seed(seed)
    cfg = MistralConfig(**{**MISTRAL_7B, **(model_cfg or {})}, bos_token_id=1, eos_token_id=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = MistralForCausalLM(cfg).to(torch.bfloat16)
    make_model_dir(out, **(model_cfg or {}))
    model.save_pretrained(out, safe_serialization=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def long_records(n: int, max_tokens: int = 1024, tokenizer=None) -> list[dict]:
    """Gold QA records whose contexts are stretched with corpus text until each example fills ``max_tokens``
    (within a few tokens) as the `train` step encodes it -- batch 4 x 1024 means 1024 real tokens, no padding."""
    from . import chunking, documents, gold, labels

    tok = tokenizer or chunking.get_tokenizer(load_profile("mini"))
    corpus = " ".join(d.text for d in documents.load_corpus(paths.corpus_dir()))
    qa = gold.load_qa(types=("factual", "conceptual"))
    out = []
    for i in range(min(n, 16)):  # 16 distinct examples, repeated: speed and memory do not depend on variety
        rec = dict(qa[i % len(qa)], id=f"bench-{i}")
        start = (i * 997) % max(1, len(corpus) - 8 * max_tokens)
        lo, hi = 0, 8 * max_tokens  # characters of extra context: binary search for the longest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            try:
                labels.encode(tok, {**rec, "context": rec["context"] + " " + corpus[start:start + mid]}, max_tokens)
                lo = mid
            except ValueError:
                hi = mid - 1
        rec["context"] = rec["context"] + " " + corpus[start:start + lo]
        out.append(rec)
    return [dict(out[i % len(out)], id=f"bench-{i}") for i in range(n)]


def bench_qlora(workdir: Path, steps: int = 30, model_cfg: dict | None = None) -> dict:
    # h100 profile: paged AdamW 8-bit, bfloat16 compute, NF4 double quant -- the h100 settings of helpers/profiles.yaml.
    """QLoRA through the course's own `train` step at batch 4 x 1024 tokens: peak memory and tokens/s."""
    import dataclasses

    from . import training

    import torch

    ckpt = random_checkpoint(workdir / "mistral-7b-random", model_cfg)
    base = load_profile("h100" if torch.cuda.is_available() else "mini")  # mini: only to test on a CPU
    train_cfg = dataclasses.replace(base.train, batch_size=4, grad_accum=1, max_length=1024, max_steps=steps,
                                    gradient_checkpointing=True, logging_steps=5, save_steps=10 ** 6)
    profile = dataclasses.replace(base, train_model=str(ckpt), train=train_cfg,
                                  lora=dataclasses.replace(base.lora, r=16, target_modules="all-linear"))
    result = training.train(profile, long_records(4 * steps), None, workdir / "qlora-adapter", progress=False)
    info = result.info
    return {"qlora": {"steps": steps, "batch": "4 x 1024", "peak_memory_gb": round(info["peak_memory_mb"] / 1024, 2),
                      "tokens_per_s": info["tokens_per_s"], "seconds": info["seconds"],
                      "train_tokens_per_example": round(info["train_tokens"] / max(1, info["train_examples"]), 1),
                      "trainable_parameters": info["trainable_parameters"]}}


def generation_tokenizer(workdir: Path, vocab: str = "mistral"):
    """(tokenizer, folder) the generation benchmark runs with: ``mistral`` is Mistral-7B-v0.1's own SentencePiece
    model (from mistral_common) with the course's [INST] template, as the GPU profiles tokenize; ``kurs-mini`` is
    the vocabulary of the earlier measurements (docs/benchmarks-gpu-h100.json)."""
    from transformers import AutoTokenizer

    from . import chatformat, chunking, kursmini, testmodel

    if vocab == "mistral":
        folder = testmodel.write_tokenizer(workdir / "mistral-tokenizer", chat_template=chatformat.INST_TEMPLATE)
        return AutoTokenizer.from_pretrained(folder), folder
    if vocab == "kurs-mini":
        return chunking.get_tokenizer(load_profile("mini")), kursmini.ensure()
    raise ValueError(f"Unknown vocabulary '{vocab}': mistral or kurs-mini.")


def bench_generation(workdir: Path, n_chunks: int = 64, max_tokens: int = OUTPUT_TOKENS,
                     model_cfg: dict | None = None, engine_kw: dict | None = None, vocab: str = "mistral") -> dict:
    """The course's generation step (schema-constrained, validated) vs raw vLLM on one engine configured
    exactly as the generation step configures it, on the same prompts:

    * ``generation_raw``: each request forced to the very length the step produced for it (same prompts,
      same lengths, same batch shape) -- the target's baseline; the gap is the step's own cost (grammar,
      request building, parsing);
    * ``generation_raw_uniform``: every request at the step's mean length -- what a naive comparison
      measures; the gap to ``generation_raw`` is the tail of a batch whose answers differ in length;
    * ``generation_sequential``: the step's first 16 requests one at a time (the per-request loop).
    """

    from . import chunking, dataset, generation

    import torch

    on_gpu = torch.cuda.is_available()
    profile = load_profile("h100" if on_gpu else "mini")  # mini: only to test this code on a CPU
    cfg = profile.dataset
    tok, tok_dir = generation_tokenizer(workdir, vocab)
    chunks = chunking.chunk_documents(dataset.prepare_documents(), tok, cfg.chunk_max_tokens,
                                      cfg.chunk_overlap, progress=False)
    chosen = workunits.select_chunks(chunks, cfg.chunk_min_tokens, n_chunks)
    # The grammar backend needs model and tokenizer vocabularies to agree: the dummy 7B carries the tokenizer.
    shape = {**MISTRAL_7B, **(model_cfg or {}), "vocab_size": len(tok)}
    model_dir = make_model_dir(workdir / f"mistral-7b-dummy-{vocab}", tokenizer_dir=tok_dir, **shape)
    extra = {"gpu_memory_utilization": 0.85} if on_gpu else {}
    llm = generation.make_generator(profile, model=str(model_dir), load_format="dummy", max_model_len=2048,
                                    **{**extra, **(engine_kw or {})})
    generation.generate_unit(llm, profile, chosen[:4], cfg, max_tokens=16)  # warm-up (grammar compile)

    t0 = time.perf_counter()
    records, rejects, gen_tokens = generation.generate_unit(llm, profile, chosen, cfg, max_tokens=max_tokens)
    gen_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    texts, _, metas = generation.build_requests(llm, profile, chosen, cfg, max_tokens)
    build_seconds = time.perf_counter() - t0
    produced = {r["id"]: r["output_tokens"] for r in records + rejects}
    lengths = [max(1, produced[generation.record_id(c["id"], t)]) for c, t in metas]

    raw = throughput(llm, texts, params=[_params(n) for n in lengths])  # each forced to the step's length
    uniform = throughput(llm, texts, max(1, gen_tokens // len(texts)))
    seq_texts, seq_params, _ = generation.build_requests(llm, profile, chosen[:6], cfg, max_tokens)
    sequential_ = sequential(llm, seq_texts[:16], params=seq_params[:16])  # the step's own requests, one by one
    step = {**_rate(len(texts), gen_tokens, gen_seconds), "valid_records": len(records),
            "rejects": len(rejects), "min_tokens": min(lengths), "max_tokens": max(lengths),
            "build_seconds": round(build_seconds, 3), "length_in_schema": cfg.length_in_schema, "vocab": vocab,
            "vocab_size": len(tok)}
    return {"generation_step": step, "generation_raw": raw, "generation_raw_uniform": uniform,
            "generation_sequential": sequential_,
            "generation_ratio": round(step["tokens_per_s"] / raw["tokens_per_s"], 3)}


# Llama-3.1-70B's public shape (config.json of meta-llama/Llama-3.1-70B-Instruct), the series' planned judge.
LLAMA_70B = dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                 num_attention_heads=64, num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                 rope_theta=500000.0, sliding_window=None, tie_word_embeddings=False)
JUDGE_PROMPT_TOKENS = 600    # rubric + context + question + answer of notebook 08, rounded up
JUDGE_OUTPUT_TOKENS = 64     # rationale (<= 160 characters) + verdict as JSON


JUDGE_PARTS = {"judge-l4": "l4", "judge-t4": "t4", "judge-70b": "judge-70b"}   # bench part -> profile


def judge_model_dir(workdir: Path, profile) -> tuple[Path, dict]:
    """A random-weight stand-in of the profile's judge model at its real shape, and the engine keywords it needs.

    70B (bf16): config only, vLLM's dummy loader fills the weights. 8B AWQ (l4, t4): random packed 4-bit weights
    written by ``testmodel.build_awq``, as the dress rehearsal serves them."""
    from . import rehearsal

    if profile.name == "judge-70b":
        return make_model_dir(workdir / "llama-70b-dummy", **LLAMA_70B), {"load_format": "dummy"}
    kind = rehearsal.model_kind(profile.judge_model)
    path = workdir / f"judge-{kind}"
    if not (path / "testmodel.json").is_file():
        rehearsal.build_llama(path, kind)
    return path, {}


def card_settings(profile, model_dir: Path, total_bytes: int) -> dict:
    """On a GPU larger than the profile's card: the engine's share of the card as a share of this GPU, and the
    KV cache the card would leave (that share minus weights minus the activation reserve), so the engine holds
    no more than on the card itself and does not size its cache from a GPU other work may share. Empty on a GPU
    of the card's size."""
    from . import gpumem

    if not profile.card_gb or total_bytes <= profile.card_gb * 1e9 * 1.05:
        return {}
    engine = (profile.vllm.gpu_memory_utilization or 0.9) * profile.card_gb * 1e9
    kv = gpumem.kv_bytes_left(engine, model_dir)
    if kv is None:
        raise ValueError(f"The judge model in {model_dir} leaves no KV cache on profile '{profile.name}''s "
                         f"{profile.card_gb:g} GB card (or its weights are not in that folder).")
    return {"gpu_memory_utilization": round(engine / total_bytes, 4), "kv_cache_memory_bytes": kv}


def bench_judge(workdir: Path, part: str, n_prompts: int = 256) -> dict:
    """Judgments/s and GPU memory of a profile's judge engine at the real model shape (random weights).

    The engine keywords are the course's own (``inference.engine_kwargs``: dtype, length, batch, quantization,
    tensor parallelism). Fixed-length outputs (``ignore_eos``) stand in for judgments, since random weights write
    no valid JSON. A 1-GPU profile on a larger GPU gets the memory its card would leave (``card_settings``);
    memory is what the GPUs have in use (device-wide, including the engine's worker processes; with
    ``COURSE_GPU_SCOPE`` set, only the processes of that scope).
    """
    import torch
    from vllm import LLM

    from . import gpumem, inference

    name = part.replace("-", "_")
    prof = load_profile(JUDGE_PARTS[part])
    v = prof.vllm
    if torch.cuda.device_count() < v.tensor_parallel_size:
        return {name: {"error": f"needs {v.tensor_parallel_size} GPUs, found {torch.cuda.device_count()}"}}
    model_dir, extra = judge_model_dir(workdir, prof)
    kw = inference.engine_kwargs(prof, model=str(model_dir), **extra)
    kw.update(card_settings(prof, model_dir, torch.cuda.mem_get_info()[1]))
    if v.tensor_parallel_size > 1:
        # NCCL for the all-reduce: the first run (4 H200 of one host) stopped with "an illegal memory
        # access" inside cublasGemmEx in both workers; vLLM's custom all-reduce relies on GPU peer access over CUDA IPC
        kw["disable_custom_all_reduce"] = True
    t0 = time.perf_counter()
    llm = LLM(**kw)
    startup = round(time.perf_counter() - t0, 1)
    prompts = token_prompts(n_prompts, length=JUDGE_PROMPT_TOKENS)
    throughput(llm, prompts[:4], 8)   # warm-up
    batch = throughput(llm, prompts, JUDGE_OUTPUT_TOKENS)
    single = throughput(llm, prompts[:1], JUDGE_OUTPUT_TOKENS)
    scoped = gpumem.gpu_used_bytes() if os.environ.get(gpumem.SCOPE_ENV) else None
    if scoped is not None:   # a GPU shared with other work: only this scope's processes (NVML per process)
        used = [round(scoped / 1e9, 2)]
    else:
        used = [round((t - f) / 1e9, 2) for f, t in (torch.cuda.mem_get_info(i)
                                                    for i in range(torch.cuda.device_count()))]
    settings = {k: kw[k] for k in ("dtype", "max_model_len", "max_num_seqs", "quantization", "tensor_parallel_size",
                                   "gpu_memory_utilization", "kv_cache_memory_bytes", "enforce_eager") if k in kw}
    out = {"profile": prof.name, "judge_model": prof.judge_model, "startup_s": startup, "settings": settings,
           "prompt_tokens": JUDGE_PROMPT_TOKENS, "output_tokens": JUDGE_OUTPUT_TOKENS,
           "batch": batch, "single": single, "judgments_per_s": round(batch["requests"] / batch["seconds"], 2),
           "memory_used_gb_per_gpu": used, "card_gb": prof.card_gb, "gpu": torch.cuda.get_device_name(0)}
    if v.tensor_parallel_size > 1:
        out["all_reduce"] = "nccl (custom all-reduce off)"
    return {name: out}


def memory_bandwidth(gigabytes: float = 4.0, repeats: int = 20) -> dict:
    """What this card's memory actually delivers: a device-to-device copy of ``gigabytes`` (each copy reads and
    writes every byte), the practical ceiling beside the data sheet's figure for the batch-1 decode."""
    import torch

    n = int(gigabytes * 1e9) // 2
    src = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        dst.copy_(src)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    moved = 2 * src.numel() * src.element_size() * repeats
    return {"bytes_moved": moved, "seconds": round(seconds, 4), "tb_s": round(moved / seconds / 1e12, 3)}


def bench_vllm(workdir: Path, parts: list[str], n_prompts: int = 256, model_cfg: dict | None = None,
               engine_kw: dict | None = None, max_tokens: int = OUTPUT_TOKENS) -> dict:
    """Raw offline throughput, sequential loop, CUDA graphs vs eager, and LoRA 0/1/4 adapters."""
    import gc

    import torch
    from vllm import LLM
    from vllm.lora.request import LoRARequest

    for part in JUDGE_PARTS:
        if part in parts:
            return bench_judge(workdir, part, n_prompts)
    if "membw" in parts:
        return {"membw": memory_bandwidth()}
    if "qlora" in parts:
        return bench_qlora(workdir, steps=max(2, n_prompts // 8), model_cfg=model_cfg)
    if "generation" in parts:
        return bench_generation(workdir, max(4, n_prompts // 4), max_tokens, model_cfg, engine_kw)
    model_cfg = {**MISTRAL_7B, **(model_cfg or {})}
    model_dir = make_model_dir(workdir / "mistral-7b-dummy", **model_cfg)
    prompts = token_prompts(n_prompts, vocab=min(4000, model_cfg["vocab_size"]))
    results: dict = {}

    def engine(**kw):
        t0 = time.perf_counter()
        llm = LLM(model=str(model_dir), load_format="dummy", dtype="bfloat16", max_model_len=2048, seed=0,
                  **{"gpu_memory_utilization": 0.85, **(engine_kw or {}), **kw})
        return llm, round(time.perf_counter() - t0, 1)

    def close(llm):
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    if "eager" in parts:
        llm, start = engine(enforce_eager=True)
        results["eager"] = {"startup_s": start, "batch_256": throughput(llm, prompts, max_tokens),
                            "batch_1": throughput(llm, prompts[:1], max_tokens)}
        close(llm)
    if "graphs" in parts:
        llm, start = engine(enforce_eager=False)
        results["graphs"] = {"startup_s": start, "batch_256": throughput(llm, prompts, max_tokens),
                             "batch_1": throughput(llm, prompts[:1], max_tokens)}
        results["sequential_16"] = sequential(llm, prompts[:16], max_tokens)
        close(llm)
    for label in [p for p in parts if p.startswith("lora")]:
        # One LoRA engine per process. "lora": max_loras=4 at the adapters' exact rank; "lora-tuned" adds the
        # engine options that specialise kernels/graphs to the active LoRAs where this vLLM has them.
        adapters = [random_lora_adapter(workdir / f"lora{i}", model_cfg, seed=i) for i in range(4)]
        kw = {"enable_lora": True, "max_loras": 4, "max_lora_rank": 16}
        if label == "lora-tuned":
            kw.update(lora_tuning_options())
        llm, start = engine(**kw)
        one = LoRARequest("a0", 1, str(adapters[0]))
        mixed = [LoRARequest(f"a{i % 4}", i % 4 + 1, str(adapters[i % 4])) for i in range(len(prompts))]
        throughput(llm, prompts[:8], 16, lora_request=mixed[:8])  # warm-up: load all four adapters
        runs = {"0": throughput(llm, prompts, max_tokens)}
        runs["1"] = throughput(llm, prompts, max_tokens, lora_request=one)
        runs["4"] = throughput(llm, prompts, max_tokens, lora_request=mixed)
        base = runs["0"]["tokens_per_s"]
        results[label] = {"startup_s": start, "runs": runs, "settings": {k: v for k, v in kw.items()},
                          "ratio_1": round(runs["1"]["tokens_per_s"] / base, 3),
                          "ratio_4": round(runs["4"]["tokens_per_s"] / base, 3)}
        close(llm)
    return results


PARTS = ("eager", "graphs", "membw", "lora", "lora-tuned", "generation", "qlora")
EXTRA_PARTS = tuple(JUDGE_PARTS)   # only run when named (judge-70b needs 2 GPUs)
RESULTS = paths.ROOT / "docs" / "benchmarks-gpu.json"  # the committed measurements behind docs/benchmarks.md


def run_part(part: str, workdir: Path, n_prompts: int, model_cfg: dict | None = None,
             engine_kw: dict | None = None, max_tokens: int = OUTPUT_TOKENS) -> dict:
    """One part in a fresh subprocess: vLLM engines do not share a process cleanly, and the GPU is freed."""
    import subprocess
    import sys

    out = workdir / f"part-{part}.json"
    code = ("import json, sys; from pathlib import Path; from helpers import bench_gpu, sovereign; "
            "sovereign.activate(); a = json.loads(sys.argv[1]); "
            "r = bench_gpu.bench_vllm(Path(a['workdir']), [a['part']], a['n'], a['cfg'], a['kw'], a['max_tokens']); "
            "Path(a['out']).write_text(json.dumps(r))")
    args = json.dumps({"workdir": str(workdir), "part": part, "n": n_prompts, "cfg": model_cfg, "kw": engine_kw,
                       "max_tokens": max_tokens, "out": str(out)})
    proc = subprocess.run([sys.executable, "-c", code, args], cwd=paths.ROOT)
    if proc.returncode != 0:
        return {"error": f"part '{part}' failed with exit code {proc.returncode} (see the log above)"}
    return json.loads(out.read_text())


def run(parts: list[str] | None = None, output: str | Path | None = None, n_prompts: int = 256,
        model_cfg: dict | None = None, engine_kw: dict | None = None, max_tokens: int = OUTPUT_TOKENS,
        require_gpu: bool = True, merge_into: str | Path | None = None) -> dict:
    """Run the parts (each in its own process) and write the results JSON.

    ``merge_into``: an earlier results JSON (e.g. docs/benchmarks-gpu.json) whose other parts are kept, so
    one part can be re-measured without repeating the rest; refused when the environment differs.
    """
    from datetime import datetime

    from . import sovereign

    if require_gpu:
        load_profile("h100").require_device()
    sovereign.activate()
    work = paths.runs_dir() / "bench-gpu"
    work.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(), "prompt_tokens": PROMPT_TOKENS, "output_tokens": max_tokens,
               "prompts": n_prompts, "measured_at": {}}
    for part in parts or PARTS:
        print(f"== bench-gpu part: {part}", flush=True)
        results.update(run_part(part, work, n_prompts, model_cfg, engine_kw, max_tokens))
        results["measured_at"][part] = datetime.now().isoformat(timespec="minutes")
    out = Path(output or work / "bench-gpu.json")
    if merge_into and Path(merge_into).exists():
        io.write_json(work / "bench-gpu.json", results)  # this run alone, kept even if the merge is refused
        results = merge(io.read_json(merge_into), results)
    io.write_json(out, results)
    print(json.dumps(results, indent=2))
    return results


def merge(base: dict, new: dict) -> dict:
    """``new``'s parts over ``base``'s; refuses to mix measurements from different machines or versions."""
    if base.get("environment") != new.get("environment"):
        raise ValueError("Cannot merge benchmark results from different environments (this run alone is in "
                         "runs/bench-gpu/bench-gpu.json):\n"
                         f"  earlier: {base.get('environment')}\n  now:     {new.get('environment')}\n"
                         "Re-run all parts (`make bench-gpu`) on this machine instead.")
    for key in ("prompt_tokens", "output_tokens", "prompts"):
        if base.get(key) != new.get(key):
            raise ValueError(f"Cannot merge: '{key}' was {base.get(key)} and is {new.get(key)} now.")
    merged = {**base, **{k: v for k, v in new.items() if k != "measured_at"}}
    merged["measured_at"] = {**base.get("measured_at", {}), **new.get("measured_at", {})}
    return merged


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    p = sub.add_parser("bench-gpu", help="7B-scale GPU measurements (random weights) -> docs/benchmarks.md")
    p.add_argument("parts", nargs="*", help=f"{' '.join(PARTS)} (default: all); {' '.join(EXTRA_PARTS)} (judge engines of "
                                            "those profiles, only when named; judge-70b needs 2 GPUs)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--output", default=None,
                   help="results JSON (default docs/benchmarks-gpu.json, rendered to docs/benchmarks.md)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other parts of the results JSON and update only the parts run now")
    p.set_defaults(func=cmd_bench_gpu)


def cmd_bench_gpu(args) -> int:
    unknown = [n for n in args.parts if n not in PARTS + EXTRA_PARTS]
    if unknown:
        raise ValueError(f"Unknown bench-gpu part(s) {', '.join(unknown)}: choose from "
                         f"{', '.join(PARTS + EXTRA_PARTS)}.")
    output = args.output or RESULTS
    results = run(args.parts or None, output, n_prompts=args.prompts, merge_into=output if args.merge else None)
    print(write_markdown(results))
    return 0
