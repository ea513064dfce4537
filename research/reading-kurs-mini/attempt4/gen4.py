"""Reading-curriculum v4 (issue 12): the v2 tasks, but contexts the model cannot have memorised.

Attempt 3 reached a task loss of 0.08 on training items and 0.28 on held-out extractive questions: with only 53
training documents it answered training items from memory of their sentences. v4 disguises most contexts
heavily (content words re-drawn with p in [0.3, 0.9], consistently across context, question and answer), mixes in
distractor sentences from another document and shuffles the sentence order, so that the only way to the answer
is matching question tokens against the context and copying."""
import random

import gen
import gen2

MODES = (["real", "novel", "random"], [0.15, 0.7, 0.15])


TRAINING = {"on": False}   # set in the pool workers; the probe keeps attempt 3's modes


def disguise(texts, rng, planted, vocab, mode=None):
    if mode is None or (TRAINING["on"] and mode == "real"):
        mode = rng.choices(*MODES)[0]
    if mode == "novel":
        return gen.redraw(texts, rng, planted, p_num=1.0, p_words=rng.uniform(0.3, 0.9), vocab=vocab)
    return gen2._orig_disguise(texts, rng, planted, vocab, mode)


def install():
    """gen2.item calls gen2.disguise: swap in the v4 version (the probe keeps its own 'real' mode)."""
    if not hasattr(gen2, "_orig_disguise"):
        gen2._orig_disguise = gen2.disguise
    gen2.disguise = disguise


def mixed_sents(doc_sents, rng):
    """A document's sentences, with probability 0.5 interleaved with 1-3 sentences of another document."""
    sents = list(rng.choice(doc_sents))
    if rng.random() < 0.5:
        lo = rng.randrange(0, max(1, len(sents) - 4))
        sents = sents[lo:lo + 5]
        other = rng.choice(doc_sents)
        for s in rng.sample(other, min(len(other), rng.randint(1, 3))):
            sents.insert(rng.randrange(len(sents) + 1), s)
    return sents


def item(kind, doc_sents, rng, planted, vocab):
    install()
    if kind == "kv":
        return gen2.item(kind, doc_sents, rng, planted, vocab)
    return gen2.item(kind, [mixed_sents(doc_sents, rng)], rng, planted, vocab)
