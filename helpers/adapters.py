"""LoRA adapters for serving: check them against the served model, build LoRARequests, generate mixed batches.

One vLLM engine (``enable_lora=True``) serves the base model and several adapters at once; each prompt of a
batch names its own adapter (or none). vLLM keeps up to ``max_loras`` adapters in its active slots and
computes all of them in the same forward pass, so a mixed batch costs one pass, not one pass per adapter.

Every adapter is checked *before* the engine starts, with messages that say what to do:
unknown name, a directory without ``adapter_config.json``, a rank above ``max_lora_rank``, or an adapter
trained on another base model (its weight shapes do not fit the served model's layers).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from .profiles import Profile, load_profile

# vLLM accepts only these values for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(ValueError):
    """An adapter cannot be served with this model/profile; the message says why and what to do."""


# --------------------------------------------------------------------------- adapter files
def read_config(adapter_dir: str | Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter: it has no adapter_config.json. Train one with "
                           "`python -m helpers train` or pass the directory that holds adapter_config.json.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc.msg}); re-save the adapter.") from exc


def adapter_rank(config: dict) -> int:
    """The largest rank the adapter uses (``r`` or any ``rank_pattern`` entry)."""
    return max([int(config.get("r", 0))] + [int(v) for v in (config.get("rank_pattern") or {}).values()])


def _lora_shapes(adapter_dir: Path) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} read from the adapter's lora_A / lora_B tensors."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.exists():
        raise AdapterError(f"{adapter_dir} has no adapter_model.safetensors (only .bin adapters? re-save it with "
                           "peft's save_pretrained(safe_serialization=True)).")
    shapes: dict[str, list[int]] = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            for part, idx in ((".lora_A.", 0), (".lora_B.", 1)):
                if part in key:
                    module = key.split(part)[0].removeprefix("base_model.model.")
                    shape = fh.get_slice(key).get_shape()
                    entry = shapes.setdefault(module, [0, 0])
                    entry[idx] = shape[1] if idx == 0 else shape[0]
    return {k: (v[0], v[1]) for k, v in shapes.items()}


def _model_linear_shapes(model_dir: str) -> dict[str, tuple[int, int]]:
    """{module name: (in_features, out_features)} of the model's linear layers, built on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)}


def check_adapter(name: str, adapter_dir: str | Path, profile: Profile | str | None = None,
                  model_dir: str | None = None) -> dict:
    """Raise AdapterError unless the adapter fits the served model and the profile's LoRA limits.

    Returns a short description (name, rank, base model, modules) for display.
    """
    from . import inference

    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    adapter_dir = Path(adapter_dir)
    config = read_config(adapter_dir)
    rank = adapter_rank(config)
    max_rank = int(profile.vllm.get("max_lora_rank", 16))
    if rank > max_rank:
        allowed = [r for r in VLLM_LORA_RANKS if r >= rank]
        raise AdapterError(
            f"Adapter '{name}' ({adapter_dir}) has rank {rank}, but profile '{profile.name}' serves LoRA up to "
            f"max_lora_rank={max_rank}. Raise vllm.max_lora_rank in helpers/profiles.yaml (vLLM allows "
            f"{', '.join(map(str, allowed[:3]))}, ...; a higher maximum costs memory for every slot) or train "
            f"the adapter with a smaller r.")
    model_dir = model_dir or inference.model_dir(profile)
    served = _model_linear_shapes(model_dir)
    base_name = config.get("base_model_name_or_path") or "(not recorded)"
    problems = []
    for module, (fan_in, fan_out) in sorted(_lora_shapes(adapter_dir).items()):
        if module not in served:
            problems.append(f"{module}: the served model has no such layer")
        elif served[module] != (fan_in, fan_out):
            problems.append(f"{module}: adapter {fan_in}->{fan_out}, model {served[module][0]}->{served[module][1]}")
    if problems:
        raise AdapterError(
            f"Adapter '{name}' ({adapter_dir}) was trained on another base model ('{base_name}') than the served "
            f"model ({model_dir}): {len(problems)} layer(s) do not fit, e.g. {'; '.join(problems[:3])}. "
            "Serve it with the model it was trained on, or retrain it on this model.")
    if Path(str(base_name)).name != Path(str(model_dir)).name and base_name != model_dir:
        warnings.warn(f"Adapter '{name}' records base model '{base_name}', the served model is {model_dir}; "
                      "the layer shapes fit, so it loads - make sure it is the same model.", stacklevel=2)
    modules = sorted({m.rsplit(".", 1)[-1] for m in _lora_shapes(adapter_dir)})
    return {"adapter": name, "path": str(adapter_dir), "rank": rank, "alpha": config.get("lora_alpha"),
            "base_model": base_name, "modules": ", ".join(modules)}


def check_all(adapters: dict[str, str | Path], profile: Profile | str | None = None,
              model_dir: str | None = None) -> list[dict]:
    """check_adapter for every adapter; returns their descriptions."""
    names = list(adapters)
    for bad in (n for n in names if not n or "=" in n or " " in n):
        raise AdapterError(f"Adapter name '{bad}' is not usable as a model name (no spaces or '=').")
    return [check_adapter(n, d, profile, model_dir) for n, d in adapters.items()]


# --------------------------------------------------------------------------- offline serving
class AdapterSet:
    """Named adapters of one engine: stable LoRARequest ids and a clear error for unknown names."""

    def __init__(self, adapters: dict[str, str | Path]):
        self.paths = {name: str(path) for name, path in adapters.items()}
        self._requests: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def request(self, name: str | None):
        """The LoRARequest for ``name``; None (or "base") means the base model without adapter."""
        if name is None or name == "base":
            return None
        if name not in self.paths:
            raise AdapterError(f"Unknown adapter '{name}'. Known adapters: "
                               f"{', '.join(self.paths) or '(none)'}; use 'base' or None for the base model.")
        if name not in self._requests:
            from vllm.lora.request import LoRARequest

            self._requests[name] = LoRARequest(name, self.names.index(name) + 1, self.paths[name])
        return self._requests[name]


def make_lora_llm(profile: Profile | str | None, adapters: dict[str, str | Path], **overrides: Any):
    """Check the adapters, then start one offline engine with LoRA enabled; returns (llm, AdapterSet)."""
    from . import inference

    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    check_all(adapters, profile, overrides.get("model"))
    llm = inference.make_llm(profile, enable_lora=True, **overrides)
    return llm, AdapterSet(adapters)


def generate_mixed(llm, adapter_set: AdapterSet, prompts: Sequence[str], adapter_names: Sequence[str | None],
                   params, progress: bool = True) -> list:
    """One batch in which every prompt has its own adapter (None/"base" = base model)."""
    from . import inference

    if len(prompts) != len(adapter_names):
        raise ValueError(f"{len(prompts)} prompts but {len(adapter_names)} adapter names")
    requests = [adapter_set.request(n) for n in adapter_names]  # unknown names fail here, before generating
    outputs = llm.generate(list(prompts), params, lora_request=requests, use_tqdm=progress)
    results = []
    for out, req in zip(outputs, requests):
        comp = out.outputs[0]
        results.append(inference.Generation(
            prompt=out.prompt, text=comp.text, finish_reason=comp.finish_reason or "",
            prompt_tokens=len(out.prompt_token_ids or []), output_tokens=len(comp.token_ids),
            adapter=req.lora_name if req else None))
    return results


def lora_server(profile: Profile | str | None, adapters: dict[str, str | Path], port: int | None = None,
                **kwargs: Any):
    """A VLLMServer (not started) serving ``adapters`` by name, after the same checks as offline."""
    from .serve import VLLMServer

    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    check_all(adapters, profile)
    return VLLMServer(profile, port=port, adapters={k: str(v) for k, v in adapters.items()}, **kwargs)


# --------------------------------------------------------------------------- test/bench adapters
def random_adapter(out_dir: str | Path, model_dir: str | None = None, r: int = 8, seed: int = 0,
                   target_modules: str | list[str] = "all-linear", identity: bool = False) -> Path:
    """A real peft LoRA adapter with random (untrained) weights, saved with ``save_pretrained``.

    vLLM loads it like a trained one, so it serves for serving and throughput tests. ``identity=True``
    keeps peft's default init (lora_B = 0: output equals the base model); otherwise A and B are random, so
    the adapter visibly changes the output.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "adapter_config.json").exists():
        return out_dir
    from . import inference

    model_dir = model_dir or inference.model_dir(load_profile("mini"))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules, task_type="CAUSAL_LM",
                        init_lora_weights=bool(identity))
    peft_model = get_peft_model(model, config)
    import shutil

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")  # written aside, renamed when complete
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir
