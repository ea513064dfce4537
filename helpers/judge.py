"""`judge`: a rubric judge (A/B/C, hallucination flag, short German rationale first) served by vLLM.

* The prompt, schema and parser are ``helpers.judgeprompt`` (the judge adapter was trained on exactly that text).
  Decoding is constrained by the JSON schema (xgrammar, no free whitespace, rationale bounded by ``maxLength``,
  ``urteil`` an enum, ``halluzination`` a boolean) and every output is still parsed: an output cut by
  ``max_tokens`` or failing validation becomes ``status: "unparsed"`` with its raw text, never a grade.
* Judgments are keyed by item id (and the judge variant), never by list position. The judge reads only
  ``id, context, question, answer`` (pairwise: ``answer_a, answer_b``); gold fields in the input are ignored.
* Bad input goes to the rejects file with a reason and the run goes on: no id, duplicate id, empty question or
  answer, a prompt that does not fit ``max_model_len`` with the output budget, and a judge adapter that does not
  fit the judge model (another base).
* Variants: the bare judge model (``base``) and any LoRA adapters, all on one engine. On CPU, base requests go
  through an identity adapter (``adapters.base_requests_leak``), so a bare grade is never touched by an adapter.
* Pairwise mode asks which of two answers is better and runs both orders; a pair whose verdict flips with the
  order is ``inconsistent``.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from . import io, judgeprompt
from .adapters import BASE, AdapterError
from .errors import HelpersError
from .profiles import Profile

STAGE = "judge"
FIELDS = ("id", "context", "question", "answer")
PAIR_FIELDS = ("id", "context", "question", "answer_a", "answer_b")


class JudgeError(HelpersError, ValueError):
    """The judge cannot run as asked (no usable input or variant); the message says what to do."""


# --------------------------------------------------------------------------- model and adapters
def judge_profile(profile: Profile) -> Profile:
    """The profile with the judge model as the served model (its own chat template, no base-model mapping)."""
    return dataclasses.replace(profile, model=profile.judge_model, base_model=None, chat_template=None)


def default_adapters(profile: Profile) -> dict[str, str]:
    """The LoRA the profile puts on its judge model (``judge_adapter``, read by ``roles.adapter_for``) as
    ``{name: folder}``; ``{}`` where the profile names none (the bare model judges; the caller prints that).
    Missing or corrupt, or trained for another judge model: ``roles.RoleError``."""
    from . import roles

    found = roles.adapter_for(profile, "judge")
    return {found[0]: str(found[1])} if found else {}


def check_judge_adapter(name: str, adapter_dir: str | Path, jprofile: Profile, model_dir: str) -> dict:
    """``adapters.check_adapter`` against the judge model. A course adapter records the training base as a path
    (``training_info.json``); the same model built in another checkout counts as the same base."""
    from . import adapters

    trained = adapters.trained_on(Path(adapter_dir))
    same = trained and Path(trained).name in (Path(model_dir).name, Path(jprofile.model).name)
    return adapters.check_adapter(name, adapter_dir, dataclasses.replace(jprofile, base_model=trained) if same
                                  else jprofile, model_dir)


@dataclasses.dataclass
class JudgeEngine:
    """One engine for every judge variant: ``base`` and the adapters that passed their checks."""
    llm: Any
    profile: Profile                 # the judge profile (served model = judge model)
    model_dir: str
    adapter_set: Any = None          # adapters.AdapterSet, None without adapters
    adapter_rejects: list = dataclasses.field(default_factory=list)
    name: str = BASE                 # the variant a plain engine serves (an adapter merged into the weights)

    @property
    def variants(self) -> list[str]:
        return [BASE] + self.adapter_set.names if self.adapter_set else [self.name]

    def request(self, variant: str):
        if self.adapter_set is None:
            if variant != self.name:
                raise JudgeError(f"Judge variant '{variant}' is not loaded; loaded: {', '.join(self.variants)}.")
            return None
        return self.adapter_set.request(variant)


def engine_overrides() -> dict[str, Any]:
    """Structured outputs as in `generate`: xgrammar without free whitespace (no whitespace loops). Prefix caching
    on: every judgment starts with the same rubric (system prompt), so its KV blocks are computed once (notebook
    08's 183 judgments on 2 CPU cores: 90.7 s without, 71.1 s with it, the same grades item for item)."""
    return {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
            "enable_prefix_caching": True}


def merged_model(adapter_dir: str | Path, model_dir: str | Path) -> Path:
    """The judge model with a LoRA adapter merged into its weights (peft ``merge_and_unload``), built once and kept
    beside the course's models, keyed by the adapter's checksum. vLLM's LoRA path on the CPU is the slow one (see
    ``make bench``); the merged model runs as a plain engine and computes the same function."""
    import hashlib
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import paths

    digest = hashlib.sha256((Path(adapter_dir) / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    out = paths.models_dir() / "merged" / f"{Path(model_dir).name}+{Path(adapter_dir).name}-{digest}"
    if (out / "config.json").exists():
        return out
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().to(torch.bfloat16)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(tmp)
    tmp.rename(out)
    return out


def make_judge(profile: Profile, adapters: dict[str, str] | None = None, merge: bool = False,
               **overrides: Any) -> JudgeEngine:
    """Start the judge engine. Adapters that do not fit the judge model are left out and returned as rejects.

    ``merge=True`` with one adapter: a plain engine on the merged weights (``merged_model``) serving only that
    variant; otherwise one LoRA engine serves ``base`` and every adapter."""
    from . import inference, models
    from . import adapters as adapters_mod

    jprof = judge_profile(profile)
    model_dir = models.resolve(jprof)
    good, rejected = {}, []
    for name, path in (adapters or {}).items():
        try:
            check_judge_adapter(name, path, jprof, model_dir)
            good[name] = str(path)
        except AdapterError as exc:
            rejected.append({"id": f"adapter:{name}", "stage": STAGE, "reason": "adapter_mismatch",
                             "detail": str(exc), "adapter": name, "path": str(path)})
    kw = {**engine_overrides(), "model": model_dir, **overrides}
    if good and merge:
        if len(good) != 1:
            raise JudgeError(f"merge=True serves one adapter per engine, got {len(good)}: {', '.join(good)}.")
        name, path = next(iter(good.items()))
        kw["model"] = str(merged_model(path, model_dir))
        return JudgeEngine(inference.make_llm(jprof, **kw), jprof, model_dir, None, rejected, name=name)
    if good:
        # checks already ran above (check_all would refuse a course adapter whose recorded base is a path)
        leaks = adapters_mod.needs_base_adapter(jprof)
        base_path = adapters_mod.base_adapter(model_dir) if leaks else None
        llm = inference.make_llm(jprof, enable_lora=True, **kw)
        aset = adapters_mod.AdapterSet(good, base_path, base_leaks=leaks)
        return JudgeEngine(llm, jprof, model_dir, aset, rejected)
    return JudgeEngine(inference.make_llm(jprof, **kw), jprof, model_dir, None, rejected)


# --------------------------------------------------------------------------- input checks
CHARS_PER_TOKEN = 2   # the budget assumes at least this many rationale characters per token


def token_budget(tokenizer) -> int:
    """Output tokens per judgment: the JSON around the rationale, the rationale at its ``maxLength`` at
    ``CHARS_PER_TOKEN`` characters per token, and EOS (100 tokens with SmolLM2's tokenizer). The human rationales in
    data/gold/judge_labels.jsonl need at most 61 tokens there, at 1.98 or more characters per token. An output that
    needs more (a degenerate ``A|B|C|...`` loop) is cut and counted as unparsed, instead of every batch waiting for
    the worst case of one character per token."""
    skeleton = judgeprompt.completion("", "A", False)
    rationale = -(-judgeprompt.RATIONALE_MAX_CHARS // CHARS_PER_TOKEN)
    return len(tokenizer(skeleton, add_special_tokens=False)["input_ids"]) + rationale + 1


def check_records(records: Sequence[dict], prompt_tokens=None, max_prompt_tokens: int | None = None,
                  pairwise: bool = False) -> tuple[list[dict], list[dict]]:
    """Records fit to judge, and rejects with reasons. Only the judged fields are copied (no gold labels).

    ``prompt_tokens(record) -> int`` and ``max_prompt_tokens`` (``max_model_len`` minus the output budget)
    reject a prompt that would not fit the engine.
    """
    fields = PAIR_FIELDS if pairwise else FIELDS
    answers = fields[3:]
    ids = Counter(str(r.get("id")).strip() for r in records if str(r.get("id") or "").strip())
    ok, rejects = [], []
    for i, rec in enumerate(records):
        rid = str(rec.get("id") or "").strip()
        base = {"id": rid or f"#line{i + 1}", "stage": STAGE}
        if not rid:
            rejects.append({**base, "reason": "missing_id", "detail": f"record {i + 1} has no id"})
            continue
        if ids[rid] > 1:
            rejects.append({**base, "reason": "duplicate_id", "detail": f"id occurs {ids[rid]} times; judgments "
                            "are keyed by id, so none of these records is judged"})
            continue
        item = {k: rec.get(k) for k in fields}
        item["id"] = rid
        empty = [k for k in ("question",) + answers if not isinstance(item[k], str) or not item[k].strip()]
        if empty:
            rejects.append({**base, "reason": f"empty_{empty[0]}", "detail": f"{', '.join(empty)} empty or missing"})
            continue
        if not isinstance(item["context"], str):
            rejects.append({**base, "reason": "missing_context", "detail": "context must be a string"})
            continue
        if prompt_tokens is not None and max_prompt_tokens is not None:
            n = prompt_tokens(item)
            if n > max_prompt_tokens:
                rejects.append({**base, "reason": "too_long", "detail": f"prompt has {n} tokens; with the output "
                                f"budget only {max_prompt_tokens} fit max_model_len"})
                continue
        ok.append(item)
    return ok, rejects


# --------------------------------------------------------------------------- judging
def _params(json_schema: dict, max_tokens: int):
    from .generation import json_params

    return json_params(json_schema, seed=0, max_tokens=max_tokens, temperature=0.0)


def _prompts(engine: JudgeEngine, conversations: list[list[dict]]) -> list[str]:
    from . import inference

    return inference.chat_prompts(engine.llm, conversations)


def _generate(engine: JudgeEngine, prompts: list[str], variants: list[str], params) -> list:
    requests = [engine.request(v) for v in variants]
    if engine.adapter_set is None:
        requests = None
    return engine.llm.generate(prompts, params, lora_request=requests, use_tqdm=False)


def prepare(engine: JudgeEngine, records: Sequence[dict], pairwise: bool = False,
            max_tokens: int | None = None) -> tuple[list[dict], list[dict], int]:
    """Checked records, rejects and the output budget for this engine."""
    tok = engine.llm.get_tokenizer()
    budget = max_tokens or token_budget(tok)
    room = engine.profile.vllm.max_model_len - token_budget(tok)

    def n_tokens(item: dict) -> int:
        msgs = (judgeprompt.pair_messages(item["context"], item["question"], item["answer_a"], item["answer_b"])
                if pairwise else judgeprompt.messages(item["context"], item["question"], item["answer"]))
        return len(tok(_prompts(engine, [msgs])[0], add_special_tokens=False)["input_ids"])

    ok, rejects = check_records(records, n_tokens, room, pairwise)
    return ok, rejects, budget


def _judgment(item_id: str, variant: str, model: str, comp, parsed: dict | None, reason: str) -> dict:
    out = {"id": item_id, "judge": variant, "judge_model": model, "finish_reason": comp.finish_reason,
           "output_tokens": len(comp.token_ids)}
    if parsed is None:
        return {**out, "status": "unparsed", "reason": reason, "raw": comp.text}
    return {**out, "status": "ok", **parsed}


def grade(engine: JudgeEngine, records: Sequence[dict], variants: Sequence[str] = (BASE,),
          max_tokens: int | None = None) -> tuple[list[dict], list[dict]]:
    """Absolute grades for every checked record and variant (one batch); returns (judgments, rejects)."""
    ok, rejects, budget = prepare(engine, records, max_tokens=max_tokens)
    jobs = [(item, v) for v in variants for item in ok]
    prompts = _prompts(engine, [judgeprompt.messages(i["context"], i["question"], i["answer"]) for i, _ in jobs])
    outputs = _generate(engine, prompts, [v for _, v in jobs], _params(judgeprompt.schema(), budget)) if jobs else []
    judgments = []
    for (item, variant), out in zip(jobs, outputs):
        comp = out.outputs[0]
        parsed, reason = judgeprompt.parse(comp.text, comp.finish_reason or "")
        judgments.append(_judgment(item["id"], variant, engine.profile.judge_model, comp, parsed, reason))
    judgments.sort(key=lambda j: (list(variants).index(j["judge"]), j["id"]))
    return judgments, rejects


def pairwise(engine: JudgeEngine, records: Sequence[dict], variants: Sequence[str] = (BASE,),
             max_tokens: int | None = None) -> tuple[list[dict], list[dict]]:
    """Which answer is better, asked in both orders (a first, then b first); returns (pair judgments, rejects).

    Per pair: ``winner_ab`` / ``winner_ba`` ("a", "b" or None when that order is unparsed), ``first_slot``
    (how many of the two parsed orders picked the answer shown first) and ``winner``: "a", "b", "inconsistent"
    (the verdict follows the position) or None (an order unparsed).
    """
    ok, rejects, budget = prepare(engine, records, pairwise=True, max_tokens=max_tokens)
    jobs = [(item, v, order) for v in variants for item in ok for order in ("ab", "ba")]
    convs = [judgeprompt.pair_messages(i["context"], i["question"], *((i["answer_a"], i["answer_b"]) if o == "ab"
                                                                     else (i["answer_b"], i["answer_a"])))
             for i, _, o in jobs]
    prompts = _prompts(engine, convs)
    outputs = _generate(engine, prompts, [v for _, v, _ in jobs], _params(judgeprompt.pair_schema(), budget)) \
        if jobs else []
    by_key: dict[tuple[str, str], dict] = {}
    for (item, variant, order), out in zip(jobs, outputs):
        comp = out.outputs[0]
        parsed, reason = judgeprompt.parse_pair(comp.text, comp.finish_reason or "")
        rec = by_key.setdefault((variant, item["id"]), {"id": item["id"], "judge": variant,
                                                        "judge_model": engine.profile.judge_model})
        if parsed is None:
            rec[f"winner_{order}"] = None
            rec.setdefault("unparsed", []).append({"order": order, "reason": reason, "raw": comp.text})
        else:
            rec[f"winner_{order}"] = order[0] if parsed["better"] == "1" else order[1]
            rec[f"rationale_{order}"] = parsed["rationale"]
    judgments = []
    for rec in by_key.values():
        ab, ba = rec.get("winner_ab"), rec.get("winner_ba")
        rec["first_slot"] = (ab == "a") + (ba == "b")
        rec["winner"] = None if ab is None or ba is None else ab if ab == ba else "inconsistent"
        rec["status"] = "ok" if rec["winner"] is not None else "unparsed"
        judgments.append(rec)
    judgments.sort(key=lambda j: (list(variants).index(j["judge"]), j["id"]))
    return judgments, rejects


def summarize(judgments: Sequence[dict], rejects: Sequence[dict] = ()) -> dict:
    """Per variant: judged, unparsed (count and rate), grade counts; plus the rejects by reason."""
    out: dict[str, Any] = {"rejects": dict(Counter(r["reason"] for r in rejects))}
    for variant in dict.fromkeys(j["judge"] for j in judgments):
        js = [j for j in judgments if j["judge"] == variant]
        unparsed = sum(j["status"] == "unparsed" for j in js)
        out[variant] = {"judged": len(js), "unparsed": unparsed, "unparsed_rate": unparsed / len(js) if js else 0.0,
                        "grades": dict(sorted(Counter(j.get("grade") or j.get("winner") for j in js
                                                      if j["status"] == "ok").items()))}
    return out


def judge_file(input_path: str | Path, output: str | Path, rejects_path: str | Path, profile: Profile,
               adapters: dict[str, str] | None = None, include_base: bool = True, pair_mode: bool = False,
               max_tokens: int | None = None, engine: JudgeEngine | None = None, merge: bool = False) -> dict:
    """The ``judge`` step: input JSONL -> judgments JSONL (keyed by id and variant) + rejects JSONL.

    ``merge=True``: the one adapter merged into the weights, judged alone on a plain engine (fast on CPU)."""
    input_path = Path(input_path)
    if not input_path.exists():
        raise JudgeError(f"Input {input_path} not found: give a JSONL file with {', '.join(FIELDS)} per line.")
    records = io.read_jsonl(input_path)
    t0 = time.time()
    own = engine is None
    engine = engine or make_judge(profile, adapters, merge=merge and bool(adapters))
    try:
        if engine.adapter_set is None and engine.name != BASE:
            variants = [engine.name]
        else:
            variants = ([BASE] if include_base else []) + (engine.adapter_set.names if engine.adapter_set else [])
        if not variants:
            raise JudgeError("No judge variant left to run: every adapter was rejected (see the rejects file) and "
                             "the bare model was excluded. Fix the adapter or drop --adapter.")
        run = pairwise if pair_mode else grade
        judgments, rejects = run(engine, records, variants, max_tokens)
    finally:
        if own:
            from . import inference

            inference.shutdown(engine.llm)
    rejects = engine.adapter_rejects + rejects
    io.write_jsonl(output, judgments)
    io.write_jsonl(rejects_path, rejects)
    summary = {"input": str(input_path), "records": len(records), "variants": variants,
               "judge_model": profile.judge_model, "mode": "pairwise" if pair_mode else "rubric",
               "seconds": round(time.time() - t0, 1), **summarize(judgments, rejects)}
    io.write_json(Path(output).with_suffix(".summary.json"), summary)
    return summary


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, rejects_arg

    p = sub.add_parser("judge", help="grade (context, question, answer) records with the rubric judge (vLLM, JSON schema)")
    p.add_argument("--input", required=True, help="JSONL with id, context, question, answer (pairwise: answer_a, "
                                                  "answer_b)")
    p.add_argument("--output", required=True, help="judgments JSONL, keyed by id and judge variant")
    rejects_arg(p, STAGE, " (bad records and rejected adapters, with reasons)")
    profile_arg(p, profile)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="judge with this LoRA adapter of the judge model (repeatable; default: the committed "
                        "judge adapter assets/roles/judge where it exists). `--adapter none`: the bare model only")
    p.add_argument("--no-base", action="store_true", help="with adapters: do not also judge with the bare model")
    p.add_argument("--merge", action="store_true", help="one adapter, merged into the judge model's weights and "
                   "judged alone on a plain engine (much faster on CPU than vLLM's LoRA path; the default on a CPU "
                   "profile with one adapter and --no-base)")
    p.add_argument("--pairwise", action="store_true", help="which of answer_a/answer_b is better, both orders")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="output tokens per judgment (default: judge.token_budget, the rationale at 2 characters "
                        "per token)")
    p.set_defaults(func=cmd_judge)


def _adapter_specs(specs: list[str] | None, profile: Profile) -> dict[str, str]:
    if specs == ["none"]:
        return {}
    if specs:
        out = {}
        for spec in specs:
            if "=" not in spec:
                raise AdapterError(f"Adapter '{spec}' must be given as NAME=DIR (or `none` for the bare model).")
            name, directory = spec.split("=", 1)
            out[name] = directory
        return out
    found = default_adapters(profile)
    if not found:
        print("judge: no committed judge adapter for this judge model (assets/roles/judge); the bare model judges.",
              file=sys.stderr)
    return found


def cmd_judge(args) -> int:
    from . import dataset

    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    adapters = _adapter_specs(args.adapter, args.profile)
    # on a CPU one adapter alone is judged on merged weights: vLLM's LoRA path there is many times slower
    merge = args.merge or (args.profile.device == "cpu" and len(adapters) == 1 and args.no_base)
    summary = judge_file(args.input, args.output, rejects, args.profile, adapters, include_base=not args.no_base
                         or not adapters, pair_mode=args.pairwise, max_tokens=args.max_tokens, merge=merge)
    for variant in summary["variants"]:
        s = summary.get(variant, {"judged": 0, "unparsed": 0, "grades": {}})
        print(f"{variant}: {s['judged']} judged, {s['unparsed']} unparsed, {s['grades']}")
    print(f"{sum(summary['rejects'].values())} rejects {summary['rejects']} -> {rejects}; judgments -> {args.output} "
          f"({summary['seconds']} s)")
    return 0
