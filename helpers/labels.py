"""Label building for fine-tuning: the tokenizer, one example's input ids and completion-only labels, collators.

The key teaching code of notebooks 05 and 05.3 (and what ``diagnose`` inspects):

* The prompt is rendered by the tokenizer's chat template with the course's system prompt, exactly as
  offline inference and ``vllm serve`` render it.
* Labels come from token positions: the prompt (``add_generation_prompt=True``) must be a token prefix of
  the full conversation; only the assistant span and its EOS are labelled. Nothing searches decoded text.
* pad_token is distinct from eos_token. With ``pad_as_eos=True`` and the language-modelling collator the
  course reproduces the pad_token bug on purpose (every EOS is masked out of the labels).
* An example longer than ``max_length`` is rejected with a reason instead of being truncated.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from . import chatformat, io, prompts
from .errors import HelpersError

IGNORE_INDEX = -100
COLLATORS = ("completion", "lm")


class TrainingDataError(HelpersError, ValueError):
    """The training data cannot be used (empty, malformed, nothing left after validation)."""


class TemplateError(HelpersError, ValueError):
    """The chat template does not behave as the label masking needs (prefix, EOS)."""


def load_tokenizer(model_dir: str, pad_as_eos: bool = False):
    """The base model's tokenizer with a chat template and a pad token distinct from EOS (or, for the experiment,
    pad = eos).

    A base model without a chat template (Mistral-7B-v0.1) gets the course's ``[INST]`` template
    (``chatformat.ensure_template``), the same text ``vllm serve`` receives via ``--chat-template``.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    try:
        tok.course_template = chatformat.ensure_template(tok, str(model_dir))
    except chatformat.ChatFormatError as exc:
        raise TemplateError(str(exc)) from exc
    if pad_as_eos:
        tok.pad_token = tok.eos_token  # the pad_token bug, reproduced on purpose (notebook 05.3)
    elif tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            tok.pad_token = tok.unk_token  # Mistral/Llama: no pad token; unk is never a label and not EOS
        else:
            raise TemplateError(f"The tokenizer in {model_dir} has no token to pad with besides EOS. Add a pad token "
                                "(and resize the embeddings) before training.")
    tok.padding_side = "right"
    return tok


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_messages(record: dict) -> list[dict]:
    """The prompt of a training record: its own ``messages`` (role adapters: QA writer, judge), else the course's
    QA prompt from ``question`` and ``context``."""
    if record.get("messages"):
        return [dict(m) for m in record["messages"]]
    return prompts.qa_messages(record["question"], record.get("context"))


def encode(tokenizer, record: dict, max_length: int) -> dict:
    """One training example: input_ids and completion-only labels (assistant span + EOS).

    Raises TemplateError if the template breaks the prefix property or drops EOS, and ValueError (with
    ``reason``) when the example does not fit ``max_length`` -- it is never silently truncated.
    """
    conversation = prompt_messages(record)
    # system text folded into the first user turn where the template rejects the system role
    prompt_text = chatformat.render(tokenizer, conversation)
    full_text = chatformat.render(tokenizer, conversation + [{"role": "assistant", "content": record["answer"]}],
                                  add_generation_prompt=False)
    prompt_ids, full_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, full_text)
    if full_ids[:len(prompt_ids)] != prompt_ids:
        raise TemplateError("The tokenized prompt (add_generation_prompt=True) is not a prefix of the tokenized "
                            "conversation, so the assistant span cannot be located by position. Check the chat "
                            f"template (record {record.get('id')}).")
    eos = tokenizer.eos_token_id
    tail = full_ids[len(prompt_ids):]
    if eos not in tail:
        raise TemplateError("The chat template does not end the assistant message with the EOS token; a model "
                            "trained on it never learns to stop. Append eos_token after the assistant content.")
    end = len(prompt_ids) + tail.index(eos) + 1  # keep the answer and its EOS; drop what follows EOS
    input_ids = full_ids[:end]
    if len(input_ids) > max_length:
        err = ValueError(f"{len(input_ids)} tokens > max_length {max_length}: truncation would cut the answer "
                         "and its EOS")
        err.reason = f"too_long: {len(input_ids)} tokens > max_length {max_length}"
        raise err
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return {"input_ids": input_ids, "labels": labels, "length": len(input_ids),
            "answer_tokens": end - len(prompt_ids)}


def encode_each(tokenizer, records: list[dict], max_length: int) -> tuple[list[dict], list[tuple[dict, str]]]:
    """``encode`` every record: the examples, and the records too long to keep their answer with the reason
    (a chat template that breaks the label masking still raises ``TemplateError``)."""
    encoded, too_long = [], []
    for rec in records:
        try:
            encoded.append(encode(tokenizer, rec, max_length))
        except TemplateError:
            raise
        except ValueError as exc:
            too_long.append((rec, getattr(exc, "reason", str(exc))))
    return encoded, too_long


def encode_records(tokenizer, records: list[dict], max_length: int, rejects_path: str | Path | None = None,
                   source: str = "") -> list[dict]:
    """Encode all records; too-long ones go to the rejects file (reason, stage) and are reported."""
    encoded, too_long = encode_each(tokenizer, records, max_length)
    rejected = [{**rec, "reason": reason, "stage": "encode"} for rec, reason in too_long]
    if rejected:
        if rejects_path:
            io.append_jsonl(rejects_path, rejected)
        warnings.warn(f"{len(rejected)} of {len(records)} examples {source} rejected as longer than max_length "
                      f"{max_length} (never truncated: that would cut the answer's EOS)"
                      + (f"; see {rejects_path}" if rejects_path else ""), stacklevel=2)
    if not encoded:
        raise TrainingDataError(f"All {len(records)} examples {source} are longer than max_length {max_length}. "
                                "Raise train.max_length in the profile or shorten the contexts.")
    return encoded


class CompletionCollator:
    """Right-pads input_ids with the pad token, labels with -100 (so EOS in the labels stays a label)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids, labels, mask = [], [], []
        for f in features:
            pad = longest - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            mask.append([1] * len(f["input_ids"]) + [0] * pad)
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "attention_mask": torch.tensor(mask)}


class LMCollator:
    """``DataCollatorForLanguageModeling(mlm=False)``: labels = input_ids with every pad position masked.

    With a distinct pad token this labels the whole sequence (prompt included). With pad = eos it masks
    every EOS too -- the pad_token bug.
    """

    def __init__(self, tokenizer):
        from transformers import DataCollatorForLanguageModeling

        self.inner = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False)

    def __call__(self, features: list[dict]) -> dict:
        return self.inner([{"input_ids": list(f["input_ids"])} for f in features])


def make_collator(tokenizer, kind: str = "completion"):
    if kind == "completion":
        return CompletionCollator(tokenizer.pad_token_id)
    if kind == "lm":
        return LMCollator(tokenizer)
    raise ValueError(f"Unknown collator '{kind}': choose one of {', '.join(COLLATORS)}")
