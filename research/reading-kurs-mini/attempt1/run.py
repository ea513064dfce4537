"""Reading Kurs-Mini: pretraining with a reading curriculum + probe learning curve, then fine-tuning ablations
(course recipe emulated in peft: LoRA r16 all-linear, lr 2e-3, batch 8, completion-only labels + EOS) evaluated
on the gold eval split with the course's per-item metrics. Deterministic given seeds.

  python run.py pool DIR               # build the pretraining pool (token streams) -> DIR/pool.pt
  python run.py train NAME DIR OUTDIR  # pretrain model NAME (env HIDDEN LAYERS INTER BUDGET_S), probe, ablations
"""
import json, math, os, random, re, sys, time
from collections import Counter
from multiprocessing import Pool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen  # noqa: E402

DATA = os.path.join(HERE, "data")
SEED = int(os.environ.get("SEED", "0"))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))


def rd(p):
    return [json.loads(l) for l in open(os.path.join(DATA, p), encoding="utf-8") if l.strip()]


def planted_values():
    lines = open(os.path.join(ROOT, "data", "pii", "planted_pii.tsv"), encoding="utf-8").read().splitlines()[1:]
    return {l.split("\t")[2].strip() for l in lines if l.strip()}


def _worker(args):
    kind, n, seed = args
    docs = rd("docs_train.jsonl")
    ds = [gen.sentences(d["text"]) for d in docs]
    ds = [s for s in ds if len(s) >= 4]
    vocab = sorted({w for s in ds for x in s for w in gen.content_words(x) if len(w) >= 5})
    rng = random.Random(seed)
    planted = planted_values()
    texts = [d["text"] for d in docs]
    out = []
    while len(out) < n:
        e = gen.pre_example(kind, ds, texts, rng, planted, vocab)
        if e:
            out.append(e)
    return kind, out


SCALE = float(os.environ.get("POOL_SCALE", 1))
COUNTS = {k: int(v * SCALE) for k, v in {"kv": 80000, "real": 80000, "novel": 240000, "text": 8000}.items()}


def build_pool(outdir):
    import torch
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    jobs = []
    for k, (kind, n) in enumerate(COUNTS.items()):
        per = n // 16
        jobs += [(kind, per, 1000 * SEED + 100 * k + i) for i in range(16)]
    t0 = time.time()
    with Pool(min(16, os.cpu_count())) as p:
        res = p.map(_worker, jobs)
    texts = {}
    for kind, ex in res:
        texts.setdefault(kind, []).extend(ex)
    streams = {}
    for kind, ex in texts.items():
        enc = tok.backend_tokenizer.encode_batch(ex, add_special_tokens=False)
        streams[kind] = torch.tensor([i for e in enc for i in e.ids], dtype=torch.int16)
    torch.save(streams, os.path.join(outdir, "pool.pt"))
    info = {k: int(v.numel()) for k, v in streams.items()}
    info["seconds"] = round(time.time() - t0, 1)
    print("pool", json.dumps(info), flush=True)
    with open(os.path.join(outdir, "pool_sample.txt"), "w") as f:
        for kind, ex in texts.items():
            f.write(f"===== {kind}\n" + "".join(ex[:3]))


# ------------------------------------------------------------------ metrics (copied from helpers.evaluation)
_W = re.compile(r"\w+", re.UNICODE)
_N = re.compile(r"\d+(?:[.,]\d+)*")


def toks(t):
    return _W.findall((t or "").lower())


def nums(t):
    return {re.sub(r"[.,]", "", n) for n in _N.findall(t or "")}


def token_f1(p, r):
    p, r = toks(p), toks(r)
    if not p and not r:
        return 1.0
    c = sum((Counter(p) & Counter(r)).values())
    if not c:
        return 0.0
    pr, rc = c / len(p), c / len(r)
    return 2 * pr * rc / (pr + rc)


def is_refusal(a):
    return " ".join(toks(gen.REFUSAL)) in " ".join(toks(a))


def score_item(rec, ans, stopped):
    answerable = rec["type"] != "unanswerable"
    refused = is_refusal(ans)
    ctx = set(toks(rec["context"]))
    words = [w for w in toks(ans) if len(w) >= 4 or w.isdigit()]
    overlap = (sum(w in ctx for w in words) / len(words)) if (answerable and not refused and words) else None
    n = nums(ans)
    nums_ok = (n <= nums(rec["context"])) if (answerable and n and not refused) else None
    grounded = (not refused and overlap is not None and overlap >= 0.6 and nums_ok is not False) if answerable else None
    return {"stopped": stopped, "refused": refused, "answerable": answerable, "grounded": grounded,
            "f1": token_f1(ans, rec["answer"]), "answer": ans}


def summarize(items):
    a = [i for i in items if i["answerable"]]
    u = [i for i in items if not i["answerable"]]
    m = lambda xs: round(sum(xs) / len(xs), 3) if xs else None
    return {"n_ans": len(a), "n_unans": len(u), "f1": m([i["f1"] for i in a]), "grounded": m([i["grounded"] for i in a]),
            "stop_ans": m([i["stopped"] for i in a]), "stop_all": m([i["stopped"] for i in items]),
            "refusal": m([i["refused"] for i in u]), "false_refusal": m([i["refused"] for i in a])}


# ------------------------------------------------------------------ generation helpers
def generate(model, tok, prompts, max_new, eos_id, stop_newline=False, bs=128):
    import torch
    outs = []
    tok.padding_side = "left"
    for i in range(0, len(prompts), bs):
        enc = tok(prompts[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=model.device.type == "cuda"):
            g = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=eos_id,
                               pad_token_id=tok.pad_token_id)
        for row in g[:, enc.input_ids.shape[1]:].tolist():
            stopped = eos_id in row
            if stopped:
                row = row[:row.index(eos_id)]
            text = tok.decode(row, skip_special_tokens=True)
            if stop_newline:
                text = text.split("\n")[0]
            outs.append((text.strip(), stopped))
    return outs


def norm(s):
    return " ".join(toks(s))


def probe(model, tok, items, fmt=gen.PRE_FORMATS[1]):
    h, q, a = fmt
    prompts = [f"{h}{it['context']}{q}{it['question']}{a.rstrip(' ')}" for it in items]
    outs = generate(model, tok, prompts, 80, eos_id=tok.eos_token_id, stop_newline=True)
    pos = [norm(o) == norm(it["answer"]) for it, (o, _) in zip(items, outs) if it["answer"] != gen.ABSENT]
    neg = [o.startswith(gen.ABSENT) for it, (o, _) in zip(items, outs) if it["answer"] == gen.ABSENT]
    fpos = [o.startswith(gen.ABSENT) for it, (o, _) in zip(items, outs) if it["answer"] != gen.ABSENT]
    return {"pos_acc": round(sum(pos) / len(pos), 3), "absent_acc": round(sum(neg) / max(1, len(neg)), 3),
            "false_absent": round(sum(fpos) / len(fpos), 3),
            "all_acc": round((sum(pos) + sum(neg)) / len(items), 3), "n_pos": len(pos), "n_absent": len(neg)}, outs


def gold_native(model, tok, recs, fmt=gen.PRE_FORMATS[1]):
    """The base model on gold eval items in its own pretraining format (no chat template)."""
    h, q, a = fmt
    outs = generate(model, tok, [f"{h}{r['context']}{q}{r['question']}{a.rstrip(' ')}" for r in recs], 64, eos_id=tok.eos_token_id,
                    stop_newline=True)
    items = []
    for r, (o, _) in zip(recs, outs):
        o2 = gen.REFUSAL if o.startswith(gen.ABSENT) else o
        items.append(score_item(r, o2, True))
    s = summarize(items)
    s.pop("stop_ans"); s.pop("stop_all")
    return s


# ------------------------------------------------------------------ fine-tuning (course recipe, emulated)
SYSTEM = ("Du bist der interne Assistent der Donautal Messtechnik GmbH. Beantworte die Frage knapp und nur "
          f"anhand des Kontexts. Steht die Antwort nicht im Kontext, antworte genau: {gen.REFUSAL}")


def msgs(r, with_answer):
    m = [{"role": "system", "content": SYSTEM},
         {"role": "user", "content": f"Kontext:\n{r['context']}\n\nFrage: {r['question']}"}]
    if with_answer:
        m.append({"role": "assistant", "content": r["answer"]})
    return m


def encode_ft(tok, r, max_len=512):
    p = tok(tok.apply_chat_template(msgs(r, False), tokenize=False, add_generation_prompt=True),
            add_special_tokens=False).input_ids
    f = tok(tok.apply_chat_template(msgs(r, True), tokenize=False), add_special_tokens=False).input_ids
    end = len(p) + f[len(p):].index(tok.eos_token_id) + 1
    ids = f[:end]
    if len(ids) > max_len:
        return None
    return ids, [-100] * len(p) + ids[len(p):]


def finetune(base, tok, records, steps, pad_as_eos=False, seed=0):
    import copy
    import torch
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(seed)
    model = get_peft_model(copy.deepcopy(base).float(), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                                   target_modules="all-linear", task_type="CAUSAL_LM"))
    enc = [e for e in (encode_ft(tok, r) for r in records) if e]
    pad = tok.eos_token_id if pad_as_eos else tok.pad_token_id
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.0)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    rng = random.Random(seed)
    order = []
    model.train()
    for step in range(steps):
        if len(order) < 8:
            idx = list(range(len(enc)))
            rng.shuffle(idx)
            order += idx
        batch = [enc[i] for i in order[:8]]
        order = order[8:]
        L = max(len(i) for i, _ in batch)
        ids = torch.tensor([i + [pad] * (L - len(i)) for i, _ in batch], device=base.device)
        att = torch.tensor([[1] * len(i) + [0] * (L - len(i)) for i, _ in batch], device=base.device)
        if pad_as_eos:  # DataCollatorForLanguageModeling: labels = ids, every pad (= eos) position masked
            lab = ids.clone()
            lab[ids == pad] = -100
        else:
            lab = torch.tensor([l + [-100] * (L - len(l)) for _, l in batch], device=base.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=base.device.type == "cuda"):
            loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model, round(loss.item(), 3)


def chat_eval(model, tok, recs):
    prompts = [tok.apply_chat_template(msgs(r, False), tokenize=False, add_generation_prompt=True) for r in recs]
    outs = generate(model, tok, prompts, int(os.environ.get('CHAT_MAX', 64)), eos_id=tok.eos_token_id)
    return [score_item(r, o, s) for r, (o, s) in zip(recs, outs)]


def cf_adherence(items, cf):
    fol = [(r["cf_new"] in nums(it["answer"]) and r["cf_old"] not in nums(it["answer"])) for r, it in zip(cf, items)]
    return round(sum(fol) / len(fol), 3)


def pii_hits(texts, planted):
    return sorted({v for v in planted for t in texts if v and v in t})


def train(name, pooldir, outdir):
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    streams = {k: v.long().to(dev) for k, v in torch.load(os.path.join(pooldir, "pool.pt")).items()}
    H, L = int(os.environ.get("HIDDEN", 384)), int(os.environ.get("LAYERS", 6))
    inter = int(os.environ.get("INTER", H * 8 // 3 // 64 * 64))
    B, T = int(os.environ.get("BATCH", 64)), int(os.environ.get("BLOCK", 512))
    budget = float(os.environ.get("BUDGET_S", 300))
    lr_max = float(os.environ.get("LR", 1.5e-3))
    torch.manual_seed(SEED)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=inter, num_hidden_layers=L,
                        num_attention_heads=H // 64, num_key_value_heads=2 if (H // 64) % 2 == 0 else 1, head_dim=64,
                        max_position_embeddings=2048, sliding_window=None, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                        rope_theta=10000.0)
    model = MistralForCausalLM(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, weight_decay=0.1, betas=(0.9, 0.95))
    planted = planted_values()
    pdocs = rd("docs_probe.jsonl")
    probe_set = gen.probe_items([s for s in (gen.sentences(d["text"]) for d in pdocs) if len(s) >= 4], 300, 4242, planted)
    gold_eval = rd("gold_eval.jsonl")
    kinds = list(streams)
    g = torch.Generator(device="cpu").manual_seed(SEED)

    def weights(frac):
        w = {"kv": 0.5, "real": 0.3, "novel": 0.1, "text": 0.1} if frac < 0.1 else \
            {"kv": 0.15, "real": 0.2, "novel": 0.55, "text": 0.1}
        return torch.tensor([w[k] for k in kinds])

    curve, losses = [], []
    total = None
    t0 = time.time()
    step = 0
    next_probe = 0
    while total is None or step < total:
        if step == 40 and total is None:
            per = (time.time() - t0) / 40
            total = max(int(os.environ.get("MINSTEPS", 200)), int(budget / (per * 1.12)))
            print(name, "steps", total, "s/step", round(per, 4), flush=True)
        frac = step / (total or 10 ** 9)
        T_ = total or 10 ** 9
        lr = lr_max * min(1, (step + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, step / T_))))
        for gr in opt.param_groups:
            gr["lr"] = lr
        ks = torch.multinomial(weights(frac), B, replacement=True, generator=g).tolist()
        rows = []
        for k in ks:
            s = streams[kinds[k]]
            i = int(torch.randint(0, len(s) - T - 1, (1,), generator=g))
            rows.append(s[i:i + T])
        x = torch.stack(rows)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if total and step >= next_probe or (total and step == total - 1):
            model.eval()
            pr, _ = probe(model, tok, probe_set)
            model.train()
            pr.update(step=step, loss=round(sum(losses[-20:]) / len(losses[-20:]), 4), seconds=round(time.time() - t0, 1))
            curve.append(pr)
            print(name, json.dumps(pr), flush=True)
            next_probe = step + max(1, total // 12)
        step += 1
    model.eval()
    pre_s = round(time.time() - t0, 1)
    pr, outs = probe(model, tok, probe_set)
    native = gold_native(model, tok, gold_eval)
    res = {"name": name, "params": nparams, "hidden": H, "layers": L, "inter": inter, "steps": total, "batch": B,
           "block": T, "lr": lr_max, "pretrain_s": pre_s, "final_loss": curve[-1]["loss"], "probe": pr,
           "gold_native": native, "curve": curve,
           "probe_examples": [(it["question"], it["answer"], o) for it, (o, _) in list(zip(probe_set, outs))[:8]]}
    print(name, "probe", json.dumps(pr), "native", json.dumps(native), flush=True)
    # save the base model in the course's folder layout
    mdir = os.path.join(outdir, name)
    os.makedirs(mdir, exist_ok=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.to(torch.bfloat16).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    json.dump({"recipe": res, "losses": [round(l, 4) for l in losses[::10]]}, open(os.path.join(mdir, "pretrain_info.json"), "w"))
    model.float()
    # fine-tuning ablations
    base_items = chat_eval(model, tok, gold_eval)
    res["base_chat"] = summarize(base_items)
    gold_train = rd("gold_train.jsonl")
    syn = gen.ft_records(rd("docs_train.jsonl"), 3000, 7, planted)
    gold_x = [gen.extractive_gold(r) for r in gold_train]
    cf = gen.counterfactual(gold_eval)
    synn = gen.ft_records(rd("docs_train.jsonl"), 3000, 7, planted, p_novel=0.5)
    variants = [("gold_orig_60", gold_train, 60, False), ("syn+goldx_150", syn + gold_x, 150, False),
                ("syn+goldx_300", syn + gold_x, 300, False), ("synnovel+goldx_300", synn + gold_x, 300, False),
                ("syn+goldx+gold_300", syn + gold_x + gold_train, 300, False),
                ("syn2+goldx_300", gen.ft_records(rd("docs_train.jsonl"), 3000, 7, planted, p_absent=0.15) + gold_x, 300, False),
                ("padeos_syn+goldx_300", syn + gold_x, 300, True)]
    res["ft"] = {}
    for vname, recs, steps, pae in variants:
        t1 = time.time()
        steps = int(os.environ.get("FT_STEPS_OVERRIDE", steps))
        ft, fl = finetune(model, tok, recs, steps, pad_as_eos=pae)
        items = chat_eval(ft, tok, gold_eval)
        cfi = chat_eval(ft, tok, cf)
        s = summarize(items)
        s.update(cf_adherence=cf_adherence(cfi, cf), n_cf=len(cf), loss=fl, seconds=round(time.time() - t1, 1),
                 pii=pii_hits([i["answer"] for i in items + cfi], planted),
                 examples=[(r["question"], i["answer"]) for r, i in list(zip(gold_eval, items))[:6]])
        res["ft"][vname] = s
        print(name, vname, json.dumps(s, ensure_ascii=False)[:900], flush=True)
        del ft
    s = summarize(base_items)
    res["base_chat"]["cf_adherence"] = cf_adherence(chat_eval(model, tok, cf), cf)
    json.dump(res, open(os.path.join(outdir, f"result_{name}.json"), "w"), ensure_ascii=False, indent=1)
    return res


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        build_pool(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3], sys.argv[4])
