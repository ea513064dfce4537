import json, sys, os, re
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, gen, run
from transformers import AutoTokenizer, AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); tok = AutoTokenizer.from_pretrained(sys.argv[1])
planted = run.planted_values()
pdocs = run.rd("docs_probe.jsonl")
items = gen.probe_items([s for s in (gen.sentences(d["text"]) for d in pdocs) if len(s) >= 4], 300, 4242, planted)[:int(sys.argv[2])]
for fmt in [("Kontext:\n", "\n\nFrage: ", "\nAntwort:"), ("Text: ", "\nFrage: ", "\nAntwort:")]:
    pr, outs = run.probe(m, tok, items, fmt)
    print(fmt, pr)
    for it, (o, _) in list(zip(items, outs))[:4]: print("  Q:", it["question"], "| A:", it["answer"][:80], "| O:", o[:80])
