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

    server = VLLMServer(args.profile, port=args.port, adapters=parse_adapters(args.adapter), host=args.host,
                        log_path=args.log)
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

    bench.run(args.names or None)
    return 0


def cmd_sovereign(args) -> int:
    sovereign.activate()
    for key, value in sovereign.status().items():
        print(f"{key}={value}")
    return 0


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
    p.add_argument("names", nargs="*", choices=["notebooks", "model"], help="benchmarks (default: all)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("sovereign", help="show the offline/telemetry settings the course uses")
    p.set_defaults(func=cmd_sovereign)
    return parser


def main(argv: list[str] | None = None) -> int:
    sovereign.activate()
    args = build_parser().parse_args(argv)
    from .course import CourseError
    from .models import ModelNotAvailable
    from .serve import ServerError

    try:
        return args.func(args)
    except (ProfileError, CourseError, ServerError, ModelNotAvailable, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
