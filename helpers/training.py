"""QLoRA fine-tuning: training records → chat-template examples with completion-only labels → peft LoRA on a
bitsandbytes NF4 base model with the transformers Trainer → an adapter vLLM loads with ``LoRARequest``.

Decisions (and the traps of the original blog series they avoid):

* The prompt is rendered by the tokenizer's chat template with the course's system prompt, exactly as
  offline inference and ``vllm serve`` render it.
* Labels come from token positions: the prompt (``add_generation_prompt=True``) must be a token prefix of
  the full conversation; only the assistant span and its EOS are labelled. Nothing searches decoded text.
* pad_token is distinct from eos_token. With ``pad_as_eos=True`` and the language-modelling collator the
  course reproduces the pad_token bug on purpose (every EOS is masked out of the labels).
* An example longer than ``max_length`` is rejected with a reason instead of being truncated, because
  truncation would cut the answer and its EOS -- the very token the model must learn.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import resource
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import dataset, gpumem, io, models
from .labels import COLLATORS, TrainingDataError, encode_records, load_tokenizer, make_collator
from .profiles import Profile

STAGE = "train"  # rejects go to rejects/train.jsonl (see dataset.rejects_file)



# --------------------------------------------------------------------------- records
def fingerprint(records: Iterable[dict]) -> str:
    """A stable SHA-256 over the records (order included): which data trained an adapter."""
    digest = hashlib.sha256()
    for rec in records:
        digest.update(json.dumps(rec, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def validate_records(records: list[dict], source: str = "", rejects_path: str | Path | None = None,
                     stage: str = "train") -> list[dict]:
    """Keep records with a non-empty question (or a ``messages`` prompt) and answer; the others go to
    ``rejects_path`` with a reason."""
    good, bad = [], []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            bad.append({"record": rec, "reason": f"line {i + 1} is not a JSON object", "stage": stage})
            continue
        needed = ("answer",) if isinstance(rec.get("messages"), list) else ("question", "answer")
        missing = [k for k in needed if not str(rec.get(k) or "").strip()]
        if missing:
            bad.append({**rec, "reason": f"missing or empty field(s): {', '.join(missing)}", "stage": stage})
            continue
        good.append(rec)
    if bad:
        if rejects_path:
            io.append_jsonl(rejects_path, bad)
        where = f" (written to {rejects_path})" if rejects_path else ""
        warnings.warn(f"{len(bad)} of {len(records)} records in {source or 'the training data'} rejected{where}: "
                      f"{bad[0]['reason']}", stacklevel=2)
    if not good:
        raise TrainingDataError(
            f"No usable training records in {source or 'the data'}: {len(records)} read, {len(bad)} rejected. "
            "Each JSONL line needs non-empty 'question' and 'answer' (and usually 'context'); see the QA record in docs/architecture.md.")
    return good


def load_records(path: str | Path, rejects_path: str | Path | None = None) -> list[dict]:
    """Read a QA JSONL file for training; empty or malformed files fail with a message that says what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Training file {path} does not exist. Write the split first "
                                "(notebook 04 or `python -m helpers split`).")
    try:
        records = io.read_jsonl(path)
    except UnicodeDecodeError as exc:
        raise TrainingDataError(f"{path} is not UTF-8 text ({exc}); export it as JSONL in UTF-8.") from exc
    except ValueError as exc:
        raise TrainingDataError(f"{exc}. Training needs one JSON object per line.") from exc
    if not records:
        raise TrainingDataError(f"Training file {path} is empty: it needs one QA record per line "
                                "({'question': ..., 'answer': ..., 'context': ...}).")
    return validate_records(records, str(path), rejects_path)


def training_records(work_dir: str | Path, rejects_path: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """The course's training and evaluation records.

    train: the gold training split, PII-scrubbed (``source="gold"``), plus, where notebook 07 has written them,
    the QC-accepted generated pairs in ``<work_dir>/data/qa_accepted.jsonl`` (``source="generated"``; QC rejects
    any pair with personal data). No planted personal value reaches the adapter's weights.
    eval: the gold evaluation split (``source="gold"``), leak-free by document, PII-scrubbed like everything a model
    sees (a model that reads would otherwise copy planted names from the eval contexts into its answers).
    """
    from . import qc, split

    splits = split.gold_splits()
    train = [{**qc.scrub_record(r), "source": "gold"} for r in splits["train"]]
    evaluation = [{**r, "source": "gold"} for r in split.gold_eval()]
    accepted = dataset.files(work_dir).accepted
    if accepted.exists() and not accepted.read_text(encoding="utf-8", errors="replace").strip():
        print(f"{accepted} holds no QC-accepted pairs (notebook 07 accepted none): training on gold only.")
    elif accepted.exists():
        generated = load_records(accepted, rejects_path)
        eval_docs = {r["doc_id"] for r in evaluation}

        def doc_of(rec: dict) -> str:  # chunk ids are "<doc_id>#c<position>" (helpers.chunking.chunk_id)
            return rec.get("doc_id") or str(rec.get("chunk_id", "")).split("#c")[0]

        leaking = [r for r in generated if doc_of(r) in eval_docs]
        if leaking and rejects_path:
            io.append_jsonl(rejects_path, [{**r, "reason": "document is in the eval split (leak)",
                                            "stage": "train"} for r in leaking])
        train += [{**r, "source": "generated"} for r in generated if doc_of(r) not in eval_docs]
    return train, evaluation


def answer_targets(records: list[dict], target: str = "reference") -> list[dict]:
    """What each record teaches (``TrainSettings.answer_target``). ``reference``: the records as they are.
    ``context``: answerable gold and generated records answer with their whole context -- a model too small to
    paraphrase (Kurs-Mini) learns to quote the passage instead of imitating wording it cannot produce (generated
    pairs too, so notebook 07 compares the data, not two different tasks). Unanswerable records keep the refusal;
    the original answer stays in ``reference_answer``; records without a source (hand-made files) never change.
    ``train`` applies it to the training and the eval records (so the eval loss measures the same task)."""
    if target == "reference":
        return list(records)
    if target != "context":
        raise ValueError(f"Unknown answer_target '{target}': reference or context")
    return [{**r, "answer": r["context"], "reference_answer": r.get("reference_answer", r["answer"]),
             "answer_target": "context"}
            if r.get("source") in ("gold", "generated") and r.get("type") != "unanswerable" and r.get("context")
            else r
            for r in records]


# --------------------------------------------------------------------------- model
def torch_dtype(profile: Profile):
    import torch

    return getattr(torch, profile.resolved_dtype("train_dtype"))


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")   # /proc/cpuinfo flags of native bfloat16 matrix instructions


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (Linux: the flags in /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def compute_dtype(profile: Profile) -> str:
    """The dtype of the frozen NF4 matmuls (``train.compute_dtype``, see profiles.TrainSettings)."""
    wanted = profile.train.compute_dtype
    train = profile.resolved_dtype("train_dtype")
    if wanted is None:
        return train
    if wanted == "bfloat16-if-native":
        return "bfloat16" if profile.device == "cpu" and cpu_has_native_bf16() else train
    return wanted


def load_model(profile: Profile, model_dir: str):
    """The base model in NF4 (double quant) when the profile asks for it, prepared for k-bit training."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch_dtype(profile)
    device_map = {"": 0} if profile.device == "cuda" else {"": "cpu"}
    if profile.emulate_card and torch.cuda.is_available():   # dress rehearsal: this process sees only the card
        torch.cuda.set_per_process_memory_fraction(profile.card_share(), 0)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device_map}
    quantize = profile.train.quantize_4bit
    if quantize:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, compute_dtype(profile)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    checkpointing = profile.train.gradient_checkpointing
    if quantize:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    elif checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return model


def lora_config(profile: Profile):
    from peft import LoraConfig

    lora = profile.lora
    rank_limit = profile.vllm.max_lora_rank
    if lora.r > rank_limit:
        raise ValueError(f"LoRA rank {lora.r} exceeds vLLM's max_lora_rank {rank_limit} in profile "
                         f"'{profile.name}': the adapter would not load for serving. Lower lora.r.")
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, bias="none", task_type="CAUSAL_LM")


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    adapter_dir: Path
    info: dict

    def __getitem__(self, key: str):
        return self.info[key]


def peak_memory_mb(profile: Profile) -> float:
    """Peak GPU memory of this process (CUDA) or its peak resident set size (CPU), in MB."""
    if profile.device == "cuda":
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train(profile: Profile, train_records: list[dict], eval_records: list[dict] | None, output_dir: str | Path,
          pad_as_eos: bool = False, collator: str = "completion", resume: bool = False,
          tracker=None, rejects_path: str | Path | None = None, max_steps: int | None = None,
          progress: bool = True, run_name: str | None = None) -> TrainResult:
    """QLoRA-train an adapter into ``output_dir`` (checkpoints in ``output_dir``.checkpoints, resumable).

    On a GPU the training runs in a process of its own (``own_process``), so the card is empty again when it
    returns and the engine a notebook starts next gets the memory the profile plans for it."""
    kwargs = dict(pad_as_eos=pad_as_eos, collator=collator, resume=resume, tracker=tracker,
                  rejects_path=rejects_path, max_steps=max_steps, progress=progress, run_name=run_name)
    if not own_process(profile):
        return _train(profile, train_records, eval_records, output_dir, **kwargs)
    from . import childproc

    result = childproc.run(_train, profile, train_records, eval_records, output_dir, what="The training process",
                           **kwargs)
    if tracker is not None:   # the child logged the run; this tracker names it as if it had
        tracker.run_id = result.info.get("mlflow_run_id")
    return result


def own_process(profile: Profile) -> bool:
    """Train in a separate process: on CUDA (see helpers/childproc.py for what stays on the card otherwise)."""
    return profile.device == "cuda"


def _train(profile: Profile, train_records: list[dict], eval_records: list[dict] | None, output_dir: str | Path,
           pad_as_eos: bool = False, collator: str = "completion", resume: bool = False,
           tracker=None, rejects_path: str | Path | None = None, max_steps: int | None = None,
           progress: bool = True, run_name: str | None = None) -> TrainResult:
    import torch
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, set_seed

    profile.require_device()
    if collator not in COLLATORS:
        raise ValueError(f"Unknown collator '{collator}': choose one of {', '.join(COLLATORS)}")
    output_dir = Path(output_dir)
    rejects_path = rejects_path or dataset.rejects_file(output_dir, STAGE)
    cfg = dataclasses.replace(profile.train, max_steps=max_steps) if max_steps else profile.train
    train_records = validate_records(train_records, "the training records", rejects_path)
    data_records = train_records       # the data (its fingerprint); what it teaches is ``answer_target``
    train_records = answer_targets(train_records, cfg.answer_target)
    model_dir = models.resolve(profile, "train_model")
    tok = load_tokenizer(model_dir, pad_as_eos=pad_as_eos)
    train_enc = encode_records(tok, train_records, cfg.max_length, rejects_path, "(train)")
    eval_records = answer_targets(eval_records, cfg.answer_target) if eval_records else eval_records
    eval_enc = encode_records(tok, validate_records(eval_records, "the eval records", rejects_path, "eval"),
                              cfg.max_length, rejects_path, "(eval)") if eval_records else None
    capped = cfg.steps_for(len(train_enc))
    if not max_steps and capped != cfg.max_steps:
        print(f"{len(train_enc)} training examples: {capped} steps instead of {cfg.max_steps} "
              f"(train.max_epochs = {cfg.max_epochs}).")
        cfg = dataclasses.replace(cfg, max_steps=capped)

    set_seed(cfg.seed)
    if profile.device == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    advice = functools.partial(gpumem.training_advice, profile, cfg)
    with gpumem.advise(advice):
        model = get_peft_model(load_model(profile, model_dir), lora_config(profile))
    trainable, total = model.get_nb_trainable_parameters()
    dtype = profile.resolved_dtype("train_dtype")
    ckpt_dir = output_dir.parent / f"{output_dir.name}.checkpoints"
    steps = cfg.max_steps
    eval_every = cfg.eval_every
    args = TrainingArguments(
        output_dir=str(ckpt_dir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup, weight_decay=0.0,
        optim=cfg.optimizer, logging_steps=cfg.logging_steps, logging_first_step=True,
        eval_strategy="steps" if eval_enc else "no", eval_steps=eval_every,
        save_strategy="steps", save_steps=cfg.save_every, save_total_limit=2,
        train_sampling_strategy="group_by_length", length_column_name="length",
        gradient_checkpointing=False,  # already set up by prepare_model_for_kbit_training
        bf16=profile.device == "cuda" and dtype == "bfloat16", fp16=profile.device == "cuda" and dtype == "float16",
        use_cpu=profile.device == "cpu", report_to="none", remove_unused_columns=False,
        dataloader_pin_memory=profile.device == "cuda", seed=cfg.seed, disable_tqdm=not progress,
    )
    callbacks = []  # without tqdm the Trainer prints each log line itself
    run_info = {**recipe(profile, data_records, pad_as_eos, collator, n_examples=len(train_enc)),
                "max_steps": steps,    # the profile's step count unless ``max_steps`` overrides it
                "base_model": model_dir, "chat_template": getattr(tok, "course_template", "tokenizer"),
                "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                "target_modules": profile.lora.target_modules, "train_dtype": dtype,
                "compute_dtype": compute_dtype(profile) if cfg.quantize_4bit else None,
                "gradient_checkpointing": cfg.gradient_checkpointing,
                "train_examples": len(train_enc), "eval_examples": len(eval_enc or []),
                "train_tokens": sum(e["length"] for e in train_enc),
                "sources": {s: sum(r.get("source") == s for r in train_records) for s in ("gold", "generated")},
                "trainable_parameters": trainable, "total_parameters": total}
    if tracker is not None:
        tracker.start(run_name or output_dir.name, params=run_info,
                      tags={"adapter": output_dir.name, "dataset_fingerprint": run_info["dataset_fingerprint"]})
        callbacks.append(tracker.callback())
    checkpoint = None
    if resume:
        existing = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        checkpoint = str(existing[-1]) if existing else None
        print(f"Resuming from {checkpoint}" if checkpoint else f"--resume: no checkpoint in {ckpt_dir}, starting fresh")
    try:  # from here on a tracked run exists: any failure marks it FAILED instead of leaving it RUNNING
        with gpumem.advise(advice):
            trainer = Trainer(model=model, args=args, train_dataset=_as_dataset(train_enc),
                              eval_dataset=_as_dataset(eval_enc) if eval_enc else None,
                              data_collator=make_collator(tok, collator), processing_class=tok, callbacks=callbacks)
            if not progress:   # one compact line per logging step instead of the Trainer's printed dicts
                from transformers.trainer_callback import PrinterCallback

                trainer.remove_callback(PrinterCallback)
                trainer.add_callback(_loss_line_callback(steps))
            if profile.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0, cpu0 = time.time(), time.process_time()
            out = trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        if tracker is not None:
            tracker.end(status="FAILED")
        raise
    seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
    history = trainer.state.log_history
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    eval_losses = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    trained_tokens = run_info["train_tokens"] / len(train_enc) * steps * cfg.batch_size * cfg.grad_accum
    info = {**run_info, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "threads": torch.get_num_threads(),
            "train_loss": out.training_loss,
            "loss_first": losses[0][1] if losses else None, "loss_last": losses[-1][1] if losses else None,
            "eval_loss_last": eval_losses[-1][1] if eval_losses else None, "losses": losses,
            "eval_losses": eval_losses, "peak_memory_mb": peak_memory_mb(profile),
            "memory_kind": "cuda_max_allocated" if profile.device == "cuda" else "process_max_rss",
            "tokens_per_s": round(trained_tokens / seconds, 1) if seconds else None,
            "resumed_from": checkpoint, "global_step": trainer.state.global_step}
    save_adapter(model, tok, output_dir, info)
    if tracker is not None:
        tracker.log_metrics({"train_seconds": info["seconds"], "peak_memory_mb": info["peak_memory_mb"]})
        tracker.log_artifacts(output_dir, "adapter")
        info["mlflow_run_id"] = tracker.run_id
        tracker.end()
        io.write_json(output_dir / "training_info.json", info)
    del trainer, model
    gpumem.release_cached()     # in-process training (CPU): the model's memory back before an engine starts
    return TrainResult(output_dir, info)


def _as_dataset(examples: list[dict]):
    """A ``datasets.Dataset`` of the encoded examples; a plain list (which the Trainer also takes) where the
    ``datasets`` package is missing, as on a bare GPU runner."""
    try:
        from datasets import Dataset
    except ImportError:
        return examples
    return Dataset.from_list(examples)


def _loss_line_callback(total_steps: int):
    from transformers import TrainerCallback

    class LossLine(TrainerCallback):
        """Prints ``Schritt 10/60 · Loss 5.213`` (and the eval loss) instead of the Trainer's log dicts."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            parts = [f"Loss {logs['loss']:.3f}" if "loss" in logs else "",
                     f"Eval-Loss {logs['eval_loss']:.3f}" if "eval_loss" in logs else ""]
            if any(parts):
                print(f"Schritt {state.global_step}/{total_steps} · " + " · ".join(p for p in parts if p), flush=True)

    return LossLine()


def save_adapter(model, tokenizer, output_dir: Path, info: dict) -> Path:
    """Save adapter and training_info.json atomically (a half-written adapter never appears)."""
    tmp = output_dir.parent / f".{output_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))  # the base model's tokenizer stays the source of truth for vLLM
    io.write_json(tmp / "training_info.json", info)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(tmp, output_dir)
    return output_dir


# --------------------------------------------------------------------------- adapters
def adapters_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "adapters"


def adapter_info(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir) / "training_info.json"
    return io.read_json(path) if path.exists() else None


def recipe(profile: Profile, records: list[dict], pad_as_eos: bool = False, collator: str = "completion",
           n_examples: int | None = None) -> dict:
    """What decides an adapter's weights besides the seed, as ``training_info.json`` records it: the data
    (fingerprint), profile, pad/collator setting, answer target, step count (for ``n_examples`` encoded examples,
    default: one per record), batch size, learning rate, sequence length, optimizer, quantization, LoRA rank/alpha
    and base model. The eval records do not change the weights, so they are not part of it."""
    cfg = profile.train
    return {"profile": profile.name, "pad_as_eos": pad_as_eos, "collator": collator,
            "dataset_fingerprint": fingerprint(records), "answer_target": cfg.answer_target,
            "max_steps": cfg.steps_for(len(records) if n_examples is None else n_examples),
            "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate, "grad_accum": cfg.grad_accum,
            "max_length": cfg.max_length, "optimizer": cfg.optimizer, "quantize_4bit": cfg.quantize_4bit,
            "lora_r": profile.lora.r, "lora_alpha": profile.lora.alpha, "base_model_id": profile.train_model}


def same_recipe(adapter_dir: str | Path, profile: Profile, records: list[dict], pad_as_eos: bool = False,
                collator: str = "completion") -> bool:
    """Whether the adapter in ``adapter_dir`` is what ``train(profile, records, ...)`` would make now (``recipe``;
    the step count for the examples that survived encoding, as the run recorded them)."""
    info = adapter_info(adapter_dir)
    if not info or not (Path(adapter_dir) / "adapter_config.json").exists():
        return False
    wanted = recipe(profile, records, pad_as_eos, collator, n_examples=info.get("train_examples"))
    return all(info.get(k) == v for k, v in wanted.items())


def copy_adapter(source: str | Path, target: str | Path) -> Path:
    """Copy a trained adapter under a new name (atomically; ``training_info.json`` records ``copied_from``)."""
    source, target = Path(source), Path(target)
    tmp = target.with_name(f".{target.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    info = adapter_info(tmp) or {}
    io.write_json(tmp / "training_info.json", {**info, "copied_from": source.name})
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def ensure_adapter(profile: Profile, work_dir: str | Path, name: str = "fixed", pad_as_eos: bool = False,
                   collator: str = "completion", tracker=None, progress: bool = False) -> Path:
    """The adapter ``<work_dir>/adapters/<name>``, trained on ``training_records(work_dir)`` if it is missing
    (or was trained with another profile or another pad/collator setting)."""
    target = adapters_dir(work_dir) / name
    info = adapter_info(target)
    if (info and (target / "adapter_config.json").exists() and info.get("profile") == profile.name
            and info.get("pad_as_eos") == pad_as_eos and info.get("collator") == collator
            and info.get("answer_target", "reference") == profile.train.answer_target):
        return target
    print(f"Adapter '{name}' not found in {target.parent}: training it now "
          f"(pad_as_eos={pad_as_eos}, collator={collator}).", flush=True)
    rejects = dataset.files(work_dir).rejects(STAGE)
    train_recs, eval_recs = training_records(work_dir, rejects_path=rejects)
    if tracker is None:
        from . import tracking

        tracker = tracking.Tracker(tracking.local_uri(work_dir), experiment="qlora",
                                   artifact_root=tracking.local_artifact_root(work_dir))
    train(profile, train_recs, eval_recs, target, pad_as_eos=pad_as_eos, collator=collator, tracker=tracker,
          rejects_path=rejects, progress=progress, run_name=name)
    return target


# --------------------------------------------------------------------------- reporting
def report_table(info: dict):
    """The numbers of one training run worth showing (time, memory, throughput, losses, data)."""
    import pandas as pd

    keys = [("seconds", "Trainingszeit (s)"), ("max_steps", "Schritte"), ("batch_size", "Batchgröße"),
            ("train_examples", "Trainingsbeispiele"), ("tokens_per_s", "Tokens/s (Training)"),
            ("peak_memory_mb", f"Spitzenspeicher (MB, {info.get('memory_kind')})"),
            ("train_dtype", "Trainings-dtype"), ("compute_dtype", "NF4-Rechen-dtype"),
            ("trainable_parameters", "trainierbare Parameter (LoRA)"), ("total_parameters", "Parameter gesamt"),
            ("loss_first", "Loss am Anfang"), ("loss_last", "Loss am Ende"), ("eval_loss_last", "Eval-Loss am Ende"),
            ("dataset_fingerprint", "Datensatz-Fingerprint")]
    return pd.DataFrame([(label, info.get(key)) for key, label in keys], columns=["Größe", "Wert"])


def plot_losses(runs: dict[str, dict], title: str = "Loss während des Trainings"):
    """Training (solid) and eval loss (dashed markers) per step for one or more runs' training_info."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, info in runs.items():
        if info.get("losses"):
            steps, values = zip(*info["losses"])
            line, = ax.plot(steps, values, label=f"{name} (train)")
            if info.get("eval_losses"):
                e_steps, e_values = zip(*info["eval_losses"])
                ax.plot(e_steps, e_values, "o--", color=line.get_color(), label=f"{name} (eval)")
    ax.set_xlabel("Schritt")
    ax.set_ylabel("Loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("train", help="QLoRA-train a LoRA adapter (NF4 base, completion-only labels with EOS)")
    profile_arg(p, profile)
    p.add_argument("--train", required=True, help="training QA JSONL (question, answer, context)")
    p.add_argument("--eval", default=None, help="evaluation QA JSONL (eval loss during training)")
    p.add_argument("--output", required=True, help="adapter directory (checkpoints go beside it)")
    p.add_argument("--rejects", default=None, help=f"rejects JSONL (default: rejects/{STAGE}.jsonl beside --output)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--pad-as-eos", action="store_true", help="set pad_token = eos_token (the bug, on purpose)")
    p.add_argument("--collator", choices=COLLATORS, default="completion",
                   help="completion: labels only the answer + EOS; lm: DataCollatorForLanguageModeling")
    p.add_argument("--max-steps", type=int, default=profile.train.max_steps,
                   help="training steps (default: the profile's train.max_steps, %(default)s)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the local sqlite store)")
    p.add_argument("--experiment", default="qlora", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from . import tracking

    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    train_recs = load_records(args.train, rejects)
    eval_recs = load_records(args.eval, rejects) if args.eval else None
    tracker = None if args.no_tracking else tracking.Tracker(
        args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), experiment=args.experiment)
    result = train(args.profile, train_recs, eval_recs, args.output, pad_as_eos=args.pad_as_eos,
                   collator=args.collator, resume=args.resume, tracker=tracker, rejects_path=rejects,
                   max_steps=args.max_steps)
    info = result.info
    print(f"Adapter saved to {result.adapter_dir}: {info['max_steps']} steps in {info['seconds']:.0f} s, loss "
          f"{info['loss_first']:.3f} -> {info['loss_last']:.3f}, eval loss {info['eval_loss_last']}, peak memory "
          f"{info['peak_memory_mb']:.0f} MB ({info['memory_kind']})")
    return 0
