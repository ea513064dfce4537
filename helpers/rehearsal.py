"""GPU dress rehearsal: the course on a real-model profile (l4, t4, h100) at the real 7B shape, random weights.

A workshop rents an L4 or a T4 and runs the notebooks on Mistral-7B. Before a workshop, that path is rehearsed on
whatever large GPU is at hand, without downloading a model:

* ``build_models`` writes random-weight models of each shape the profile names, offline: Mistral-7B-v0.1 (real
  tokenizer and config, ``helpers.testmodel``), its instruct sibling (same weights, v0.2's config and a template
  that refuses the system role, as Mistral's do), and 4-bit AWQ checkpoints of Mistral-7B and Llama-3.1-8B shape
  where the profile serves AWQ. The Llama-shaped judge carries the Mistral tokenizer (Llama 3's is not on the
  machine): its vocabulary rows exist, its template is the course's ``[INST]`` one.
* ``write_profile`` derives ``<profile>-rehearsal``: the profile as a workshop runs it -- dtype, quantization,
  max_model_len, batch sizes, optimizer, LoRA settings -- with the model ids replaced by those folders,
  ``emulate_card`` on (vLLM's share and training scaled to ``card_gb``, ``Profile.card_share``) and smaller samples
  and step counts.
* ``run`` executes the notebooks with that profile (``COURSE_PROFILES_EXTRA``) and records per notebook: status,
  seconds, peak GPU memory against the card (``gpumem.PeakMemory``) and engine starts; ``summary`` reads it back.

Random weights say nothing about answer quality: the runner does not check metrics here, only that every step
runs inside the card's memory.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

from . import gpumem, io
from .errors import HelpersError
from .profiles import EXTRA_PROFILES_ENV, Profile, _raw_profiles

# What a rehearsal shrinks: sample sizes and step counts (everything else stays as the profile says).
SMALL = {
    "samples": {"demo_prompts": 4, "eval_prompts": 16, "serve_requests": 8},
    "train": {"max_steps": 8},
    "dataset": {"generate_chunks": 8, "bench_prompts": 32, "bench_sequential": 4},
}
MODEL_FIELDS = ("model", "train_model", "base_model", "generator_model", "judge_model")


class RehearsalError(HelpersError, RuntimeError):
    pass


def model_kind(model_id: str) -> str:
    """Which random-weight stand-in a model id gets: mistral, mistral-instruct, mistral-awq,
    mistral-instruct-awq, llama8b or llama8b-awq."""
    low = model_id.lower()
    if "llama-3.1-8b" in low or "llama-3-8b" in low:
        return "llama8b-awq" if "awq" in low else "llama8b"
    if "mistral-7b" not in low:
        raise RehearsalError(f"No random-weight stand-in for '{model_id}': a rehearsal knows Mistral-7B (base, "
                             "instruct, AWQ) and Llama-3.1-8B shapes.")
    kind = "mistral-instruct" if "instruct" in low else "mistral"
    return kind + ("-awq" if "awq" in low else "")


def build_models(profile: Profile, out_dir: str | Path, device: str = "cuda", tiny: bool = False) -> dict[str, str]:
    """Write one random-weight folder per distinct model id of the profile; returns {model id: folder}.

    Folders that exist (with their ``testmodel.json``) are reused, so a resumed rehearsal builds nothing twice.
    ``tiny``: the same files at the CPU test shape (tests of this module), not a rehearsal.
    """
    from . import testmodel

    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RehearsalError("A dress rehearsal builds 7B-shaped models on a CUDA GPU and runs the notebooks "
                                 "there; this machine has none. Run it on a GPU machine (`make gpu-rehearsal`).")
    small = {**testmodel.TINY, "hidden_size": 256, "intermediate_size": 512} if tiny else {}

    out = Path(out_dir)
    ids = sorted({getattr(profile, f) for f in MODEL_FIELDS if getattr(profile, f)})
    kinds = {model_id: model_kind(model_id) for model_id in ids}
    folders: dict[str, Path] = {}

    def done(path: Path) -> bool:
        return (path / "testmodel.json").is_file()

    def base() -> Path:
        path = out / "mistral-7b"
        if not done(path):
            testmodel.build(path, shape="tiny" if tiny else "7b", dtype="bfloat16", device=device)
        return path

    mistral_awq_cfg = {**testmodel.MISTRAL_7B_V01, **small}
    llama_cfg = {**testmodel.LLAMA31_8B, **small, **({"vocab_size": 32000} if tiny else {})}
    for model_id, kind in kinds.items():
        path = out / kind
        if kind == "mistral":
            path = base()
        elif kind == "mistral-instruct" and not done(path):
            testmodel.write_variant(base(), path, testmodel.INSTRUCT_V02, testmodel.STRICT_INST_TEMPLATE)
        elif kind == "mistral-awq" and not done(path):
            testmodel.build_awq(path, mistral_awq_cfg, device=device)
        elif kind == "mistral-instruct-awq" and not done(path):
            awq = out / "mistral-awq"
            if not done(awq):
                testmodel.build_awq(awq, mistral_awq_cfg, device=device)
            testmodel.write_variant(awq, path, testmodel.INSTRUCT_V02, testmodel.STRICT_INST_TEMPLATE)
        elif kind in ("llama8b-awq", "llama8b") and not done(path):
            build_llama(path, kind, llama_cfg, device)
        folders[model_id] = path
    return {k: str(v) for k, v in folders.items()}


def build_llama(path: str | Path, kind: str, config: dict | None = None, device: str = "cuda") -> Path:
    """The Llama-3.1-8B-shaped stand-in of a judge model (``kind`` llama8b-awq or llama8b; ``model_kind``) with
    the course's ``[INST]`` template: random packed AWQ weights, or random bfloat16 weights."""
    from . import chatformat, testmodel

    config = dict(config or testmodel.LLAMA31_8B)
    if kind == "llama8b-awq":
        return testmodel.build_awq(path, config, device=device, chat_template=chatformat.INST_TEMPLATE)
    return testmodel.build_config(path, config, device=device, chat_template=chatformat.INST_TEMPLATE)


def rehearsal_name(profile_name: str) -> str:
    return f"{profile_name}-rehearsal"


def profile_block(profile_name: str, models: dict[str, str]) -> dict[str, Any]:
    """The profile's YAML block with local model folders, card emulation and small samples."""
    raw = _raw_profiles()
    if profile_name not in raw:
        raise RehearsalError(f"Unknown profile '{profile_name}'.")
    block = copy.deepcopy(raw[profile_name])
    if block.get("device") != "cuda" or not block.get("card_gb"):
        raise RehearsalError(f"Profile '{profile_name}' names no GPU card (`card_gb`): nothing to rehearse.")
    for field in MODEL_FIELDS:
        if block.get(field):
            block[field] = models[block[field]]
    if block.get("base_model") is None and block.get("model") != block.get("train_model"):
        block["base_model"] = block["train_model"]   # served weights (AWQ) derive from the training base
    block["description"] = f"Generalprobe von '{profile_name}': 7B-Form, Zufallsgewichte, Karte {block['card_gb']} GB"
    block["emulate_card"] = True
    for section, values in SMALL.items():
        block[section] = {**block.get(section, {}), **values}
    return block


def write_profile(profile_name: str, models: dict[str, str], out_dir: str | Path) -> Path:
    """Add ``<profile>-rehearsal`` to ``out_dir/profiles.yaml`` (kept: several profiles may be rehearsed)."""
    path = Path(out_dir) / "profiles.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data[rehearsal_name(profile_name)] = profile_block(profile_name, models)
    # atomic: notebooks of another rehearsal (other GPU) may read this file while it is rewritten
    return io.write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def prepare(profile: Profile, out_dir: str | Path) -> Path:
    """Models and profile file for the rehearsal of ``profile``; returns the profile file."""
    models = build_models(profile, Path(out_dir) / "models")
    return write_profile(profile.name, models, out_dir)


def run(profile: Profile, out_dir: str | Path, start: str | None = None, only: list[str] | None = None,
        run_dir: str | Path | None = None, shared_gpu: bool = False) -> Path:
    """Run the notebooks on ``<profile>-rehearsal`` (metrics are not checked: the weights are random).

    ``shared_gpu``: several lanes run on one large GPU; memory is counted per lane (the run folder names the
    lane's scope, ``gpumem.SCOPE_ENV``), vLLM gets its KV cache from the emulated card instead of measuring the
    shared GPU (``gpumem.shared_gpu_kv_bytes``), and an engine start that failed anyway is retried.
    """
    from . import course

    profiles_file = prepare(profile, out_dir)
    os.environ[EXTRA_PROFILES_ENV] = str(profiles_file)
    run_dir = Path(run_dir) if run_dir else Path(out_dir) / f"run-{profile.name}"
    if shared_gpu:
        os.environ[gpumem.SCOPE_ENV] = str(run_dir.resolve())
    try:
        # every notebook is tried: one failure (e.g. 07 with random weights) does not hide the others' results
        course.run_course(rehearsal_name(profile.name), only=only, start=start, run_dir=run_dir, check=False,
                          keep_going=True)
    finally:
        io.write_json(run_dir / "rehearsal.json", summary(run_dir, profile))
    return run_dir


def summary(run_dir: str | Path, profile: Profile) -> dict[str, Any]:
    """Per notebook: status, seconds, peak GPU memory vs the card, engine starts (from the run's files)."""
    import torch

    run_dir = Path(run_dir)
    state = io.read_json(run_dir / "course_state.json") if (run_dir / "course_state.json").exists() else {}
    starts: dict[str, list[float]] = {}
    path = run_dir / "engine_starts.jsonl"
    if path.exists():
        for rec in io.read_jsonl(path):
            starts.setdefault(rec["notebook"], []).append(rec["seconds"])
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    rows = []
    for nb_id, entry in (state.get("notebooks") or {}).items():
        peak = entry.get("gpu_peak_gb")
        rows.append({"notebook": nb_id, "status": entry.get("status"), "seconds": entry.get("seconds"),
                     "gpu_peak_gb": peak, "card_gb": profile.card_gb,
                     "within_card": None if peak is None else peak <= profile.card_gb,
                     "engine_starts_s": starts.get(nb_id, [])})
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "vllm", "transformers", "peft", "bitsandbytes"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"profile": profile.name, "card_gb": profile.card_gb, "device": device, "versions": versions,
            "notebooks": rows}


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("rehearsal", help="GPU dress rehearsal: the course on l4/t4/h100 at 7B shape, random weights")
    p.add_argument("action", choices=["prepare", "run", "summary"],
                   help="prepare: build the random-weight models and <profile>-rehearsal; run: execute the notebooks")
    profile_arg(p, profile)
    p.add_argument("--out", default="runs/rehearsal", help="folder for models, profile file and runs")
    p.add_argument("--from", dest="start", default=None, help="resume from this notebook id")
    p.add_argument("--only", nargs="+", default=None, help="notebook ids")
    p.add_argument("--run-dir", default=None,
                   help="run folder (default OUT/run-PROFILE); separate folders let one profile run on several GPUs")
    p.add_argument("--shared-gpu", action="store_true",
                   help="this lane shares its GPU with other lanes: count only its own processes' memory and "
                        "give vLLM its KV cache from the emulated card")
    p.set_defaults(func=cmd_rehearsal)


def cmd_rehearsal(args) -> int:
    profile = args.profile
    if args.action == "prepare":
        print(prepare(profile, args.out))
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.out) / f"run-{profile.name}"
    if args.action == "summary":
        print(json.dumps(summary(run_dir, profile), indent=1))
        return 0
    run_dir = run(profile, args.out, start=args.start, only=args.only, run_dir=run_dir, shared_gpu=args.shared_gpu)
    print(json.dumps(io.read_json(run_dir / "rehearsal.json"), indent=1))
    return 0
