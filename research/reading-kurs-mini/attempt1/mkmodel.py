"""Put a model folder into the course layout (COURSE_MODELS_DIR/kurs-mini) with a build_info the frozen
worktree's kursmini.ensure() accepts. Usage: mkmodel.py SRC_DIR|random:H:L DEST_MODELS_DIR"""
import json, os, shutil, sys, hashlib
from pathlib import Path
from helpers import kursmini, paths
src, dest = sys.argv[1], Path(sys.argv[2]) / "kurs-mini"
dest.mkdir(parents=True, exist_ok=True)
if src.startswith("random:"):
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    _, H, L = src.split(":"); H, L = int(H), int(L)
    tok = AutoTokenizer.from_pretrained(Path(__file__).parent / "data" / "tokenizer")
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=H * 8 // 3 // 64 * 64, num_hidden_layers=L,
                        num_attention_heads=H // 64, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                        sliding_window=None, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    MistralForCausalLM(cfg).to(torch.bfloat16).save_pretrained(dest); tok.save_pretrained(dest)
    extra = {}
else:
    for f in os.listdir(src):
        shutil.copy(Path(src) / f, dest / f)
    extra = json.load(open(Path(src) / "pretrain_info.json"))["recipe"]
info = {"name": "Kurs-Mini (reading)", "fingerprint": kursmini.build_fingerprint(paths.corpus_dir(), kursmini.BuildConfig()),
        "note": "research build from .scratch/reading; fingerprint set so the frozen ensure() accepts it",
        "model_sha256": hashlib.sha256((dest / "model.safetensors").read_bytes()).hexdigest(), "recipe": extra}
json.dump(info, open(dest / "build_info.json", "w"), indent=1, default=str)
print(dest, info["model_sha256"][:16])
