"""Sovereignty by default: offline model hubs, no telemetry, MLflow in a local store."""

from __future__ import annotations

import os
import warnings

from . import paths

OFFLINE_VARS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
}
TELEMETRY_VARS = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    # vLLM would otherwise probe an outside address to find "its" IP; the course stays on loopback.
    "VLLM_HOST_IP": "127.0.0.1",
    # vLLM in a notebook or a script without a __main__ guard must not fork a second engine process (CPU);
    # on a GPU, inference.make_llm turns it on again: only an engine process's exit frees the card.
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
}


def local_mlflow_uri() -> str:
    """The default MLflow store: a sqlite file under the runs folder."""
    db = paths.runs_dir() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def activate(allow_downloads: bool = False, quiet: bool = True) -> dict[str, str]:
    """Switch this process (and every child it starts) to sovereign mode; returns the variables set.

    ``allow_downloads=True`` lifts only the hub offline switches, e.g. for a first model download on a
    workshop machine; it warns visibly, and telemetry stays off.
    """
    settings = dict(TELEMETRY_VARS)
    if allow_downloads:
        warnings.warn(
            "Offline mode lifted: models may be downloaded from the Hugging Face Hub. "
            "Telemetry stays off. Switch back once the models are cached.",
            stacklevel=2,
        )
        for key in OFFLINE_VARS:
            os.environ.pop(key, None)
    else:
        settings.update(OFFLINE_VARS)
    os.environ.update(settings)
    if "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = local_mlflow_uri()
    settings["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    if not quiet:
        for key, value in sorted(settings.items()):
            print(f"{key}={value}")
    return settings


def status() -> dict[str, str | None]:
    """The current values of all sovereignty variables (for display in a notebook)."""
    keys = list(OFFLINE_VARS) + list(TELEMETRY_VARS) + ["MLFLOW_TRACKING_URI"]
    return {key: os.environ.get(key) for key in keys}


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile) -> None:
    p = sub.add_parser("sovereign", help="show the offline/telemetry settings the course uses")
    p.set_defaults(func=cmd_sovereign)


def cmd_sovereign(args) -> int:
    activate()
    for key, value in status().items():
        print(f"{key}={value}")
    return 0
