"""Reading Kurs-Mini v2 (issue 12): answer-only loss + copy curriculum, held-out probe learning curve, FT check;
plus the plain fallback (today's Kurs-Mini recipe on the scrubbed non-eval documents).

  python run2.py pool DIR                 # task pools (token ids + answer start) -> DIR/pool2.pt
  python run2.py train NAME DIR OUTDIR    # env HIDDEN LAYERS BUDGET_S LR
  python run2.py plain OUTDIR             # BuildConfig-default Kurs-Mini on scrubbed training docs (no EOS)
"""
import json, math, os, random, sys, time
from multiprocessing import Pool

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "attempt1"))   # gen.py and run.py of the first attempt
import gen, gen2  # noqa: E402
import run as R  # noqa: E402  (attempt1/run.py: metrics, generation, peft fine-tuning emulation, chat eval)

DATA = os.path.join(HERE, "data")
SEED = int(os.environ.get("SEED", "0"))
TMAX = 320
KINDS = ["repeat", "cloze", "find", "kv", "ext", "absent"]


def planted_values():
    lines = open(os.path.join(DATA, "planted_pii.tsv"), encoding="utf-8").read().splitlines()[1:]
    return {l.split("\t")[2].strip() for l in lines if l.strip()}


R.planted_values = planted_values


def corpus():
    docs = R.rd("docs_train.jsonl")
    ds = [s for s in (gen.sentences(d["text"]) for d in docs) if len(s) >= 4]
    vocab = sorted({w for s in ds for x in s for w in gen.content_words(x) if len(w) >= 5})
    return docs, ds, vocab


def _worker(args):
    kind, n, seed = args
    _, ds, vocab = corpus()
    rng, planted, out = random.Random(seed), planted_values(), []
    while len(out) < n:
        x = gen2.item(kind, ds, rng, planted, vocab)
        if x:
            out.append(x)
    return kind, out


COUNTS = {"repeat": 60000, "cloze": 80000, "find": 60000, "kv": 60000, "ext": 120000, "absent": 30000}


def build_pool(outdir):
    import torch
    from transformers import AutoTokenizer
    sc = float(os.environ.get("POOL_SCALE", 1))
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    jobs = []
    for k, kind in enumerate(KINDS):
        per = int(COUNTS[kind] * sc) // 16
        jobs += [(kind, per, 1000 * SEED + 100 * k + i) for i in range(16)]
    t0 = time.time()
    with Pool(min(16, os.cpu_count())) as p:
        res = p.map(_worker, jobs)
    by = {}
    for kind, ex in res:
        by.setdefault(kind, []).extend(ex)
    pools, info = {}, {}
    for kind, ex in by.items():
        pe = tok.backend_tokenizer.encode_batch([e[0] for e in ex], add_special_tokens=False)
        ae = tok.backend_tokenizer.encode_batch([e[1] for e in ex], add_special_tokens=False)
        rows, starts, lens = [], [], []
        for p_, a_ in zip(pe, ae):
            ids = p_.ids + a_.ids
            if len(ids) > TMAX:
                continue
            rows.append(ids + [0] * (TMAX - len(ids)))
            starts.append(len(p_.ids)); lens.append(len(ids))
        pools[kind] = (torch.tensor(rows, dtype=torch.int16), torch.tensor(starts), torch.tensor(lens))
        info[kind] = [len(rows), len(ex), round(sum(lens) / len(lens), 1)]
    docs, _, _ = corpus()
    enc = tok.backend_tokenizer.encode_batch([d["text"] + "\n\n" for d in docs], add_special_tokens=False)
    pools["_text"] = torch.tensor([i for e in enc for i in e.ids], dtype=torch.int16)
    torch.save(pools, os.path.join(outdir, "pool2.pt"))
    info["seconds"] = round(time.time() - t0, 1)
    print("pool", json.dumps(info), flush=True)
    with open(os.path.join(outdir, "pool_sample.txt"), "w") as f:
        for kind, ex in by.items():
            f.write(f"===== {kind}\n" + "\n".join(a + "|" + b for a, b in ex[:3]))


def weights(frac):
    if frac < 0.3:   # phase A: copy only, no absent
        w = {"repeat": .3, "cloze": .3, "find": .15, "kv": .25, "ext": 0, "absent": 0}
    elif frac < 0.5:  # phase B1: + extractive templates (answerable only)
        w = {"repeat": .1, "cloze": .15, "find": .1, "kv": .1, "ext": .55, "absent": 0}
    else:             # phase B2: + 15% absent
        w = {"repeat": .08, "cloze": .12, "find": .1, "kv": .1, "ext": .45, "absent": .15}
    return w


def probe(model, tok, items):
    prompts = [it["prompt"] for it in items]
    maxn = max(len(tok(it["answer"]).input_ids) for it in items) + 4
    outs = R.generate(model, tok, prompts, min(maxn, 140), eos_id=tok.eos_token_id, stop_newline=True, bs=280)
    res, per = {}, {}
    for it, (o, _) in zip(items, outs):
        ok = R.norm(o) == R.norm(it["answer"]) or (it["answer"] != gen.ABSENT and R.token_f1(o, it["answer"]) >= 0.9)
        per.setdefault(it["kind"], []).append(ok)
        it["_out"] = o
    for k, v in per.items():
        res[k] = round(sum(v) / len(v), 3)
    fa = [it["_out"].startswith(gen.ABSENT) for it in items if it["kind"] != "absent"]
    res["false_absent"] = round(sum(fa) / len(fa), 3)
    res["cloze_ext"] = round(sum(per["cloze"] + per["find"] + per["ext"]) / len(per["cloze"] + per["find"] + per["ext"]), 3)
    return res, outs


def train(name, pooldir, outdir):
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    raw = torch.load(os.path.join(pooldir, "pool2.pt"))
    text = raw.pop("_text").long().to(dev)
    pools = {k: (v[0].long().to(dev), v[1].to(dev), v[2].to(dev)) for k, v in raw.items()}
    H, L = int(os.environ.get("HIDDEN", 256)), int(os.environ.get("LAYERS", 4))
    inter = int(os.environ.get("INTER", H * 8 // 3 // 64 * 64))
    B, BT = int(os.environ.get("BATCH", 128)), int(os.environ.get("TEXT_ROWS", 20))
    TT = 256
    budget = float(os.environ.get("BUDGET_S", 200))
    lr_max = float(os.environ.get("LR", 2e-3))
    text_w = float(os.environ.get("TEXT_W", 0.15))
    torch.manual_seed(SEED)
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=H, intermediate_size=inter, num_hidden_layers=L,
                        num_attention_heads=H // 64, num_key_value_heads=2, head_dim=64,
                        max_position_embeddings=2048, sliding_window=None, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                        rope_theta=10000.0)
    model = MistralForCausalLM(cfg).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr_max, weight_decay=0.1, betas=(0.9, 0.95))
    planted = planted_values()
    _, _, vocab = corpus()
    pdocs = R.rd("docs_probe.jsonl")
    ps = [s for s in (gen.sentences(d["text"]) for d in pdocs) if len(s) >= 4]
    pset = gen2.probe_set(ps, planted, vocab, n=int(os.environ.get("PROBE_N", 80)))
    gold_eval = R.rd("gold_eval.jsonl")
    g = torch.Generator(device="cpu").manual_seed(SEED)
    ar = torch.arange(TMAX, device=dev)
    curve, losses = [], []
    total, step, next_probe, t0 = None, 0, 0, time.time()
    probe_s = 0.0
    while total is None or step < total:
        if step == 10:
            t10 = time.time()
        if step == 50 and total is None:
            per = (time.time() - t10) / 40
            total = max(int(os.environ.get("MINSTEPS", 100)), int((budget - (time.time() - t0) - 12 * 3) / (per * 1.03)) + 50)
            if os.environ.get("STEPS"):  # exact re-run of a recorded schedule (total is fixed at step 50 either way)
                total = int(os.environ["STEPS"])
            print(name, "steps", total, "s/step", round(per, 4), flush=True)
        frac = step / (total or 10 ** 9)
        T_ = total or 10 ** 9
        lr = lr_max * min(1, (step + 1) / 150) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, step / T_))))
        for gr in opt.param_groups:
            gr["lr"] = lr
        w = weights(frac)
        ks = [k for k in KINDS if w[k] > 0]
        cnt = torch.multinomial(torch.tensor([w[k] for k in ks]), B, replacement=True, generator=g).bincount(minlength=len(ks))
        xs, ys = [], []
        for k, c in zip(ks, cnt.tolist()):
            if not c:
                continue
            ids, st, ln = pools[k]
            idx = torch.randint(0, len(ids), (c,), generator=g).to(dev)
            x = ids[idx]
            m = (ar[None] >= st[idx, None]) & (ar[None] < ln[idx, None])
            xs.append(x); ys.append(torch.where(m, x, torch.full_like(x, -100)))
        x = torch.cat(xs); y = torch.cat(ys)
        Lmax = int((y != -100).nonzero()[:, 1].max()) + 1
        x, y = x[:, :Lmax], y[:, :Lmax]
        st = torch.randint(0, len(text) - TT - 1, (BT,), generator=g).to(dev)
        xt = text[st[:, None] + torch.arange(TT, device=dev)[None]]
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            lg = model(input_ids=x).logits
            lt = model(input_ids=xt).logits
        task_loss = F.cross_entropy(lg[:, :-1].float().reshape(-1, lg.shape[-1]), y[:, 1:].reshape(-1), ignore_index=-100)
        text_loss = F.cross_entropy(lt[:, :-1].float().reshape(-1, lt.shape[-1]), xt[:, 1:].reshape(-1))
        loss = (1 - text_w) * task_loss + text_w * text_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append((task_loss.item(), text_loss.item()))
        if total and (step >= next_probe or step == total - 1):
            tp = time.time()
            model.eval()
            pr, _ = probe(model, tok, pset)
            model.train()
            probe_s += time.time() - tp
            lw = losses[-20:]
            pr.update(step=step, phase="A" if frac < .3 else "B1" if frac < .5 else "B2",
                      task_loss=round(sum(a for a, _ in lw) / len(lw), 4), text_loss=round(sum(b for _, b in lw) / len(lw), 4),
                      seconds=round(time.time() - t0, 1))
            curve.append(pr)
            print(name, json.dumps(pr), flush=True)
            next_probe = step + max(1, total // 12)
        step += 1
    model.eval()
    pre_s = round(time.time() - t0, 1)
    pr, outs = probe(model, tok, pset)
    native = R.gold_native(model, tok, gold_eval, fmt=("Kontext:\n", "\n\nFrage: ", "\nAntwort:"))
    res = {"name": name, "params": nparams, "hidden": H, "layers": L, "inter": inter, "steps": total, "batch": B,
           "text_rows": BT, "text_w": text_w, "lr": lr_max, "seed": SEED, "pretrain_s": pre_s, "probe_s": round(probe_s, 1),
           "final_task_loss": curve[-1]["task_loss"], "final_text_loss": curve[-1]["text_loss"], "probe": pr,
           "probe_n": {k: sum(it["kind"] == k for it in pset) for k in KINDS},
           "gold_native": native, "curve": curve,
           "probe_examples": [(it["kind"], it["prompt"][-80:], it["answer"][:120], o[:120]) for it, (o, _) in list(zip(pset, outs))[::40]]}
    print(name, "probe", json.dumps(pr), "native", json.dumps(native), flush=True)
    mdir = os.path.join(outdir, name)
    os.makedirs(mdir, exist_ok=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.to(torch.bfloat16).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    json.dump({"recipe": {k: v for k, v in res.items() if k not in ("curve", "probe_examples")},
               "losses": [[round(a, 4), round(b, 4)] for a, b in losses[::10]]}, open(os.path.join(mdir, "pretrain_info.json"), "w"))
    json.dump(res, open(os.path.join(outdir, f"result_{name}.json"), "w"), ensure_ascii=False, indent=1)
    model.float()
    # ---- fine-tuning check (course recipe emulated in peft)
    base_items = R.chat_eval(model, tok, gold_eval)
    res["base_chat"] = R.summarize(base_items)
    cf = gen.counterfactual(gold_eval)
    res["base_chat"]["cf_adherence"] = R.cf_adherence(R.chat_eval(model, tok, cf), cf)
    gold_train = R.rd("gold_train.jsonl")
    gold_x = [gen.extractive_gold(r) for r in gold_train]
    syn = gen.ft_records(R.rd("docs_train.jsonl"), 3000, 7, planted, p_absent=0.15)
    variants = [("goldx+syn_60", syn + gold_x, 60, False), ("goldx+syn_200", syn + gold_x, 200, False),
                ("padeos_goldx+syn_200", syn + gold_x, 200, True), ("gold_orig_60", gold_train, 60, False)]
    res["ft"] = {}
    for vname, recs, steps, pae in variants:
        t1 = time.time()
        ft, fl = R.finetune(model, tok, recs, int(os.environ.get("FT_STEPS_OVERRIDE", steps)), pad_as_eos=pae)
        items = R.chat_eval(ft, tok, gold_eval)
        cfi = R.chat_eval(ft, tok, cf)
        s = R.summarize(items)
        s.update(cf_adherence=R.cf_adherence(cfi, cf), n_cf=len(cf), n_train=len(recs), loss=fl,
                 seconds=round(time.time() - t1, 1), pii=R.pii_hits([i["answer"] for i in items + cfi], planted),
                 examples=[(r["question"], r["answer"][:100], i["answer"][:160]) for r, i in list(zip(gold_eval, items))[:8]])
        res["ft"][vname] = s
        print(name, vname, json.dumps(s, ensure_ascii=False)[:700], flush=True)
        del ft
    json.dump(res, open(os.path.join(outdir, f"result_{name}.json"), "w"), ensure_ascii=False, indent=1)


def plain(outdir):
    """kursmini.build (frozen 4fddc29) with BuildConfig defaults, but texts = PII-scrubbed non-eval documents and the
    4096-BPE trained on them (data/tokenizer = kursmini.train_tokenizer(texts, 4096), see reading/prep.py)."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    C = dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4, num_kv_heads=2,
             max_position_embeddings=2048, steps=300, batch_size=16, block_size=256, learning_rate=3e-3,
             warmup_steps=30, seed=1234, threads=0)
    t0 = time.time()
    if os.environ.get("PLAIN_THREADS"):
        torch.set_num_threads(int(os.environ["PLAIN_THREADS"]))
    torch.manual_seed(C["seed"])
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    texts = [d["text"] for d in R.rd("docs_train.jsonl")]
    enc = tok.backend_tokenizer.encode_batch([t + "\n\n" for t in texts], add_special_tokens=False)
    stream = torch.tensor([i for e in enc for i in e.ids], dtype=torch.long)
    mcfg = MistralConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
                         sliding_window=None, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False, rope_theta=10000.0)
    model = MistralForCausalLM(mcfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=C["learning_rate"], weight_decay=0.01, betas=(0.9, 0.95))
    lr_at = lambda s: (s + 1) / 30 if s < 30 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 30) / 270))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(C["seed"])
    losses = []
    for step in range(int(os.environ.get("PLAIN_STEPS", 300))):
        starts = torch.randint(0, len(stream) - 256 - 1, (16,), generator=g)
        batch = torch.stack([stream[s:s + 256] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); sched.step(); opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    model.eval()
    for k in ("eos", "pad", "bos"):
        setattr(model.generation_config, f"{k}_token_id", getattr(tok, f"{k}_token_id"))
    mdir = os.path.join(outdir, "plain")
    os.makedirs(mdir, exist_ok=True)
    model.save_pretrained(mdir); tok.save_pretrained(mdir)
    # base chat stop rate on gold eval (no EOS in pretraining -> should be ~0)
    items = R.chat_eval(model, tok, R.rd("gold_eval.jsonl"))
    info = {"recipe": "kursmini.build BuildConfig defaults (fp32, CPU-style loop) on scrubbed non-eval docs",
            "config": C, "device": "cpu (torch threads=%d)" % torch.get_num_threads(), "documents": len(texts), "corpus_tokens": len(stream),
            "parameters": sum(p.numel() for p in model.parameters()), "seconds": round(time.time() - t0, 1),
            "loss_first": losses[0], "loss_last": sum(losses[-10:]) / 10, "losses": losses,
            "base_chat": R.summarize(items)}
    json.dump(info, open(os.path.join(mdir, "pretrain_info.json"), "w"))
    print("plain", json.dumps({k: v for k, v in info.items() if k != "losses"}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        build_pool(sys.argv[2])
    elif sys.argv[1] == "plain":
        plain(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3], sys.argv[4])
