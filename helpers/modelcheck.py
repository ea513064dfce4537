"""``python -m helpers model check``: is everything a profile needs on this machine, before any GPU time is spent?

Checks, per profile, in the order a workshop hits them:

1. **present** -- the serving model (``model``) and the training model (``train_model``) resolve offline
   (a local folder or the pre-seeded Hugging Face cache; docs/modelle-offline.md says how to seed it).
2. **chat template** -- the tokenizer ships one, or it is a base model that gets the course's ``[INST]`` template
   (training sets it, ``vllm serve`` receives it via ``--chat-template``); and whether the template accepts a
   ``system`` message (if not, the course folds the system text into the first user turn).
3. **pad token** -- a tokenizer whose pad token is EOS would teach the model never to stop; the course pads with
   ``unk`` instead, or needs a pad token added.
4. **same base** -- the serving weights must be the training base (``base_model`` in the profile, e.g. an AWQ
   export of Mistral-7B-v0.1 for a model trained on Mistral-7B-v0.1) and the two tokenizers must be identical;
   otherwise the adapter is served on weights it never saw.
5. **card** -- where a GPU is visible, the serving weights must fit into ``gpu_memory_utilization`` of it.

Each finding names the setting or command that fixes it. Exit code 1 if any check fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from . import chatformat
from .profiles import Profile


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def _local(profile: Profile, which: str) -> tuple[str | None, Finding]:
    from . import models

    name = getattr(profile, which)
    try:
        path = models.resolve(profile, which)
    except Exception:  # noqa: BLE001 - ModelNotAvailable and Kurs-Mini errors; the fix is named below
        return None, Finding(f"{which} present", False, f"{name}: not in a local folder or the offline HF cache",
                             f"pre-seed `{name}` (docs/modelle-offline.md) or set `{which}:` to a local folder")
    if not Path(path).is_dir():
        return None, Finding(f"{which} present", False, f"{name} is not in a local folder or the offline cache",
                             f"pre-seed `{name}` (docs/modelle-offline.md)")
    return path, Finding(f"{which} present", True, f"{name} → {path}")


def _tokenizer_hash(path: str) -> str:
    h = hashlib.sha256()
    for name in ("tokenizer.model", "tokenizer.json"):
        f = Path(path) / name
        if f.is_file():
            h.update(name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _template_findings(tok, which: str, name: str) -> list[Finding]:
    found = []
    if tok.chat_template:
        found.append(Finding(f"{which} chat template", True, f"{name} ships its own template"))
    else:
        try:
            chatformat.ensure_template(tok, name)
            found.append(Finding(f"{which} chat template", True,
                                 f"{name} has none (a base model): the course's [INST] template is used, "
                                 "also for `vllm serve --chat-template`"))
        except chatformat.ChatFormatError as exc:
            return [Finding(f"{which} chat template", False, str(exc), "add a chat_template to tokenizer_config.json")]
    if chatformat.accepts_system(tok):
        found.append(Finding(f"{which} system role", True, "the template keeps the system message"))
    else:
        found.append(Finding(f"{which} system role", True,
                             "the template rejects or drops `system`: the course folds the system text into the "
                             "first user turn"))
    if tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token is not None and tok.unk_token_id != tok.eos_token_id:
            found.append(Finding(f"{which} pad token", True, "pad = eos in the tokenizer: the course pads with unk "
                                 "so EOS stays in the labels"))
        else:
            found.append(Finding(f"{which} pad token", False, "pad = eos and no unk token to pad with: the model "
                                 "would never learn to stop", "add a pad token and resize the embeddings"))
    return found


def _card_finding(profile: Profile, model_path: str, total_bytes: int | None = None) -> Finding | None:
    """The weights fit into the profile's share of the card (only where the profile runs on a GPU)."""
    if profile.device != "cuda":
        return None
    from . import gpumem

    total = total_bytes if total_bytes is not None else gpumem.gpu_memory_bytes()
    if not total:
        return Finding("card", False, f"profile '{profile.name}' needs an NVIDIA GPU; torch sees none",
                       "check `nvidia-smi`, or use --profile mini")
    try:
        gpumem.check_weights_fit(profile, model_path, total_bytes=total)
    except gpumem.GPUMemoryError as exc:
        lines = str(exc).splitlines()
        return Finding("card", False, lines[0], " ".join(lines[1:])[:300])
    return Finding("card", True, f"weights fit into {total / 2**30:.1f} GiB × "
                   f"{profile.vllm.gpu_memory_utilization or 0.9:.2f}")


def check(profile: Profile, gpu_bytes: int | None = None) -> list[Finding]:
    """All findings for one profile (nothing is loaded onto a GPU)."""
    from transformers import AutoTokenizer

    findings = []
    serve_path, f = _local(profile, "model")
    findings.append(f)
    train_path, f = _local(profile, "train_model")
    findings.append(f)
    toks = {}
    for which, path in (("model", serve_path), ("train_model", train_path)):
        if path is None:
            continue
        try:
            toks[which] = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001
            findings.append(Finding(f"{which} tokenizer", False, f"cannot load the tokenizer of {path}: {exc}"[:300],
                                    "the model folder needs tokenizer files"))
            continue
        ships = bool(toks[which].chat_template)
        findings += _template_findings(toks[which], which, getattr(profile, which))
        if ships == bool(profile.chat_template):
            what = ("ships its own template, but the profile sets `chat_template: course-inst` (serving would "
                    "use another format than training)" if ships else
                    "has no chat template, and the profile does not set `chat_template: course-inst` (vllm serve "
                    "and the manifests would get no template)")
            fix = ("remove `chat_template` from the profile" if ships else
                   "set `chat_template: course-inst` in the profile (helpers/profiles.yaml)")
            findings.append(Finding("template setting", False, f"{getattr(profile, which)} {what}", fix))
    for which in ("generator_model", "judge_model"):
        name = getattr(profile, which)
        if name == profile.model or (which == "judge_model" and name == profile.generator_model):
            continue   # the same model as above: already checked
        path, f = _local(profile, which)
        findings.append(f)
        if path is None:
            continue
        try:
            tok = AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001
            findings.append(Finding(f"{which} tokenizer", False, f"cannot load the tokenizer of {path}: {exc}"[:300],
                                    "the model folder needs tokenizer files"))
            continue
        findings.append(Finding(f"{which} chat template", bool(tok.chat_template),
                                f"{name} ships its own template" if tok.chat_template else
                                f"{name} has no chat template; an instruct role needs the one it was tuned with",
                                "" if tok.chat_template else f"name an instruct model as `{which}:` in the profile"))
    base = profile.base_model or profile.model
    same = base == profile.train_model
    findings.append(Finding("same base", same,
                            f"serving weights derive from {base}, the adapter is trained on {profile.train_model}",
                            "" if same else "serve the base the adapter was trained on (set `model` and `base_model`)"))
    if serve_path and train_path:
        same_tok = _tokenizer_hash(serve_path) == _tokenizer_hash(train_path)
        findings.append(Finding("same tokenizer", same_tok,
                                "serving and training tokenizers are identical" if same_tok else
                                "serving and training tokenizers differ",
                                "" if same_tok else "serve an export of the training base (same tokenizer files)"))
    if serve_path:
        card = _card_finding(profile, serve_path, gpu_bytes)
        if card:
            findings.append(card)
    return findings


def table(findings: list[Finding]) -> str:
    rows = [f"{'ok ' if f.ok else 'ERR'} {f.check:<24} {f.detail}" + (f"\n    → {f.fix}" if f.fix and not f.ok else "")
            for f in findings]
    return "\n".join(rows)
