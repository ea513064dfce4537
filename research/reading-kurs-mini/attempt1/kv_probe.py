"""Diagnostic: does the base model copy at all? Key-value retrieval with random keys (format of the pretraining kv task)."""
import json, os, random, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch, gen, run
from transformers import AutoTokenizer, AutoModelForCausalLM
torch.set_num_threads(2)
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32); tok = AutoTokenizer.from_pretrained(sys.argv[1])
docs = run.rd("docs_probe.jsonl")  # vocabulary from held-out documents
vocab = sorted({w for d in docs for x in gen.sentences(d["text"]) for w in gen.content_words(x) if len(w) >= 5})
rng = random.Random(99); items = []
while len(items) < int(sys.argv[2]):
    e = gen.kv_item(rng, vocab, gen.PRE_FORMATS[0])
    pre, ans = e.rsplit("\nAntwort: ", 1)
    items.append((pre + "\nAntwort:", ans.strip()))
outs = run.generate(m, tok, [p for p, _ in items], 24, eos_id=tok.eos_token_id, stop_newline=True)
acc = sum(o.strip() == a for (p, a), (o, _) in zip(items, outs)) / len(items)
print(json.dumps({"kv_exact_acc": round(acc, 3), "n": len(items)}))
for (p, a), (o, _) in list(zip(items, outs))[:3]: print("want:", a, "| got:", o)
