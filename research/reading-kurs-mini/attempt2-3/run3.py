"""Reading Kurs-Mini v3 (issue 12): run2's recipe, longer. Changes vs run2.train:
phase A (copy only) = first PHASE_A (0.35, >=600 steps) of the schedule, B1 (+ext) until PHASE_B (0.60), B2 (+15% absent) after;
text weight 0.05 with 8 text rows; schedule length fixed at step 300 from the measured rate so that it ends at the guard
(clamped to [STEPS_MIN, STEPS_MAX]); hard wall-clock guard (TRAIN_END epoch / GUARD_S) stops training early and saves;
post-training evals (native, base chat, one FT variant goldx+syn_200) only while time is left before POST_END.
  python run3.py train NAME POOLDIR OUTDIR     (pool: python run2.py pool POOLDIR)
Exact re-run of a recorded schedule: STEPS=<steps> (fixes the total; the guard still applies).
"""
import json, math, os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(HERE, "..", "attempt1"))   # gen.py and run.py of the first attempt
import gen, gen2  # noqa
import run2  # noqa  (sets run.planted_values)
import run as R  # noqa  (attempt1/run.py)
from run2 import DATA, SEED, TMAX, KINDS, probe, planted_values, corpus

PA = float(os.environ.get("PHASE_A", 0.35))
PB = float(os.environ.get("PHASE_B", 0.60))


def weights(frac):
    if frac < PA:
        return {"repeat": .3, "cloze": .3, "find": .15, "kv": .25, "ext": 0, "absent": 0}
    if frac < PB:
        return {"repeat": .1, "cloze": .15, "find": .1, "kv": .1, "ext": .55, "absent": 0}
    return {"repeat": .08, "cloze": .12, "find": .1, "kv": .1, "ext": .45, "absent": .15}


def phase(frac):
    return "A" if frac < PA else "B1" if frac < PB else "B2"


def train(name, pooldir, outdir):
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM
    t_start = time.time()
    guard = float(os.environ.get("GUARD_S", 200))
    train_end = float(os.environ.get("TRAIN_END", t_start + 10 ** 6))
    post_end = float(os.environ.get("POST_END", t_start + 10 ** 6))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = AutoTokenizer.from_pretrained(os.path.join(DATA, "tokenizer"))
    raw = torch.load(os.path.join(pooldir, "pool2.pt"))
    text = raw.pop("_text").long().to(dev)
    pools = {k: (v[0].long().to(dev), v[1].to(dev), v[2].to(dev)) for k, v in raw.items()}
    H, L = int(os.environ.get("HIDDEN", 256)), int(os.environ.get("LAYERS", 6))
    inter = int(os.environ.get("INTER", H * 8 // 3 // 64 * 64))
    B, BT = int(os.environ.get("BATCH", 128)), int(os.environ.get("TEXT_ROWS", 8))
    TT = 256
    lr_max = float(os.environ.get("LR", 2e-3))
    text_w = float(os.environ.get("TEXT_W", 0.05))
    smin, smax = int(os.environ.get("STEPS_MIN", 1715)), int(os.environ.get("STEPS_MAX", 2600))
    pevery = int(os.environ.get("PROBE_EVERY", 160))
    fix_at = int(os.environ.get("FIX_AT", 300))
    fix_ref = int(os.environ.get("FIX_REF", 200))
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
    fixed = os.environ.get("STEPS")
    total = int(fixed) if fixed else int(os.environ.get("STEPS_PROVISIONAL", 1900))
    step, t0, probe_s, stopped_by_guard = 0, time.time(), 0.0, False
    stop_at = min(train_end, t0 + guard)
    print(name, "setup_s", round(t0 - t_start, 1), "train budget_s", round(stop_at - t0, 1), flush=True)

    def do_probe(step, frac):
        nonlocal probe_s
        tp = time.time()
        model.eval()
        pr, outs = probe(model, tok, pset)
        model.train()
        probe_s += time.time() - tp
        lw = losses[-20:]
        pr.update(step=step, phase=phase(frac), task_loss=round(sum(a for a, _ in lw) / len(lw), 4),
                  text_loss=round(sum(b for _, b in lw) / len(lw), 4), seconds=round(time.time() - t0, 1),
                  lr=round(lr, 6))
        curve.append(pr)
        print(name, json.dumps(pr), flush=True)
        return pr, outs

    last_outs = None
    while step < total:
        if step == fix_ref:
            t200, p200 = time.time(), probe_s
        if step == fix_at and not fixed:
            per = (time.time() - t200 - (probe_s - p200)) / (fix_at - fix_ref)
            pcost = probe_s / max(1, len(curve))
            left = stop_at - time.time() - pcost  # the final probe
            fit = fix_at + int(left / (per + pcost / pevery) * 0.97)
            total = max(smin, min(smax, fit))
            print(name, "steps", total, "fit", fit, "s/step", round(per, 4), "probe_s", round(pcost, 2), flush=True)
        frac = step / total
        lr = lr_max * min(1, (step + 1) / 150) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, step / total))))
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
        guard_hit = time.time() >= stop_at
        if step % pevery == 0 or step == total - 1 or guard_hit:
            _, last_outs = do_probe(step, frac)
        step += 1
        if guard_hit and step < total:
            stopped_by_guard = True
            print(name, "GUARD: stopped at step", step, "of", total, flush=True)
            break
    model.eval()
    pre_s = round(time.time() - t0, 1)
    pr = {k: v for k, v in curve[-1].items() if k not in ("step", "phase", "task_loss", "text_loss", "seconds", "lr")}
    res = {"name": name, "params": nparams, "hidden": H, "layers": L, "inter": inter, "steps": total, "steps_done": step,
           "stopped_by_guard": stopped_by_guard, "batch": B, "text_rows": BT, "text_w": text_w, "lr": lr_max, "seed": SEED,
           "phase_a": PA, "phase_b": PB, "pretrain_s": pre_s, "probe_s": round(probe_s, 1),
           "final_task_loss": curve[-1]["task_loss"], "final_text_loss": curve[-1]["text_loss"], "probe": pr,
           "probe_n": {k: sum(it["kind"] == k for it in pset) for k in KINDS}, "curve": curve,
           "probe_examples": [(it["kind"], it["prompt"][-80:], it["answer"][:120], o[:120]) for it, (o, _) in list(zip(pset, last_outs))[::40]]}
    mdir = os.path.join(outdir, name)
    os.makedirs(mdir, exist_ok=True)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.to(torch.bfloat16).save_pretrained(mdir)
    tok.save_pretrained(mdir)
    json.dump({"recipe": {k: v for k, v in res.items() if k not in ("curve", "probe_examples")},
               "losses": [[round(a, 4), round(b, 4)] for a, b in losses[::10]]}, open(os.path.join(mdir, "pretrain_info.json"), "w"))
    rpath = os.path.join(outdir, f"result_{name}.json")
    json.dump(res, open(rpath, "w"), ensure_ascii=False, indent=1)
    print(name, "probe", json.dumps(pr), "saved", round(time.time() - t_start, 1), flush=True)
    if os.environ.get("SAVED_HOOK"):
        os.system(os.environ["SAVED_HOOK"])
    model.float()
    # ---- post-training evaluations, each only if time is left
    def left():
        return post_end - time.time()
    res["skipped"] = []
    if left() > 8:
        res["gold_native"] = R.gold_native(model, tok, gold_eval, fmt=("Kontext:\n", "\n\nFrage: ", "\nAntwort:"))
        print(name, "native", json.dumps(res["gold_native"]), flush=True)
    else:
        res["skipped"].append("gold_native")
    cf = gen.counterfactual(gold_eval)
    if left() > 10:
        res["base_chat"] = R.summarize(R.chat_eval(model, tok, gold_eval))
        res["base_chat"]["cf_adherence"] = R.cf_adherence(R.chat_eval(model, tok, cf), cf)
        print(name, "base_chat", json.dumps(res["base_chat"]), flush=True)
    else:
        res["skipped"].append("base_chat")
    json.dump(res, open(rpath, "w"), ensure_ascii=False, indent=1)
    res["ft"] = {}
    if left() > 35:
        t1 = time.time()
        gold_x = [gen.extractive_gold(r) for r in R.rd("gold_train.jsonl")]
        syn = gen.ft_records(R.rd("docs_train.jsonl"), 3000, 7, planted, p_absent=0.15)
        recs, steps = syn + gold_x, int(os.environ.get("FT_STEPS_OVERRIDE", 200))
        ft, fl = R.finetune(model, tok, recs, steps, pad_as_eos=False)
        items = R.chat_eval(ft, tok, gold_eval)
        cfi = R.chat_eval(ft, tok, cf)
        s = R.summarize(items)
        s.update(cf_adherence=R.cf_adherence(cfi, cf), n_cf=len(cf), n_train=len(recs), ft_steps=steps, loss=fl,
                 seconds=round(time.time() - t1, 1), pii=R.pii_hits([i["answer"] for i in items + cfi], planted),
                 examples=[(r["question"], r["answer"][:100], i["answer"][:160]) for r, i in list(zip(gold_eval, items))[:8]])
        res["ft"]["goldx+syn_200"] = s
        print(name, "goldx+syn_200", json.dumps(s, ensure_ascii=False)[:700], flush=True)
    else:
        res["skipped"].append("ft goldx+syn_200")
    json.dump(res, open(rpath, "w"), ensure_ascii=False, indent=1)
    print(name, "done", round(time.time() - t_start, 1), "skipped", res["skipped"], flush=True)


if __name__ == "__main__":
    train(sys.argv[2], sys.argv[3], sys.argv[4])
