"""``python -m helpers <step>``: one subcommand per pipeline step, the same functions the notebooks call.

Each step module registers its own subcommand beside the function it runs (``add_cli(sub, profile)`` and a
``cmd_<step>(args)`` handler); this file only collects them. The profile is resolved first (``--profile``,
else ``COURSE_PROFILE``, else ``mini``), so every ``--help`` shows the defaults that profile gives, and the
handlers receive ``args.profile`` as the loaded ``Profile``.
"""

from __future__ import annotations

import argparse
import errno
import sys

from . import (bench, bench_gpu, chunking, course, dataset, diagnose, evaluation, gate, generation, judge, models,
               modelcompare, pdfdocs, pipeline, qc, rehearsal, release, roles, router, serve, sovereign, split, training)
from .errors import HelpersError
from .profiles import Profile, default_name, load_profile

# in pipeline order: the order of `python -m helpers --help`
STEP_MODULES = (models, roles, serve, dataset, chunking, generation, qc, split, training, diagnose, evaluation, judge,
                modelcompare,
                gate, release, router, pipeline, course, rehearsal, pdfdocs, bench, bench_gpu, sovereign)


class _OneLinePerStep(argparse.HelpFormatter):
    """Align the step list on the longest step name, so each step takes one line of ``--help``."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30, width=160)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        for choice in getattr(action, "_choices_actions", []):
            self._action_max_length = max(self._action_max_length, len(choice.metavar) + self._current_indent + 4)


def build_parser(profile: Profile | None = None) -> argparse.ArgumentParser:
    profile = profile or load_profile()
    parser = argparse.ArgumentParser(prog="python -m helpers", description="Souveräne LLMs: course steps",
                                     formatter_class=_OneLinePerStep)
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    for module in STEP_MODULES:
        module.add_cli(sub, profile)
    return parser


def _profile_name(argv: list[str]) -> str:
    """The ``--profile`` given anywhere on the command line, else the default (first of two parses)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile", default=default_name())  # an unknown name fails in load_profile, with a hint
    known, _ = pre.parse_known_args(argv)
    return known.profile


def main(argv: list[str] | None = None) -> int:
    sovereign.activate()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        profile = load_profile(_profile_name(argv))
        args = build_parser(profile).parse_args(argv)
        if hasattr(args, "profile"):
            args.profile = profile
        return args.func(args)
    except (HelpersError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        where = f" while writing {exc.filename}" if exc.filename else ""
        print(f"error: no space left on this disk{where}. Files already written are unchanged (the course writes "
              "atomically); free some space and rerun the same command (with --resume where the step has it: "
              "finished work units are kept).", file=sys.stderr)
        return 3
