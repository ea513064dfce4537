"""Hardware profiles: one YAML file, loaded by one function."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
DEFAULT_PROFILE = "mini"
REQUIRED_KEYS = ("description", "device", "model", "train_model", "dtype", "vllm", "generation", "lora",
                 "train", "samples", "server")


class ProfileError(ValueError):
    """A profile is unknown, malformed, or cannot run on this machine."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str
    model: str
    train_model: str
    dtype: str
    train_dtype: str
    vllm: dict[str, Any]
    generation: dict[str, Any]
    lora: dict[str, Any]
    train: dict[str, Any]
    samples: dict[str, Any]
    server: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uses_kurs_mini(self) -> bool:
        return self.model == "kurs-mini"

    def resolved_dtype(self, which: str = "dtype") -> str:
        """The dtype to use; ``auto`` picks bfloat16 where the GPU supports it, else float16."""
        value = getattr(self, which)
        if value != "auto":
            return value
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bfloat16"
        return "float16"

    def require_device(self) -> None:
        """Fail with a clear message when a GPU profile runs on a machine without a visible GPU."""
        if self.device != "cuda":
            return
        import torch

        if not torch.cuda.is_available():
            raise ProfileError(
                f"Profile '{self.name}' needs an NVIDIA GPU, but torch sees none "
                f"(torch {torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
                "Run with --profile mini on a CPU machine, or check the driver with `nvidia-smi`."
            )


@lru_cache(maxsize=1)
def _raw_profiles() -> dict[str, dict]:
    with open(PROFILES_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def profile_names() -> list[str]:
    return list(_raw_profiles())


def load_profile(name: str | None = None) -> Profile:
    """Load a profile by name (default: ``COURSE_PROFILE`` or ``mini``)."""
    name = name or os.environ.get("COURSE_PROFILE") or DEFAULT_PROFILE
    raw = _raw_profiles()
    if name not in raw:
        raise ProfileError(f"Unknown profile '{name}'. Choose one of: {', '.join(raw)} "
                           f"(defined in {PROFILES_FILE}).")
    data = dict(raw[name])
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ProfileError(f"Profile '{name}' in {PROFILES_FILE} lacks the keys: {', '.join(missing)}")
    data.setdefault("train_dtype", data["dtype"])
    known = {f for f in Profile.__dataclass_fields__} - {"name", "extra"}
    extra = {k: v for k, v in data.items() if k not in known}
    return Profile(name=name, extra=extra, **{k: v for k, v in data.items() if k in known})
