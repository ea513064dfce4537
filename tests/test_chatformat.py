"""Chat formatting on the real Mistral-7B-v0.1 tokenizer: the course's [INST] template, system folding."""

from __future__ import annotations

import pytest

from helpers import chatformat, prompts, testmodel

# A strict template in the style of Mistral's instruct templates: alternating turns only, system role refused.
STRICT = testmodel.STRICT_INST_TEMPLATE
# A template that renders, but silently drops the system message.
DROPPING = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def mistral_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(testmodel.write_tokenizer(tmp_path_factory.mktemp("mistral-tok")))


def _fresh(tok, template=None):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


def test_real_mistral_tokenizer_loads_offline_without_template(mistral_tok):
    assert len(mistral_tok) == 32000
    assert (mistral_tok.unk_token_id, mistral_tok.bos_token_id, mistral_tok.eos_token_id) == (0, 1, 2)
    assert mistral_tok.chat_template is None and mistral_tok.pad_token is None
    # German as the real model splits it (SentencePiece pieces with the word-boundary marker)
    pieces = mistral_tok.convert_ids_to_tokens(mistral_tok("Bei einer P1-Störung", add_special_tokens=False)["input_ids"])
    assert pieces[:2] == ["▁Bei", "▁einer"] and "ör" in pieces


def test_base_model_gets_the_course_template_with_system_folded(mistral_tok):
    tok = _fresh(mistral_tok)
    assert chatformat.ensure_template(tok, "Mistral-7B-v0.1") == chatformat.INST_TEMPLATE_NAME
    msgs = prompts.qa_messages("Wie schnell?", "Kontext.", "Antwort.")
    prompt = chatformat.render(tok, msgs[:2])
    full = chatformat.render(tok, msgs, add_generation_prompt=False)
    assert prompt.startswith("<s>[INST] " + prompts.SYSTEM_PROMPT + "\n\nKontext:")
    assert prompt.endswith(" [/INST]") and full == prompt + " Antwort.</s>"
    assert prompt.count("[INST]") == 1  # system text inside the first instruction, not a turn of its own
    ids_p = tok(prompt, add_special_tokens=False)["input_ids"]
    ids_f = tok(full, add_special_tokens=False)["input_ids"]
    assert ids_p[0] == tok.bos_token_id and ids_f[:len(ids_p)] == ids_p  # prefix property for label masking
    assert ids_f[-1] == tok.eos_token_id
    assert chatformat.ensure_template(tok) == "tokenizer"  # a template present is kept


def test_strict_template_rejects_system_and_the_course_folds_it(mistral_tok):
    tok = _fresh(mistral_tok, STRICT)
    msgs = prompts.qa_messages("Frage?", "Kontext.")
    with pytest.raises(Exception, match="alternate"):
        tok.apply_chat_template(msgs, tokenize=False)
    assert chatformat.accepts_system(tok) is False
    text = chatformat.render(tok, msgs)
    assert text == f"<s>[INST] {prompts.SYSTEM_PROMPT}\n\nKontext:\nKontext.\n\nFrage: Frage? [/INST]"


def test_template_that_drops_system_is_detected(mistral_tok):
    tok = _fresh(mistral_tok, DROPPING)
    assert chatformat.accepts_system(tok) is False
    assert prompts.SYSTEM_PROMPT in chatformat.render(tok, prompts.qa_messages("Frage?", "Kontext."))


def test_course_template_keeps_system_and_kursmini_style_templates_are_untouched(mistral_tok):
    tok = _fresh(mistral_tok, chatformat.INST_TEMPLATE)
    assert chatformat.accepts_system(tok) is True
    msgs = prompts.qa_messages("F?", "K.")
    assert chatformat.prepare(tok, msgs) is msgs


def test_fold_system_edge_cases():
    assert chatformat.fold_system([{"role": "user", "content": "u"}]) == [{"role": "user", "content": "u"}]
    assert chatformat.fold_system([{"role": "system", "content": "s"}]) == [{"role": "user", "content": "s"}]
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    assert chatformat.fold_system(msgs) == [{"role": "user", "content": "s\n\nu"}]
    assert msgs[1]["content"] == "u"  # the caller's messages are not modified


def test_tokenizer_without_bos_eos_gets_a_clear_error(mistral_tok):
    tok = _fresh(mistral_tok)
    tok.bos_token = None
    with pytest.raises(chatformat.ChatFormatError, match="chat_template"):
        chatformat.ensure_template(tok, "some-model")


def test_template_file_for_vllm_serve(tmp_path):
    path = chatformat.template_file(tmp_path)
    assert path.read_text(encoding="utf-8") == chatformat.INST_TEMPLATE
    assert chatformat.template_file(tmp_path) == path


def test_config_is_mistral_7b_v01_and_tiny_keeps_vocab():
    big, tiny = testmodel.config_dict("7b"), testmodel.config_dict("tiny")
    assert (big["hidden_size"], big["num_hidden_layers"], big["num_key_value_heads"], big["vocab_size"]) == \
        (4096, 32, 8, 32000)
    assert tiny["vocab_size"] == 32000 and tiny["head_dim"] == 64
    with pytest.raises(testmodel.MistralShapeError):
        testmodel.config_dict("13b")


class _PooledTokenizer:
    """The shape of vLLM 0.26's CUDA tokenizer: attributes set on it stay on the wrapper, rendering runs on a
    separate copy (found in the GPU dress rehearsal: the course's template never reached the copy)."""

    def __init__(self, tok):
        self._copy = _fresh(tok)
        self.bos_token, self.eos_token, self.chat_template = tok.bos_token, tok.eos_token, None

    def apply_chat_template(self, *args, **kwargs):
        return self._copy.apply_chat_template(*args, **kwargs)


def test_render_passes_the_template_explicitly_so_a_pooled_tokenizer_uses_it(mistral_tok):
    wrapper = _PooledTokenizer(mistral_tok)
    chatformat.ensure_template(wrapper, "Mistral-7B-v0.1")
    prompt = chatformat.render(wrapper, prompts.qa_messages("Wie schnell?", "Kontext."))
    assert prompt.startswith("<s>[INST] " + prompts.SYSTEM_PROMPT) and prompt.count("[INST]") == 1
    assert chatformat.accepts_system(wrapper) is True     # the course template keeps the system text
