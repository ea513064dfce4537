"""Put the two GPU-built models into the course folder layout with build_info + MANIFEST.json.
Usage: PYTHONPATH=/work/reading-wt python dev/mkfinal.py   (run in .scratch/reading2)"""
import hashlib, json, os, shutil
from pathlib import Path
from helpers import kursmini, paths
H = Path(__file__).resolve().parent.parent
prep = json.load(open(H / "dev/data/prep_info.json"))
fp = kursmini.build_fingerprint(paths.corpus_dir(), kursmini.BuildConfig())
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
r6 = json.load(open(H / "gpu2/result_R6L.json")); pl = json.load(open(H / "gpu1/plain_info.json"))
specs = {
 "reading": (H / "gpu2/R6L", {
   "recipe": "reading curriculum v2 (answer-only loss on task items + 15% full-LM corpus rows; phase A copy tasks "
             "repeat/cloze/find/kv, B1 +extractive, B2 +15% absent); Mistral H256 L6 heads4 kv2 head_dim64 inter640, "
             "AdamW lr 2e-3 wd0.1, batch 128 task rows + 20x256 text rows, bf16 autocast; see .scratch/reading2/dev/run2.py",
   "command": "bash .scratch/reading2/dev/gpu2.sh  (on the device; exact re-run: STEPS=1059 HIDDEN=256 LAYERS=6 python run2.py train R6L POOLDIR OUT after python run2.py pool POOLDIR)",
   "seed": 0, "steps": r6["steps"], "params": r6["params"], "device": "1x NVIDIA H200 (gpu2 run)",
   "final_task_loss": r6["final_task_loss"], "final_text_loss": r6["final_text_loss"],
   "probe_accuracy": r6["probe"], "probe_n": r6["probe_n"], "gold_native_format": r6["gold_native"],
   "base_chat_stop_rate": r6["base_chat"]["stop_all"], "ft_check": {k: {x: y for x, y in v.items() if x != "examples"} for k, v in r6["ft"].items()}}),
 "plain": (H / "gpu1/plain", {
   "recipe": "today's kursmini.build (frozen 4fddc29) with BuildConfig defaults (H256 L4 inter768, 300 steps, batch 16x256, "
             "lr 3e-3, warmup 30, seed 1234, plain corpus LM, no EOS, fp32) but texts = PII-scrubbed non-eval documents and the "
             "4096-BPE trained on them; see run2.py plain()",
   "command": "PLAIN_THREADS=4 python .scratch/reading2/dev/run2.py plain OUTDIR  (run in gpu.sh, on the device's CPU)",
   "seed": 1234, "steps": 300, "params": pl["parameters"], "device": "CPU of the H200 host, torch threads=4 (gpu1 run)",
   "final_loss": pl["loss_last"], "probe_accuracy": None, "base_chat": pl["base_chat"],
   "base_chat_stop_rate": pl["base_chat"]["stop_all"]}),
}
for name, (src, meta) in specs.items():
    dest = H / "final" / name / "kurs-mini"
    shutil.rmtree(dest, ignore_errors=True); dest.mkdir(parents=True)
    for f in os.listdir(src):
        shutil.copy(src / f, dest / f)
    info = {"name": f"Kurs-Mini ({name})", "fingerprint": fp,
            "note": "research build from .scratch/reading2; fingerprint set so the frozen 4fddc29 ensure() accepts it",
            "model_sha256": sha(dest / "model.safetensors"), "recipe": meta["recipe"]}
    json.dump(info, open(dest / "build_info.json", "w"), indent=1)
    man = {**meta, "corpus": {"scrubbed_corpus_sha256_16": prep["scrubbed_corpus_sha256_16"], "train_docs": prep["train_docs"],
                             "eval_docs_excluded": prep["eval_docs"]},
           "files": {f: sha(dest / f) for f in sorted(os.listdir(dest))}}
    json.dump(man, open(dest.parent / "MANIFEST.json", "w"), indent=1, ensure_ascii=False)
    print(dest, info["model_sha256"][:16], sum((dest / f).stat().st_size for f in os.listdir(dest)) // 1024, "KiB")
