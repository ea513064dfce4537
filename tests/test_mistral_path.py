"""The course's tokenizer-facing code on a Mistral-shaped test model: the real Mistral-7B-v0.1 tokenizer (no chat
template, no pad token), its config at a tiny width, random weights. What a workshop's first cells run on l4/t4."""

from __future__ import annotations

import dataclasses
import json

import pytest

from helpers import adapters, chatformat, chunking, diagnose, generation, gold, labels, modelcheck, prompts, testmodel
from helpers.profiles import load_profile


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return testmodel.build(tmp_path_factory.mktemp("mistral") / "mistral-tiny", shape="tiny")


@pytest.fixture(scope="module")
def profile(mistral_dir):
    """The mini profile's CPU settings, with the Mistral test model as base (as l4 names Mistral-7B-v0.1)."""
    return dataclasses.replace(load_profile("mini"), name="mistral-test", model=str(mistral_dir),
                               train_model=str(mistral_dir), chat_template="course-inst")


def _record(**kw):
    rec = {"id": "t1", "question": "Wie schnell reagiert die IT bei P1?", "answer": "Innerhalb von 30 Minuten.",
           "context": "Bei einer P1-Störung meldet sich die IT spätestens nach 30 Minuten.", "type": "factual"}
    return {**rec, **kw}


def test_tokenizer_gets_course_template_and_pads_with_unk(mistral_dir):
    tok = labels.load_tokenizer(str(mistral_dir))
    assert tok.course_template == chatformat.INST_TEMPLATE_NAME
    assert (tok.pad_token, tok.pad_token_id) == ("<unk>", 0) and tok.pad_token_id != tok.eos_token_id
    bug = labels.load_tokenizer(str(mistral_dir), pad_as_eos=True)
    assert bug.pad_token_id == bug.eos_token_id == 2


def test_model_folder_tokenizes_as_sentencepiece_does(mistral_dir):
    # the folder has a Mistral config.json; loaded from it, the tokenizer still splits like Mistral's own
    # SentencePiece model, "▁" before the first word included (a generic conversion dropped it)
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(testmodel.sentencepiece_file()))
    tok = labels.load_tokenizer(str(mistral_dir))
    for text in ("Wie beantrage ich Urlaub?", "Ärger mit der VPN: 3 Schritte, Ticket #4711.\nZweite Zeile."):
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_completion_only_labels_end_with_eos(mistral_dir):
    tok = labels.load_tokenizer(str(mistral_dir))
    ex = labels.encode(tok, _record(), 512)
    learned = [t for t in ex["labels"] if t != labels.IGNORE_INDEX]
    assert learned[-1] == tok.eos_token_id
    assert tok.decode(learned[:-1]).strip() == "Innerhalb von 30 Minuten."
    prompt = tok.decode(ex["input_ids"][:len(ex["input_ids"]) - ex["answer_tokens"]])
    assert prompt.startswith("<s> [INST] " + prompts.SYSTEM_PROMPT[:30]) or prompt.startswith("<s>[INST] ")
    assert prompt.rstrip().endswith("[/INST]") and prompt.count("[INST]") == 1


def test_diagnose_on_the_mistral_tokenizer(profile):
    records = [_record(id=f"t{i}") for i in range(4)]
    report = diagnose.inspect_setup(profile, records)
    assert report["ok"], report["problems"]
    assert report["eos_label_share"] == 1.0 and not report["pad_equals_eos"]
    assert report["template_has_system_prompt"] and report["chat_template"] == "course-inst"
    buggy = diagnose.inspect_setup(profile, records, pad_as_eos=True, collator="lm")
    assert buggy["eos_label_share"] == 0.0 and buggy["problems"]


def test_chunk_token_counts_use_the_mistral_pieces(mistral_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_dir)
    text = " ".join(gold.load_qa()[i]["context"] for i in range(40))
    chunks = chunking.chunk_text(text, tok, max_tokens=64, overlap=8)
    assert len(chunks) > 3 and max(c["token_count"] for c in chunks) <= 64
    for c in chunks:   # the count is the Mistral tokenizer's, not the corpus BPE's or a word count
        assert c["token_count"] == len(tok(c["text"], add_special_tokens=False)["input_ids"])
    assert chunking.count_tokens(tok, "Störung") == len(tok("Störung", add_special_tokens=False)["input_ids"])


def test_structured_output_grammar_compiles_for_the_mistral_vocabulary(mistral_dir):
    import xgrammar as xgr
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mistral_dir)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=32000)
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(generation.schema("factual")))
    matcher = xgr.GrammarMatcher(compiled)
    def continuation(text):   # as the model writes it after the prompt: no SentencePiece "▁" before "{"
        ids = tok("\n" + text, add_special_tokens=False)["input_ids"]
        return ids[ids.index(tok.convert_tokens_to_ids("<0x0A>")) + 1:]

    good = json.dumps({"question": "Wie schnell reagiert die IT?", "answer": "In 30 Minuten."}, ensure_ascii=False)
    assert all(matcher.accept_token(t) for t in continuation(good))
    bad = xgr.GrammarMatcher(compiled)
    assert not all(bad.accept_token(t) for t in continuation('{"frage": 1}'))


def test_adapter_for_another_base_is_refused(tmp_path):
    t4 = load_profile("t4")
    assert t4.serving_base == t4.train_model == "mistralai/Mistral-7B-v0.1"
    ad = tmp_path / "instruct-adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"r": 16, "base_model_name_or_path": "x"}))
    (ad / "training_info.json").write_text(json.dumps({"base_model_id": "mistralai/Mistral-7B-Instruct-v0.2"}))
    with pytest.raises(adapters.AdapterError, match="trained on 'mistralai/Mistral-7B-Instruct-v0.2'"):
        adapters.check_adapter("faq", ad, t4, model_dir=str(tmp_path))


def test_model_check_reports_template_setting_and_base(profile, mistral_dir):
    found = {f.check: f for f in modelcheck.check(profile)}
    assert found["model present"].ok and found["train_model chat template"].ok
    assert "[INST]" in found["train_model chat template"].detail and found["same tokenizer"].ok
    unset = dataclasses.replace(profile, chat_template=None)
    bad = {f.check: f for f in modelcheck.check(unset)}
    assert not bad["template setting"].ok and "chat_template: course-inst" in bad["template setting"].fix
    other = dataclasses.replace(profile, base_model="mistralai/Mistral-7B-Instruct-v0.2")
    assert not {f.check: f for f in modelcheck.check(other)}["same base"].ok
    assert not {f.check: f for f in modelcheck.check(dataclasses.replace(profile, model="nicht/da"))}["model present"].ok


def test_vllm_serve_uses_the_course_template_and_folds_system(profile, tmp_path):
    from helpers import serve

    server = serve.VLLMServer(profile, log_path=tmp_path / "server.log")
    cmd = server.command()
    assert "--chat-template" in cmd
    assert open(cmd[cmd.index("--chat-template") + 1]).read() == chatformat.INST_TEMPLATE
    with server:
        msgs = prompts.qa_messages("Wie schnell?", "Kontext.")
        reply = serve.ask(server, msgs, max_tokens=4)
    tok = labels.load_tokenizer(profile.model)
    expected = len(tok(chatformat.render(tok, msgs), add_special_tokens=False)["input_ids"])
    assert reply["prompt_tokens"] == expected   # the server rendered exactly the course's [INST] prompt
    assert reply["finish_reason"] in ("stop", "length")
