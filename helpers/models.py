"""Locate the profile's model: Kurs-Mini (built on demand), a local directory, or a cached HF model."""

from __future__ import annotations

import os
from pathlib import Path

from .profiles import Profile, load_profile


class ModelNotAvailable(FileNotFoundError):
    pass


def resolve(profile: Profile | str | None = None, which: str = "model") -> str:
    """Return a local path (or a cached HF id) for the profile's serving or training model."""
    profile = profile if isinstance(profile, Profile) else load_profile(profile)
    name = getattr(profile, which)
    if name == "kurs-mini":
        from . import kursmini

        return str(kursmini.ensure())
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
