"""Stage inputs for the reading Kurs-Mini (run on CPU, deterministic): PII-scrubbed documents outside the eval
split, gold train/eval splits, Kurs-Mini-style tokenizer trained on the scrubbed non-eval documents only.
Usage: PYTHONPATH=/work/reading-wt python prep.py OUTDIR"""
import hashlib, json, re, sys
from pathlib import Path
from helpers import documents, pii, split, paths
from helpers.kursmini import train_tokenizer

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rej = []
docs = documents.load_corpus(paths.corpus_dir(), rej)
scrubbed = pii.scrub_documents(docs)
sp = split.gold_splits()
eval_docs = {r["doc_id"] for r in sp["eval"]}

def shingles(t, n=5):
    w = re.findall(r"\w+", t.lower()); return {" ".join(w[i:i + n]) for i in range(max(0, len(w) - n + 1))}
sh = {d["doc_id"]: shingles(d["text"]) for d in scrubbed}
near = set()
for d in scrubbed:
    if d["doc_id"] in eval_docs: continue
    for e in eval_docs:
        a, b = sh[d["doc_id"]], sh.get(e, set())
        if a and b and len(a & b) / len(a | b) > 0.3: near.add(d["doc_id"])
train_docs = [d for d in scrubbed if d["doc_id"] not in eval_docs and d["doc_id"] not in near]
probe_docs = [d for d in scrubbed if d["doc_id"] in eval_docs]
w = lambda p, rs: open(out / p, "w", encoding="utf-8").write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rs))
w("docs_train.jsonl", [{"doc_id": d["doc_id"], "text": d["text"]} for d in train_docs])
w("docs_probe.jsonl", [{"doc_id": d["doc_id"], "text": d["text"]} for d in probe_docs])
w("gold_train.jsonl", sp["train"]); w("gold_val.jsonl", sp["val"]); w("gold_eval.jsonl", sp["eval"])
tok = train_tokenizer([d["text"] for d in train_docs], 4096)
tok.save_pretrained(out / "tokenizer")
h = hashlib.sha256("".join(d["doc_id"] + d["text"] for d in train_docs).encode()).hexdigest()[:16]
info = {"train_docs": len(train_docs), "probe_docs": len(probe_docs), "excluded_near_duplicates": sorted(near),
        "eval_docs": sorted(eval_docs), "scrubbed_corpus_sha256_16": h,
        "gold": {k: len(v) for k, v in sp.items()},
        "pii_counts": {t: sum(d["pii_counts"][t] for d in train_docs) for t in pii.PII_TYPES}}
json.dump(info, open(out / "prep_info.json", "w"), indent=1)
print(json.dumps(info)[:1500])
