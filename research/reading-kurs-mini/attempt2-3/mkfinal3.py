"""Package the gpu3 model R6X into the course folder layout (as mkfinal.py did for R6L) + learning curve CSV.
Usage: PYTHONPATH=/work/reading-wt /work/main/.venv/bin/python dev/mkfinal3.py   (run in .scratch/reading2)"""
import csv, hashlib, json, os, shutil
from pathlib import Path
from helpers import kursmini, paths
H = Path(__file__).resolve().parent.parent
prep = json.load(open(H / "dev/data/prep_info.json"))
fp = kursmini.build_fingerprint(paths.corpus_dir(), kursmini.BuildConfig())
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
r = json.load(open(H / "gpu3/result_R6X.json"))
meta = {
    "recipe": "reading curriculum v3 (answer-only loss on task items + 5%-weighted full-LM corpus rows, 8x256 per step; "
              "phase A (first 35% of steps) copy tasks repeat/cloze/find/kv, B1 (35-60%) +extractive, B2 (last 40%) +15% absent); "
              "Mistral H256 L6 heads4 kv2 head_dim64 inter640, AdamW lr 2e-3 wd0.1 warmup 150 cosine to 10%, batch 128 task rows, "
              "bf16 autocast; see .scratch/reading2/dev/run3.py",
    "command": "bash .scratch/reading2/dev/gpu3.sh  (on the device; exact re-run: python run2.py pool POOLDIR && STEPS=%d HIDDEN=256 "
               "LAYERS=6 TEXT_W=0.05 TEXT_ROWS=8 PHASE_A=0.35 PHASE_B=0.60 python run3.py train R6X POOLDIR OUT)" % r["steps"],
    "seed": r["seed"], "steps": r["steps"], "steps_done": r["steps_done"], "stopped_by_guard": r["stopped_by_guard"],
    "params": r["params"], "device": "1x NVIDIA H200 (gpu3 run), pretraining %.1f s incl. %.1f s probes" % (r["pretrain_s"], r["probe_s"]),
    "final_task_loss": r["final_task_loss"], "final_text_loss": r["final_text_loss"],
    "probe_accuracy": r["probe"], "probe_n": r["probe_n"], "gold_native_format": r.get("gold_native"),
    "base_chat_stop_rate": r["base_chat"]["stop_all"] if "base_chat" in r else None, "base_chat": r.get("base_chat"),
    "ft_check": {k: {x: y for x, y in v.items() if x != "examples"} for k, v in r.get("ft", {}).items()},
    "skipped": r.get("skipped", []),
}
src, dest = H / "gpu3/R6X", H / "final3/reading/kurs-mini"
shutil.rmtree(dest, ignore_errors=True); dest.mkdir(parents=True)
for f in os.listdir(src):
    shutil.copy(src / f, dest / f)
info = {"name": "Kurs-Mini (reading)", "fingerprint": fp,
        "note": "research build from .scratch/reading2 (gpu3, R6X); fingerprint set so the frozen 4fddc29 ensure() accepts it",
        "model_sha256": sha(dest / "model.safetensors"), "recipe": meta["recipe"]}
json.dump(info, open(dest / "build_info.json", "w"), indent=1)
man = {**meta, "corpus": {"scrubbed_corpus_sha256_16": prep["scrubbed_corpus_sha256_16"], "train_docs": prep["train_docs"],
                         "eval_docs_excluded": prep["eval_docs"]},
       "files": {f: sha(dest / f) for f in sorted(os.listdir(dest))}}
json.dump(man, open(dest.parent / "MANIFEST.json", "w"), indent=1, ensure_ascii=False)
print(dest, info["model_sha256"][:16], sum((dest / f).stat().st_size for f in os.listdir(dest)) // 1024, "KiB")
# learning curve: previous rows (R4, R6, R6L) + R6X
lc = H / "final3/learning_curve.csv"
shutil.copy(H / "learning_curve.csv", lc)
cols = next(csv.reader(open(lc)))
with open(lc, "a", newline="") as f:
    w = csv.writer(f)
    for row in r["curve"]:
        d = {"run": "gpu3", "model": "R6X", "params": r["params"], "layers": r["layers"], "total_steps": r["steps"], **row}
        w.writerow([d[c] for c in cols])
print(lc, len(r["curve"]), "rows appended")
