import hashlib

import pytest

from helpers import kursmini, prompts

TINY = kursmini.BuildConfig(vocab_size=400, hidden_size=128, intermediate_size=256, num_layers=1, num_heads=2,
                            num_kv_heads=1, steps=4, batch_size=2, block_size=32, warmup_steps=1)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (root / f"doc{i}.md").write_text(
            f"# Dokument {i}\n\nDie Datensicherung läuft täglich um 22:30 Uhr. Vollbackup am Samstag um 02:00.\n"
            f"Tägliche Sicherungen bleiben 35 Tage, monatliche 13 Monate erhalten. Abschnitt {i}.\n" * 6,
            encoding="utf-8")
    return root


def _weights_digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_reproducible_and_has_chat_template(tiny_corpus, tmp_path):
    a = kursmini.build(tiny_corpus, tmp_path / "a", TINY, progress=False)
    b = kursmini.build(tiny_corpus, tmp_path / "b", TINY, progress=False)
    assert _weights_digest(a) == _weights_digest(b)
    from transformers import AutoConfig, AutoTokenizer

    cfg = AutoConfig.from_pretrained(a)
    assert cfg.architectures == ["MistralForCausalLM"] and cfg.head_dim == 64
    tok = AutoTokenizer.from_pretrained(a)
    assert tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template(prompts.qa_messages("Wann?", "Kontext", "Um 22:30."), tokenize=False)
    assert prompts.SYSTEM_PROMPT in text and text.rstrip().endswith("Um 22:30." + tok.eos_token)
    gen = tok.apply_chat_template(prompts.qa_messages("Wann?", "Kontext"), tokenize=False,
                                  add_generation_prompt=True)
    assert gen.endswith("<|assistant|>\n")
    info = kursmini.build_info(a)
    assert info["fingerprint"] == kursmini.build_fingerprint(tiny_corpus, TINY)
    assert info["loss_last"] < info["loss_first"]


def test_pretraining_stream_contains_no_eos(tiny_corpus, tmp_path):
    from helpers import documents

    texts = [d.text for d in documents.load_corpus(tiny_corpus)]
    tok = kursmini.train_tokenizer(texts, 400)
    stream = kursmini._token_stream(tok, texts)
    assert tok.eos_token_id not in set(stream.tolist())


def test_ensure_reuses_and_rebuilds_on_corpus_change(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "m"
    kursmini.ensure(out, tiny_corpus, TINY, progress=False)
    first = (out / "build_info.json").stat().st_mtime_ns
    kursmini.ensure(out, tiny_corpus, TINY, progress=False)
    assert (out / "build_info.json").stat().st_mtime_ns == first  # reused, not rebuilt
    (tiny_corpus / "doc0.md").write_text("# Neu\n\nGeänderter Text für einen neuen Fingerabdruck. " * 20,
                                         encoding="utf-8")
    kursmini.ensure(out, tiny_corpus, TINY, progress=False)
    assert "another corpus" in capsys.readouterr().out
    assert kursmini.build_info(out)["fingerprint"] == kursmini.build_fingerprint(tiny_corpus, TINY)


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="No usable documents"):
        kursmini.build(tmp_path, tmp_path / "out", TINY, progress=False)


def test_pretraining_text_is_scrubbed_and_excludes_the_eval_split():
    from helpers import pii, split

    sel = kursmini.pretraining_documents()
    eval_docs = {r["doc_id"] for r in split.gold_splits()["eval"]}
    assert eval_docs and not eval_docs & set(sel["doc_ids"]) and set(sel["excluded_eval"]) == eval_docs
    text = "\n".join(sel["texts"])
    planted = [p["value"] for p in pii.load_planted() if len(p["value"]) >= 6]
    assert planted and [v for v in planted if v in text] == []


def test_committed_model_is_verified_and_used_without_a_build(tmp_path, monkeypatch):
    monkeypatch.setattr(kursmini, "build", lambda *a, **k: pytest.fail("must not build"))
    path = kursmini.ensure(tmp_path / "no-local-build")
    assert path == kursmini.committed_dir()
    manifest = kursmini.verify(path)
    assert manifest["fingerprint"] == kursmini.build_info(path)["fingerprint"]
    assert manifest["scrubbed_corpus_sha256"] and (path / "model.safetensors").stat().st_size < 50 * 2**20


@pytest.mark.parametrize("damage", ["truncate", "delete", "manifest"])
def test_corrupt_committed_model_names_the_rebuild_command(tmp_path, monkeypatch, damage):
    import shutil

    copy = tmp_path / "kurs-mini"
    shutil.copytree(kursmini.committed_dir(), copy)
    monkeypatch.setattr(kursmini, "committed_dir", lambda: copy)
    monkeypatch.setattr(kursmini, "build", lambda *a, **k: pytest.fail("must not fall back to a build"))
    if damage == "truncate":
        data = (copy / "model.safetensors").read_bytes()
        (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "delete":
        (copy / "tokenizer.json").unlink()
    else:
        (copy / "MANIFEST.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(kursmini.KursMiniError, match="python -m helpers model build"):
        kursmini.ensure(tmp_path / "no-local-build")


def test_a_changed_corpus_is_refused_with_the_rebuild_command_never_replaced(tiny_corpus, tmp_path, monkeypatch):
    """The committed model is the reading build of the course corpus: on another corpus ensure() says how to
    rebuild instead of silently training some other model."""
    monkeypatch.setattr(kursmini, "build", lambda *a, **k: pytest.fail("must not fall back to a build"))
    with pytest.raises(kursmini.KursMiniError, match="python -m helpers model build"):
        kursmini.ensure(tmp_path / "no-local-build", tiny_corpus)


def test_the_reading_recipe_without_a_gpu_says_what_to_do(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(kursmini.KursMiniError, match="needs a CUDA GPU.*--recipe plain"):
        kursmini.build_reading()


def test_committed_model_is_the_reading_build_with_its_probe():
    manifest = kursmini.verify(kursmini.committed_dir())
    assert manifest["recipe"] == kursmini.READING_SCRIPT and manifest["config"] == kursmini.READING_RECIPE
    assert manifest["probe"]["absent"] >= 0.9 and manifest["probe"]["repeat"] >= 0.9
    assert (kursmini.paths.ROOT / kursmini.READING_SCRIPT).exists()
