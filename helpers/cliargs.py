"""Flags several steps share, so each step module can register its subcommand (``add_cli``) in a few lines."""

from __future__ import annotations

import argparse

from .profiles import Profile, profile_names


def profile_arg(parser: argparse.ArgumentParser, profile: Profile) -> None:
    """``--profile``; the defaults the other flags show come from ``profile`` (resolved before parsing)."""
    parser.add_argument("--profile", choices=profile_names(), default=profile.name,
                        help="hardware profile (default: COURSE_PROFILE, else mini; now %(default)s)")


def rejects_arg(parser: argparse.ArgumentParser, stage: str, what: str = "") -> None:
    parser.add_argument("--rejects", default=None,
                        help=f"rejects JSONL{what} (default: rejects/{stage}.jsonl beside --output)")


def progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
