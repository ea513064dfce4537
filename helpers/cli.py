"""``python -m helpers <step>``: one subcommand per pipeline step, the same functions the notebooks call."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from . import sovereign
from .profiles import ProfileError, profile_names


def _profile_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="mini", help=f"hardware profile ({', '.join(profile_names())})")


def cmd_model(args) -> int:
    from . import kursmini, models

    if args.action == "build":
        path = kursmini.build(out_dir=args.output, corpus=args.corpus,
                              config=kursmini.BuildConfig(steps=args.steps) if args.steps else None)
        info = kursmini.build_info(path)
        print(f"Kurs-Mini built in {path}: {info['parameters']:,} parameters, {info['documents']} documents, "
              f"{info['corpus_tokens']:,} tokens, loss {info['loss_first']:.2f} -> {info['loss_last']:.2f}, "
              f"{info['seconds']:.0f} s")
    elif args.action == "path":
        print(models.resolve(args.profile))
    elif args.action == "info":
        info = kursmini.build_info()
        if info is None:
            print("Kurs-Mini is not built yet: run `python -m helpers model build`.", file=sys.stderr)
            return 1
        info.pop("losses", None)
        import json

        print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0


def cmd_serve(args) -> int:
    from .serve import VLLMServer, parse_adapters

    specs = parse_adapters(args.adapter)
    if specs:  # rank, base model and names checked before the server starts (adapters.lora_server)
        from .adapters import lora_server

        server = lora_server(args.profile, specs, port=args.port, host=args.host, log_path=args.log)
    else:
        server = VLLMServer(args.profile, port=args.port, adapters=specs, host=args.host, log_path=args.log)
    print(f"Starting vLLM server on {server.url} (log: {server.log_path}) ...", flush=True)
    server.start(timeout=args.timeout)
    print(f"Healthy after {server.startup_seconds:.0f} s: {server.base_url} (model '{server.served_model_name}'"
          + (f", adapters {', '.join(server.adapters)}" if server.adapters else "") + "). Ctrl-C stops it.",
          flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while server.running:
            time.sleep(1)
        print(f"Server exited unexpectedly. Last log lines:\n{server.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Stopping server ...")
    finally:
        server.stop()
    return 0


def cmd_course(args) -> int:
    from . import course

    if args.action == "list":
        for book in course.list_notebooks():
            print(f"{course.notebook_id(book):>5}  {book.name}")
        return 0
    if args.action == "report":
        run_dir = args.run_dir or course.latest_run_dir()
        print(course.write_report(run_dir))
        return 0
    run_dir = course.run_course(profile=args.profile, only=args.only, start=args.start, run_dir=args.run_dir,
                                progress=not args.no_progress)
    print(f"Course run complete: {run_dir}\nReport: {run_dir / 'report.md'}")
    return 0


def cmd_data(args) -> int:
    from . import pdfdocs

    for path in pdfdocs.render_all():
        print(path)
    return 0


def cmd_bench(args) -> int:
    from . import bench

    unknown = [n for n in args.names if n not in bench.BENCHMARKS]
    if unknown:
        raise ValueError(f"Unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(bench.BENCHMARKS)}.")
    bench.run(args.names or None)
    return 0


def cmd_bench_gpu(args) -> int:
    from . import bench_gpu

    unknown = [n for n in args.parts if n not in bench_gpu.PARTS]
    if unknown:
        raise ValueError(f"Unknown bench-gpu part(s) {', '.join(unknown)}: choose from {', '.join(bench_gpu.PARTS)}.")
    output = args.output or bench_gpu.RESULTS
    results = bench_gpu.run(args.parts or None, output, n_prompts=args.prompts,
                            merge_into=output if args.merge else None)
    print(bench_gpu.write_markdown(results))
    return 0


def cmd_sovereign(args) -> int:
    sovereign.activate()
    for key, value in sovereign.status().items():
        print(f"{key}={value}")
    return 0


def cmd_train(args) -> int:
    import os
    from pathlib import Path

    from . import tracking, training

    rejects = Path(args.output).parent / f"{Path(args.output).name}.rejects.jsonl"
    train_recs = training.load_records(args.train, rejects)
    eval_recs = training.load_records(args.eval, rejects) if args.eval else None
    tracker = None if args.no_tracking else tracking.Tracker(
        args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), experiment=args.experiment)
    result = training.train(args.profile, train_recs, eval_recs, args.output, pad_as_eos=args.pad_as_eos,
                            collator=args.collator, resume=args.resume, tracker=tracker, rejects_path=rejects,
                            max_steps=args.max_steps)
    info = result.info
    print(f"Adapter saved to {result.adapter_dir}: {info['max_steps']} steps in {info['seconds']:.0f} s, loss "
          f"{info['loss_first']:.3f} -> {info['loss_last']:.3f}, eval loss {info['eval_loss_last']}, peak memory "
          f"{info['peak_memory_mb']:.0f} MB ({info['memory_kind']})")
    return 0


def cmd_diagnose(args) -> int:
    import json

    from . import diagnose, training

    records = training.load_records(args.data)
    report = diagnose.inspect_setup(args.profile, records, pad_as_eos=args.pad_as_eos, collator=args.collator,
                                    max_length=args.max_length)
    print(diagnose.format_report(report))
    if args.probe:
        rates = diagnose.stop_rates(args.profile, records, {args.adapter_name: args.adapter}, n=args.probe)
        summary = rates[args.adapter_name]["summary"]
        report["probe"] = summary
        print(f"stop-rate probe ({args.adapter or 'base model'}): {summary['stop_rate']:.0%} of {summary['prompts']} "
              f"prompts ended with EOS, mean {summary['mean_output_tokens']:.1f} output tokens")
    if args.json:
        print(json.dumps({k: v for k, v in report.items()}, ensure_ascii=False, default=str))
    return 0 if report["ok"] else 1


def cmd_evaluate(args) -> int:
    from . import evaluation
    from .serve import parse_adapters

    result = evaluation.evaluate_to_file(args.profile, parse_adapters(args.adapter), args.output, args.eval,
                                         limit=args.limit, max_tokens=args.max_tokens, n_boot=args.n_boot,
                                         seed=args.seed, progress=not args.no_progress)
    print(evaluation.summary_table(result["summary"]).to_string(index=False))
    for name, comp in result["comparisons"].items():
        print(f"\nbase vs {name} (paired):")
        print(evaluation.comparison_table(comp).to_string(index=False))
    print(f"\n{result['config']['records']} records x {1 + len(result['config']['adapters'])} variants -> {args.output}")
    return 0


def cmd_pii(args) -> int:
    from . import dataset, io, pii

    rejects: list[dict] = []
    docs = dataset.prepare_documents(args.input, rejects, scrub=True, dedup=not args.no_dedup)
    io.write_jsonl(args.output, docs)
    io.write_jsonl(args.rejects, rejects)
    totals = {t: sum(d["pii_counts"][t] for d in docs) for t in pii.PII_TYPES}
    print(f"{len(docs)} documents scrubbed -> {args.output}; replaced: "
          + ", ".join(f"{t} {n}" for t, n in totals.items()) + f"; {len(rejects)} rejects -> {args.rejects}")
    if args.planted:
        report = pii.planted_recall(docs, pii.load_planted(args.planted if args.planted != "default" else None))
        print(pii.recall_table(report).to_string(index=False))
        if args.report:
            io.write_json(args.report, {"totals": totals, **report})
    return 0


def cmd_chunk(args) -> int:
    from . import chunking

    summary = chunking.chunk_corpus(args.input, args.output, args.rejects, args.profile, args.max_tokens,
                                    args.overlap, progress=not args.no_progress)
    if not summary["chunks"]:
        print(f"error: no chunk was written: {summary['documents']} usable documents, {summary['rejects']} "
              f"rejected files (reasons in {args.rejects}). Check the input folder {args.input}.", file=sys.stderr)
        return 1
    print(f"{summary['chunks']} chunks from {summary['documents']} documents -> {args.output} (max "
          f"{summary['max_token_count']} of {summary['max_tokens']} tokens, overlap {summary['overlap']}); "
          f"{summary['rejects']} rejects -> {args.rejects}")
    return 0


def cmd_generate(args) -> int:
    from . import generation

    summary = generation.generate_file(args.chunks, args.output, args.rejects, args.profile, resume=args.resume,
                                       shard=args.shard, limit=args.limit, progress=not args.no_progress,
                                       unit_chunks=args.unit_chunks, max_tokens=args.max_tokens)
    print(f"shard {summary['header']['shard']}: {summary['records']} QA pairs -> {args.output}, "
          f"{summary['rejects']} rejects -> {args.rejects} ({summary['chunks']} chunks, "
          f"{summary['resumed_units']} of {len(summary['units'])} units from an earlier run)")
    return 0


def cmd_merge(args) -> int:
    from . import generation

    summary = generation.merge(args.inputs, args.output, args.rejects)
    print(f"merged {len(summary['header']['merged_from'])} shards: {summary['records']} QA pairs -> "
          f"{args.output}, {summary['rejects']} rejects -> {args.rejects}")
    return 0


def cmd_qc(args) -> int:
    from . import qc

    summary = qc.qc_file(args.input, args.output, args.rejects, args.profile)
    print(f"QC: {summary['accepted']} of {summary['input']} accepted -> {args.output}; rejected by reason: "
          + (", ".join(f"{k} {v}" for k, v in sorted(summary["reasons"].items())) or "none"))
    return 0


def cmd_split(args) -> int:
    from . import split

    summary = split.split_file(args.input, args.output_dir, args.rejects, by=args.by, seed=args.seed,
                               with_gold=not args.no_gold)
    print("split (leak-free, checked): " + ", ".join(f"{k} {v}" for k, v in summary["counts"].items())
          + f" -> {args.output_dir}; {summary['rejects']} rejects -> {args.rejects}")
    return 0


def _bench_names() -> list[str]:
    from .bench import BENCHMARKS

    return list(BENCHMARKS)

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers", description="Souveräne LLMs: course steps")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model", help="build or locate the profile's model (Kurs-Mini on CPU)")
    p.add_argument("action", choices=["build", "path", "info"])
    _profile_arg(p)
    p.add_argument("--corpus", default=None, help="corpus directory (default data/corpus)")
    p.add_argument("--output", default=None, help="model directory (default models/kurs-mini)")
    p.add_argument("--steps", type=int, default=None, help="pretraining steps (default 300)")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("serve", help="start a vLLM OpenAI-compatible server on loopback")
    _profile_arg(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter (repeatable)")
    p.add_argument("--log", default=None, help="server log file")
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for health")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("course", help="run the notebooks with papermill and write the report")
    p.add_argument("action", choices=["run", "list", "report"])
    _profile_arg(p)
    p.add_argument("--only", nargs="+", default=None, help="notebook ids, e.g. 02 05.1")
    p.add_argument("--from", dest="start", default=None, help="resume from this notebook id")
    p.add_argument("--run-dir", default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_course)

    p = sub.add_parser("data", help="render the corpus PDFs from data/corpus_src")
    p.add_argument("action", choices=["pdfs"])
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("bench", help="measure the speed targets in one run and print the ratios")
    # no `choices=` here: argparse (Python 3.11) rejects an empty `nargs="*"` list against choices
    p.add_argument("names", nargs="*", help=f"benchmarks: {' '.join(_bench_names())} (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("bench-gpu", help="7B-scale GPU measurements (random weights) -> docs/benchmarks.md")
    p.add_argument("parts", nargs="*", help="eager graphs lora lora-tuned generation qlora (default: all)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--output", default=None, help="results JSON (default docs/benchmarks-gpu.json, rendered to docs/benchmarks.md)")
    p.add_argument("--merge", action="store_true",
                   help="keep the other parts of the results JSON and update only the parts run now")
    p.set_defaults(func=cmd_bench_gpu)

    p = sub.add_parser("sovereign", help="show the offline/telemetry settings the course uses")
    p.set_defaults(func=cmd_sovereign)

    p = sub.add_parser("train", help="QLoRA-train a LoRA adapter (NF4 base, completion-only labels with EOS)")
    _profile_arg(p)
    p.add_argument("--train", required=True, help="training QA JSONL (question, answer, context)")
    p.add_argument("--eval", default=None, help="evaluation QA JSONL (eval loss during training)")
    p.add_argument("--output", required=True, help="adapter directory (checkpoints go beside it)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--pad-as-eos", action="store_true", help="set pad_token = eos_token (the bug, on purpose)")
    p.add_argument("--collator", choices=["completion", "lm"], default="completion",
                   help="completion: labels only the answer + EOS; lm: DataCollatorForLanguageModeling")
    p.add_argument("--max-steps", type=int, default=None, help="override the profile's train.max_steps")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the local sqlite store)")
    p.add_argument("--experiment", default="qlora", help="MLflow experiment name")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("diagnose", help="check that EOS reaches the labels (exit 1 if not); optional stop-rate probe")
    _profile_arg(p)
    p.add_argument("--data", required=True, help="QA JSONL to encode and collate as training would")
    p.add_argument("--pad-as-eos", action="store_true", help="set pad_token = eos_token")
    p.add_argument("--collator", choices=["completion", "lm"], default="completion")
    p.add_argument("--max-length", type=int, default=None, help="override the profile's train.max_length")
    p.add_argument("--probe", type=int, default=0, metavar="N", help="measure the stop rate on N prompts with vLLM")
    p.add_argument("--adapter", default=None, help="adapter directory for the probe (default: base model)")
    p.add_argument("--adapter-name", default="probe", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="also print the report as JSON")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("evaluate", help="base model vs LoRA adapters on the eval split: metrics, bootstrap CIs, "
                                        "paired tests (one mixed vLLM batch)")
    _profile_arg(p)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR", help="LoRA adapter to compare (repeatable)")
    p.add_argument("--eval", default=None, metavar="F",
                   help="evaluation JSONL (id, question, context, answer, type); default: the gold held-out split")
    p.add_argument("--output", required=True, help="metrics JSON (summary, comparisons, per-item results)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded sample of N records")
    p.add_argument("--max-tokens", type=int, default=None, help="override the profile's generation.max_tokens")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pii", help="load documents, scrub PII (typed placeholders), drop duplicates")
    p.add_argument("--input", default="data/corpus", help="corpus folder (or documents JSONL)")
    p.add_argument("--output", required=True, help="scrubbed documents JSONL (with pii_counts)")
    p.add_argument("--rejects", required=True, help="rejects JSONL (unreadable files, duplicates)")
    p.add_argument("--planted", nargs="?", const="default", default=None,
                   help="report recall against a planted-PII TSV (default data/pii/planted_pii.tsv)")
    p.add_argument("--report", default=None, help="write counts and recall as JSON")
    p.add_argument("--no-dedup", action="store_true", help="keep duplicate documents")
    p.set_defaults(func=cmd_pii)

    p = sub.add_parser("chunk", help="load, PII-scrub, dedup and chunk documents (token-aware, with overlap)")
    p.add_argument("--input", required=True, help="corpus folder (or a documents JSONL from `pii`)")
    p.add_argument("--output", required=True, help="chunks JSONL (id, doc_id, text, token_count, headings, ...)")
    p.add_argument("--rejects", required=True, help="rejects JSONL: every file that yields no chunk, with reason")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per chunk (default: profile, 256)")
    p.add_argument("--overlap", type=int, default=None, help="overlap tokens (default: profile, 32)")
    _profile_arg(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_chunk)

    p = sub.add_parser("generate", help="generate QA pairs with vLLM offline batch inference (JSON schema)")
    p.add_argument("--chunks", required=True, help="chunks JSONL from `chunk`")
    p.add_argument("--output", required=True, help="generated QA JSONL")
    p.add_argument("--rejects", required=True, help="rejects JSONL (invalid or truncated outputs with raw text)")
    _profile_arg(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its progress file")
    p.add_argument("--shard", default=None, metavar="i/N", help="process only shard i of N (stable hash)")
    p.add_argument("--limit", type=int, default=None, help="a stable sample of N chunks (same for all shards)")
    p.add_argument("--unit-chunks", type=int, default=None, help="chunks per work unit (default: profile)")
    p.add_argument("--max-tokens", type=int, default=None, help="output tokens per QA pair (default: profile)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("merge", help="combine the outputs of `generate --shard i/N` (all N shards)")
    p.add_argument("--inputs", nargs="+", required=True, help="shard output JSONL files")
    p.add_argument("--output", required=True)
    p.add_argument("--rejects", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("qc", help="filter QA pairs: grounding, length, language, duplicates, refusal form")
    p.add_argument("--input", required=True, help="QA JSONL (e.g. from `generate` or `merge`)")
    p.add_argument("--output", required=True, help="accepted QA JSONL")
    p.add_argument("--rejects", required=True, help="rejected pairs with reason(s)")
    _profile_arg(p)
    p.set_defaults(func=cmd_qc)

    p = sub.add_parser("split", help="leak-free train/val/eval split by document (stratified by type, seeded)")
    p.add_argument("--input", required=True, help="accepted QA JSONL")
    p.add_argument("--output-dir", required=True, help="folder for train.jsonl, val.jsonl, eval.jsonl")
    p.add_argument("--rejects", required=True, help="pairs kept out (e.g. generated pairs of eval documents)")
    p.add_argument("--by", default="doc_id", help="group key with --no-gold (doc_id or chunk_id)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-gold", action="store_true", help="split only the input (default: add the gold pairs)")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: list[str] | None = None) -> int:
    sovereign.activate()
    args = build_parser().parse_args(argv)
    from .course import CourseError
    from .gpumem import GPUMemoryError
    from .models import ModelNotAvailable
    from .serve import ServerError

    try:
        return args.func(args)
    except (ProfileError, CourseError, ServerError, ModelNotAvailable, GPUMemoryError, FileNotFoundError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
