"""Reading-curriculum task generators (v2): every task item is (prompt, answer); pretraining puts the loss on the
answer tokens only. No EOS, no chat tokens. Answers start with a space after the marker and end with a newline.

kinds: repeat (answer = whole context), cloze (question = first words of a context sentence, answer = the rest),
find (question = a verbatim chunk, answer = the whole sentence), kv (short keys, no absent), ext (extractive
question templates, answer = the sentence holding the fact), absent (hard-negative question -> "(nicht im Text)").
Contexts: training-document windows with numbers and names re-drawn, often content words re-drawn too ("novel"),
sometimes shuffled random corpus words, so that memory cannot answer."""
import random
import re

import gen

FMTS = [("Kontext:\n", "\n\nFrage: ", "\nAntwort:"), ("Text: ", "\nFrage: ", "\nAntwort:"),
        ("Abschnitt: ", "\nGesucht: ", "\nFundstelle:")]
FMT_W = [0.6, 0.25, 0.15]
KEYCH = "ABCDEFGHKLMNPRSTUVWXZ"


def window(sents, rng, min_n=1, max_n=4, max_chars=450):
    for _ in range(30):
        n = rng.randint(min_n, max_n)
        if len(sents) < n:
            continue
        lo = rng.randrange(0, len(sents) - n + 1)
        win = sents[lo:lo + n]
        if sum(len(x) + 1 for x in win) <= max_chars:
            return lo, win
    return None


def disguise(texts, rng, planted, vocab, mode=None):
    """Re-draw numbers and names always; content words with p=0.5 in 'novel' mode; shuffle words in 'random'."""
    mode = mode or rng.choices(["real", "novel", "random"], [0.4, 0.45, 0.15])[0]
    pw = {"real": 0.0, "novel": 0.5, "random": 0.0}[mode]
    out = gen.redraw(texts, rng, planted, p_num=1.0, p_words=pw, vocab=vocab)
    if mode == "random":
        # each string becomes a random sequence of corpus words of similar length (keeps sentence punctuation)
        out = [" ".join(rng.choice(vocab) if rng.random() < 0.7 else w for w in t.split()) for t in out]
    return out


def item(kind, doc_sents, rng, planted, vocab, fmt=None):
    h, qq, aa = fmt or rng.choices(FMTS, FMT_W)[0]
    if kind == "kv":
        n = rng.randint(3, 10)
        keys = set()
        while len(keys) < n:
            keys.add("".join(rng.choice(KEYCH) for _ in range(rng.randint(1, 2))) + str(rng.randint(1, 99)))
        keys = list(keys)
        vals = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 4))) +
                (f" {rng.randint(1, 9999)}" if rng.random() < .4 else "") for _ in keys]
        sep = rng.choice([": ", " = ", " – "])
        ctx = rng.choice(["; ", "\n"]).join(f"{k}{sep}{v}" for k, v in zip(keys, vals))
        i = rng.randrange(n)
        return f"{h}{ctx}{qq}{rng.choice(['', 'Wert von ', 'Was steht bei '])}{keys[i]}{aa}", f" {vals[i]}\n"
    sents = rng.choice(doc_sents)
    if kind in ("ext", "absent"):
        it = gen.qa_window(sents, rng, min_n=1, max_n=4, max_chars=450, p_absent=1.0 if kind == "absent" else 0.0)
        if it is None:
            return None
        win, q, a, j = it
        parts = disguise(win + [q] + ([a] if a else []), rng, planted, vocab, rng.choices(["real", "novel"], [.5, .5])[0])
        ctx = " ".join(parts[:len(win)])
        return f"{h}{ctx}{qq}{parts[len(win)]}{aa}", f" {parts[-1] if a else gen.ABSENT}\n"
    w = window(sents, rng, max_chars=300 if kind == "repeat" else 450)
    if w is None:
        return None
    lo, win = w
    win = disguise(win, rng, planted, vocab)
    ctx = " ".join(win)
    if kind == "repeat":
        return f"{h}{ctx}{qq}{rng.choice(['Wiederhole den Text.', 'Gib den Text wieder.', 'Kopie?'])}{aa}", f" {ctx}\n"
    j = rng.randrange(len(win))
    ws = win[j].split()
    if len(ws) < 6:
        return None
    if kind == "cloze":
        k = rng.randint(2, min(5, len(ws) - 2))
        return f"{h}{ctx}{qq}{' '.join(ws[:k])} …{aa}", f" {' '.join(ws[k:])}\n"
    if kind == "find":
        k = rng.randint(2, 4)
        i = rng.randrange(0, len(ws) - k + 1)
        chunk = " ".join(ws[i:i + k]).strip(",.;:!?")
        q = rng.choice([f"Satz mit „{chunk}“", f"Was steht zu {chunk}?", f"{chunk}?"])
        return f"{h}{ctx}{qq}{q}{aa}", f" {win[j]}\n"
    raise ValueError(kind)


def probe_set(doc_sents, planted, vocab, seed=4242, n=80):
    """Held-out probe on eval-split documents (numbers + names re-drawn, no word re-draw: 'real' mode)."""
    rng = random.Random(seed)
    out = []
    for kind in ["repeat", "cloze", "find", "kv", "ext", "absent"]:
        got = 0
        while got < (n if kind != "ext" else 2 * n):
            if kind in ("ext", "absent"):
                x = item(kind, doc_sents, rng, planted, vocab, fmt=FMTS[0])
            else:
                # real-text contexts only for the probe (plus numbers/names redrawn)
                st = rng.getstate()
                x = _real_item(kind, doc_sents, rng, planted, vocab)
            if x:
                out.append({"kind": kind, "prompt": x[0], "answer": x[1].strip()})
                got += 1
    return out


def _real_item(kind, doc_sents, rng, planted, vocab):
    orig = disguise
    try:
        globals()["disguise"] = lambda t, r, p, v, mode=None: orig(t, r, p, v, "real")
        return item(kind, doc_sents, rng, planted, vocab, fmt=FMTS[0])
    finally:
        globals()["disguise"] = orig
