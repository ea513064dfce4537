"""Task generators for the reading Kurs-Mini (pure Python, seeded, shared by pretraining and fine-tuning data).

Pretraining formats use plain text markers and NO EOS and no chat-template tokens; fine-tuning records are QA
records (question/context/answer) that the course's train step renders through the chat template.
"""
import random
import re

ABSENT = "(nicht im Text)"
REFUSAL = "Das geht aus den vorliegenden Dokumenten nicht hervor."
STOP = set("""aber alle allem allen aller alles also auch auf aus bei beim bin bis bitte dann damit dass dein deine dem den
denn der des dessen die dies diese diesem diesen dieser dieses doch dort durch eine einem einen einer eines einige etwa
euch für gegen habe haben hat hatte hier hinter ihre ihrem ihren ihrer ihres immer indem jede jedem jeden jeder jedes
jetzt kann kein keine keinem keinen keiner können könnte mehr mein meine mich mir mit muss müssen nach nicht noch nur
oder ohne sehr sein seine sich sie sind soll sollen sollte sondern sowie über unter und uns unsere vom von vor wann
war waren warum was weil welche welchem welchen welcher welches wenn wer werden wie wieder wird wir wird wurde wurden
zum zur zwischen Sie Ihr Ihre Ihnen Das Der Die Ein Eine Bei Für Mit Nach Wenn Wer Was Wie Im Ist Auf Zur Zum Bitte
""".lower().split())
FIRST = ("Anna Jonas Lena Felix Mara Tobias Ida Malte Greta Henrik Nele Till Rieke Jannis Wiebke Ole Svea Fiete Frieda "
         "Bosse Hanne Levin Insa Kilian Tomke Arvid Merle Piet Alva Hauke").split()
SYL1 = "Kal Wen Bro Tras Mer Hol Dre Fal Gun Lind Ost Rau Sel Tarn Ub Vell Wic Zorn Alt Bir".split()
SYL2 = "ten ger sch mann bach ner dorf inger haus ke berg eder stett hof".split()
WQ = ["Was", "Wie", "Wann", "Wer", "Wo", "Welche", "Wie viele", "Wie lange", "Ab wann", "Wozu", "Womit", "Was gilt"]
PRE_FORMATS = [("Text: ", "\nFrage: ", "\nAntwort: "), ("Kontext:\n", "\n\nFrage: ", "\nAntwort: "),
               ("Abschnitt: ", "\nGesucht: ", "\nFundstelle: ")]
WORD = re.compile(r"[\wÄÖÜäöüß][\wÄÖÜäöüß\-]*")


def clean_line(s):
    s = s.replace("**", "").replace("__", "")
    s = re.sub(r"^\s*(?:#+|[-*•]|\d+\.)\s+", "", s)
    s = re.sub(r"[ \t]+", " ", s)
    return s.strip()


ABBR = re.compile(r"\b(z|d|u|o|v|s|ca|Nr|Dr|bzw|ggf|inkl|evtl|max|min|Abs|Art|Tel|bspw|vgl|etc|usw|Std|Mio|Mrd)\.\s?(?:([a-zA-Z])\.)?")


def sentences(text):
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines, cur = [], ""
        for line in para.split("\n"):
            raw = line.strip()
            if re.match(r"^(#|[-*\u2022]\s|\||\d+\.\s)", raw) or not cur or re.search(r"[.!?:]$", cur):
                if cur:
                    lines.append(cur)
                cur = raw
            else:
                cur += " " + raw
        if cur:
            lines.append(cur)
        for line in lines:
            line = clean_line(line)
            if not line or set(line) <= set("|-: "):
                continue
            prot = ABBR.sub(lambda m: m.group(0).replace(".", "\x00"), line)
            for p in re.split(r"(?<=[.!?])\s+(?=[A-Z\u00c4\u00d6\u00dc\d\u201e\"(])", prot):
                p = p.replace("\x00", ".").strip()
                if 20 <= len(p) <= 260 and len(WORD.findall(p)) >= 4:
                    out.append(p)
    return out


def content_words(s):
    return [w for w in WORD.findall(s) if len(w) >= 4 and w.lower() not in STOP and w != "NAME"]


def fake_name(rng, planted):
    while True:
        n = f"{rng.choice(FIRST)} {rng.choice(SYL1)}{rng.choice(SYL2)}"
        if n not in planted:
            return n


def redraw(texts, rng, planted, p_num=1.0, p_words=0.0, vocab=None):
    """Consistently re-draw numbers (same digits count), [NAME] placeholders and, optionally, a share of content
    words (replaced by random corpus words) across a list of strings, so memory cannot answer."""
    nummap, wordmap = {}, {}

    def num(m):
        g = m.group()
        if g not in nummap:
            nummap[g] = g if rng.random() > p_num else str(rng.randint(10 ** (len(g) - 1) if len(g) > 1 else 0,
                                                                       10 ** len(g) - 1))
        return nummap[g]

    def word(m):
        w = m.group()
        if len(w) < 5 or w.lower() in STOP:
            return w
        if w not in wordmap:
            wordmap[w] = rng.choice(vocab) if rng.random() < p_words else w
        return wordmap[w]

    out = []
    for t in texts:
        t = re.sub(r"\d+", num, t)
        if p_words and vocab:
            t = WORD.sub(word, t)
        t = re.sub(r"\[NAME\]", lambda m: fake_name(rng, planted), t)
        out.append(t)
    return out


def make_question(s, others, rng):
    """A question about sentence s in one of several template styles; keywords preferably distinctive
    (not in the other sentences of the window)."""
    cw = content_words(s)
    if not cw:
        return None
    other_text = " ".join(others).lower()
    dist = [w for w in cw if w.lower() not in other_text] or cw
    nums = re.findall(r"\d[\d.,]*\s?[\wäöüß%]*", s)
    style = rng.randrange(7)
    k = rng.sample(dist, min(len(dist), rng.randint(1, 3)))
    if style == 0:
        return "Stichworte: " + ", ".join(k)
    if style == 1:
        return f"Was steht im Text über {' und '.join(k[:2])}?"
    if style == 2 and nums:
        unit = nums[0].split()[-1] if len(nums[0].split()) > 1 else ""
        return f"{rng.choice(['Wie viele', 'Welche Zahl', 'Wie lange', 'Bis wann'])} {unit} {' '.join(k[:2])}?".replace("  ", " ")
    if style == 3:
        ws = s.rstrip(".!?").split()
        if len(ws) > 6:
            i = rng.randrange(0, len(ws) - 4)
            chunk = " ".join(ws[i:i + rng.randint(3, 6)])
            return f"{rng.choice(WQ)} {chunk}?"
    if style == 4:
        w = rng.choice(dist)
        return "Lücke: " + s.replace(w, "___", 1)
    if style == 5:
        return f"{rng.choice(WQ)} {' '.join(k)}?"
    return f"Was gilt für {k[0]}" + (f" bei {k[1]}" if len(k) > 1 else "") + "?"


def qa_window(sents, rng, min_n=1, max_n=5, max_chars=600, p_absent=0.25, hard=True):
    """One extractive item from a document's sentence list: (context sentences, question, answer or None)."""
    for _ in range(20):
        n = rng.randint(min_n, max_n)
        if len(sents) < n + 1:
            continue
        lo = rng.randrange(0, len(sents) - n + 1)
        win = sents[lo:lo + n]
        if sum(len(x) for x in win) > max_chars:
            continue
        absent = rng.random() < p_absent
        if absent:
            outside = [i for i in range(len(sents)) if not lo <= i < lo + n]
            near = [i for i in outside if abs(i - lo) <= 4 or abs(i - (lo + n - 1)) <= 4] if hard else outside
            t = sents[rng.choice(near or outside)]
            q = make_question(t, win, rng)
            if not q:
                continue
            qk = [w.lower() for w in content_words(q.split(":", 1)[-1]) if w.lower() not in {"steht", "text", "gilt"}]
            wt = " ".join(win).lower()
            if not qk or all(w in wt for w in qk):
                continue  # the "absent" question would be answerable from the window
            return win, q, None, -1
        j = rng.randrange(n)
        q = make_question(win[j], win[:j] + win[j + 1:], rng)
        if q:
            return win, q, win[j], j
    return None


def kv_item(rng, vocab, fmt):
    n = rng.randint(3, 12)
    keys = set()
    while len(keys) < n:
        keys.add(rng.choice(["", rng.choice(vocab) + "-"]) + "".join(rng.choice("ABCDEFGHKLMNPRSTUVWXZ") for _ in range(2)) + str(rng.randint(1, 999)))
    keys = list(keys)
    vals = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 6))) + (f" {rng.randint(1, 9999)}" if rng.random() < .4 else "") for _ in keys]
    sep = rng.choice([": ", " = ", " – "])
    ctx = rng.choice(["; ", "\n"]).join(f"{k}{sep}{v}" for k, v in zip(keys, vals))
    if rng.random() < 0.2:
        q = "".join(rng.choice("ABCDEFGHKLMNPRSTUVWXZ") for _ in range(2)) + str(rng.randint(1, 999))
        a = ABSENT if q not in keys else vals[keys.index(q)]
    else:
        i = rng.randrange(n)
        q, a = keys[i], vals[i]
    h, qq, aa = fmt
    return f"{h}{ctx}{qq}{rng.choice(['', 'Wert von ', 'Was steht bei '])}{q}{'?' if rng.random() < .5 else ''}{aa}{a}\n\n"


def pre_example(kind, doc_sents, docs_text, rng, planted, vocab):
    fmt = rng.choice(PRE_FORMATS)
    if kind == "kv":
        return kv_item(rng, vocab, fmt)
    if kind == "text":
        t = rng.choice(docs_text)
        i = rng.randrange(0, max(1, len(t) - 1500))
        return redraw([t[i:i + 1500]], rng, planted, p_num=0.5)[0] + "\n\n"
    sents = rng.choice(doc_sents)
    item = qa_window(sents, rng)
    if item is None:
        return ""
    win, q, a, j = item
    pw = 0.6 if kind == "novel" else 0.0
    parts = redraw(win + [q] + ([a] if a else []), rng, planted, p_num=0.8, p_words=pw, vocab=vocab)
    ctx = " ".join(parts[:len(win)]) if rng.random() < .6 else "\n".join(parts[:len(win)])
    q2 = parts[len(win)]
    a2 = parts[-1] if a else ABSENT
    h, qq, aa = fmt
    return f"{h}{ctx}{qq}{q2}{aa}{a2}\n\n"


def probe_items(doc_sents, n, seed, planted, p_absent=0.2):
    """Held-out reading probe: windows of eval-split documents, numbers and names re-drawn."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        item = qa_window(rng.choice(doc_sents), rng, p_absent=p_absent)
        if item is None:
            continue
        win, q, a, j = item
        parts = redraw(win + [q] + ([a] if a else []), rng, planted, p_num=1.0)
        out.append({"context": " ".join(parts[:len(win)]), "question": parts[len(win)],
                    "answer": parts[-1] if a else ABSENT})
    return out


def ft_records(docs, n, seed, planted, p_absent=0.25, p_redraw=0.5, p_novel=0.0):
    """Chat fine-tuning records from training-split documents: short on-topic contexts (1-3 sentences, like the
    gold set), extractive answers (the sentence that holds the fact), hard-negative unanswerables -> REFUSAL."""
    rng = random.Random(seed)
    doc_sents = [(d["doc_id"], sentences(d["text"])) for d in docs]
    doc_sents = [x for x in doc_sents if len(x[1]) >= 4]
    out = []
    while len(out) < n:
        doc_id, sents = rng.choice(doc_sents)
        item = qa_window(sents, rng, min_n=1, max_n=3, max_chars=450, p_absent=p_absent)
        if item is None:
            continue
        win, q, a, j = item
        if q.startswith(("Stichworte", "Lücke")) and rng.random() < 0.7:
            continue  # fewer non-question styles in chat data
        if rng.random() < p_novel:
            parts = redraw(win + [q] + ([a] if a else []), rng, planted, p_num=1.0, p_words=0.4, vocab=_vocab(docs))
        elif rng.random() < p_redraw:
            parts = redraw(win + [q] + ([a] if a else []), rng, planted, p_num=1.0)
        else:
            parts = redraw(win + [q] + ([a] if a else []), rng, planted, p_num=0.0)
        out.append({"id": f"syn-{seed}-{len(out):05d}", "doc_id": doc_id, "question": parts[len(win)],
                    "context": " ".join(parts[:len(win)]), "answer": parts[-1] if a else REFUSAL,
                    "type": "factual" if a else "unanswerable", "source": "generated"})
    return out


_V = {}


def _vocab(docs):
    if "v" not in _V:
        _V["v"] = sorted({w for d in docs for x in sentences(d["text"]) for w in content_words(x) if len(w) >= 5})
    return _V["v"]


def _tok(s):
    return re.findall(r"\w+", s.lower())


def f1(p, r):
    from collections import Counter
    p, r = _tok(p), _tok(r)
    c = sum((Counter(p) & Counter(r)).values())
    return 0.0 if not c else 2 * c / (len(p) + len(r))


def extractive_gold(rec):
    """A gold record with its answer replaced by the context sentence that best matches the evidence."""
    if rec["type"] == "unanswerable":
        return {**rec, "answer": REFUSAL, "source": "gold"}
    sents = [s for s in re.split(r"(?<=[.!?])\s+|\n+", rec["context"]) if s.strip()] or [rec["context"]]
    best = max(sents, key=lambda s: f1(s, rec.get("evidence") or rec["answer"]))
    return {**rec, "answer": best.strip(), "source": "gold"}


def counterfactual(records, seed=0):
    """Eval items whose key number (one that the context and the reference share) is replaced in context and
    reference by another plausible value."""
    rng = random.Random(seed)
    out = []
    for r in records:
        if r["type"] == "unanswerable":
            continue
        cn = re.findall(r"(?<![\d.,])\d+(?![\d])", r["context"])
        ev = r.get("evidence") or ""
        cn = sorted(dict.fromkeys(cn), key=lambda x: x not in ev)
        shared = [x for x in cn if re.search(rf"(?<![\d]){x}(?![\d])", r["answer"]) and not (1990 <= int(x) <= 2030)]
        if not shared:
            continue
        old = shared[0]
        v = int(old)
        new = str(v + rng.choice([1, 2, 3, 5]) if v < 10 else v * 2 if v < 1000 else v + 1000)
        sub = lambda t: re.sub(rf"(?<![\d.,]){old}(?![\d])", new, t)
        out.append({**r, "id": r["id"] + "-cf", "context": sub(r["context"]), "answer": sub(r["answer"]),
                    "cf_old": old, "cf_new": new})
    return out
