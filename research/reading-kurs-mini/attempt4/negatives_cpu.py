"""Course path on CPU with extra unanswerable records: a gold question paired with the context of another answerable
record (same document or another one) that shares no content word with its answer.
Usage (repository root): .venv/bin/python research/reading-kurs-mini/attempt4/negatives_cpu.py SHARE same|other OUTDIR"""
import dataclasses, json, random, sys, time
from helpers.profiles import load_profile
from helpers import training, evaluation, qc, split, prompts
from helpers.evaluation import summarize
from helpers.textmetrics import tokens

share = float(sys.argv[1]); mode = sys.argv[2]; out = sys.argv[3]
p = load_profile("mini")
sp = split.gold_splits()
train = [{**qc.scrub_record(r), "source": "gold"} for r in sp["train"]]
rng = random.Random(0)
ans = [r for r in train if r["type"] != "unanswerable"]
def content(t): return {w for w in tokens(t) if len(w) >= 5}
extra = []
for r in rng.sample(ans, int(share * len(ans))):
    pool = [o for o in ans if (o["doc_id"] == r["doc_id"]) == (mode == "same") and o["id"] != r["id"]
            and not (content(r["answer"]) & content(o["context"]))]
    if not pool:
        continue
    o = rng.choice(pool)
    extra.append({**r, "id": r["id"] + "-neg", "context": o["context"], "answer": prompts.REFUSAL, "type": "unanswerable"})
print("extra negatives", len(extra), flush=True)
t0 = time.time()
res = training.train(p, train + extra, None, out, progress=False)
print("train_s", round(time.time() - t0, 1), flush=True)
ev = split.gold_eval()
items = evaluation.run(p, ev, adapters={"fixed": out}, progress=False)
s = summarize(items)["fixed"]
a = [i for i in items if i["variant"] == "fixed" and i["type"] != "unanswerable"]
print(json.dumps({m: round(s[m]["value"], 3) for m in ("stopped", "refusal_correct", "false_refusal", "grounded", "token_f1")}),
      "answerable_f1", round(sum(i["token_f1"] for i in a) / len(a), 3))
