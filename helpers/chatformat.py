"""Chat formats: one template for base models that ship none, and system text folded where a template rejects it.

Two facts about the Mistral family shape this module:

* ``mistralai/Mistral-7B-v0.1`` is a base model; its tokenizer has no chat template. transformers then raises on
  ``apply_chat_template`` and vLLM refuses chat requests. The course ships its own ``[INST]`` template for such
  models (:data:`INST_TEMPLATE`) and passes the same text to ``vllm serve --chat-template``, so training,
  offline inference and the server render the conversation identically.
* Mistral's instruct templates accept only alternating user/assistant turns and raise on a ``system`` message.
  The course always sends one (``prompts.qa_messages``), so wherever a template rejects it -- or silently drops
  it -- the system text is folded into the first user turn (:func:`fold_system`), as the original series had to.

The ``[INST]`` format is Mistral's documented instruction format (``<s>[INST] instruction [/INST] answer</s>``);
the template below is written for this course and folds a system message into the first instruction itself.
"""

from __future__ import annotations

from pathlib import Path

from .errors import HelpersError

INST_TEMPLATE = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = message['content'] %}"
    "{% elif message['role'] == 'user' %}"
    "{% if ns.system %}{{ '[INST] ' + ns.system + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% set ns.system = '' %}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)
INST_TEMPLATE_NAME = "course-inst"
# Where the Kubernetes manifests mount the template (ConfigMap manifests/base/configmap-chat-template.yaml).
MANIFEST_TEMPLATE_PATH = f"/etc/souveraene-llms/{INST_TEMPLATE_NAME}.jinja"
_PROBE = "SYSTEM-PROBE-7f3a"


class ChatFormatError(HelpersError, ValueError):
    """A tokenizer cannot render the course's conversations; the message names the fix."""


def fold_system(messages: list[dict]) -> list[dict]:
    """Move system text into the first user turn (for templates that reject or drop the system role)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{system}\n\n{m['content']}"
            return rest
    return [{"role": "user", "content": system}, *rest]


def accepts_system(tokenizer) -> bool:
    """True if the tokenizer's template renders a system message and keeps its text.

    A template that raises on the system role (Mistral instruct) or drops its content returns False.
    """
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": _PROBE}, {"role": "user", "content": "Frage"}],
            tokenize=False, add_generation_prompt=True, chat_template=template_of(tokenizer))
    except Exception:  # noqa: BLE001 - jinja2's TemplateError and the templates' own raise_exception
        return False
    return _PROBE in text


def prepare(tokenizer, messages: list[dict]) -> list[dict]:
    """The messages as this tokenizer's template can render them (system folded where needed)."""
    if any(m["role"] == "system" for m in messages) and not accepts_system(tokenizer):
        return fold_system(messages)
    return messages


def ensure_template(tokenizer, source: str = "") -> str:
    """Give a tokenizer without chat template the course's ``[INST]`` template; return where the template came from.

    Returns ``"tokenizer"`` when the model ships its own template and :data:`INST_TEMPLATE_NAME` when the course's
    was set. Raises :class:`ChatFormatError` when neither fits (no BOS/EOS tokens to frame the turns).
    """
    if tokenizer.chat_template:
        return "tokenizer"
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ChatFormatError(
            f"The tokenizer of {source or 'this model'} has no chat template and no BOS/EOS tokens, so the course's "
            "[INST] template cannot frame the turns. Add a `chat_template` to its tokenizer_config.json.")
    tokenizer.chat_template = INST_TEMPLATE
    return INST_TEMPLATE_NAME


def lacks_template(model_dir: str | Path) -> bool:
    """True if a local model folder ships no chat template (a base model); False for a HF id or a folder with one.

    Reads only the files transformers and vLLM read (``tokenizer_config.json``, ``chat_template.jinja``/``.json``).
    """
    path = Path(model_dir)
    if not path.is_dir():
        return False
    if (path / "chat_template.jinja").is_file() or (path / "chat_template.json").is_file():
        return False
    config = path / "tokenizer_config.json"
    if config.is_file():
        import json

        try:
            return not json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return False
    return True


def template_file(directory: str | Path) -> Path:
    """Write :data:`INST_TEMPLATE` to ``directory/course-inst.jinja`` for ``vllm serve --chat-template``."""
    path = Path(directory) / f"{INST_TEMPLATE_NAME}.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != INST_TEMPLATE:
        path.write_text(INST_TEMPLATE, encoding="utf-8")
    return path


def template_of(tokenizer) -> str | None:
    """The template to render with, passed explicitly: vLLM (0.26 on CUDA) hands out a tokenizer wrapper that
    renders with pooled copies, so a template set on the wrapper by :func:`ensure_template` never reaches them.
    Without a template of its own, a tokenizer with BOS and EOS renders with the course's (as ensure_template)."""
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own
    if getattr(tokenizer, "bos_token", None) is not None and getattr(tokenizer, "eos_token", None) is not None:
        return INST_TEMPLATE
    return None


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """Render a conversation as training, vLLM offline and ``vllm serve`` see it."""
    return tokenizer.apply_chat_template(prepare(tokenizer, messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt,
                                         chat_template=template_of(tokenizer))
