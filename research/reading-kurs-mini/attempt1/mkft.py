"""Fine-tuning data for the course's train step: synthetic extractive QA from training-split documents + gold
train pairs with extractive answers. Usage: mkft.py OUT.jsonl N_SYN P_ABSENT [with_gold_orig]"""
import json, sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import gen
D = Path(__file__).parent / "data"
rd = lambda p: [json.loads(l) for l in open(D / p, encoding="utf-8")]
planted = {l.split("\t")[2].strip() for l in open(Path(__file__).parents[2] / "data/pii/planted_pii.tsv").read().splitlines()[1:] if l.strip()}
syn = gen.ft_records(rd("docs_train.jsonl"), int(sys.argv[2]), 7, planted, p_absent=float(sys.argv[3]))
gx = [gen.extractive_gold(r) for r in rd("gold_train.jsonl")]
recs = syn + gx + ([{**r, "source": "gold"} for r in rd("gold_train.jsonl")] if len(sys.argv) > 4 else [])
with open(sys.argv[1], "w", encoding="utf-8") as f:
    for r in recs: f.write(json.dumps(r, ensure_ascii=False) + "\n")
print(len(recs))
