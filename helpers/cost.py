"""Business case for self-hosting: API price per million tokens vs GPU-hour cost and throughput.

All prices are inputs (the notebook's sliders); the throughput default is the course's own measurement
(:func:`measured_throughput` reads it from docs/benchmarks-gpu.json), never a vendor claim.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Sequence

from . import paths

HOURS_PER_MONTH = 730.0


@dataclass(frozen=True)
class CostInputs:
    api_eur_per_m_input: float = 0.15     # price of a hosted API per 1M input tokens
    api_eur_per_m_output: float = 0.60    # ... and per 1M output tokens
    gpu_eur_per_hour: float = 2.50        # rented GPU (or amortised own hardware + power)
    gpus: int = 1
    output_tokens_per_s: float = 8545.4   # measured batch throughput (docs/benchmarks-gpu.json, see measured_throughput)
    utilization: float = 0.5              # share of the hours the GPU actually does useful work
    always_on: bool = True                # pay all hours of the month, not just busy ones
    ops_eur_per_month: float = 1500.0     # share of an engineer who runs the platform
    input_tokens_per_request: int = 1000
    output_tokens_per_request: int = 250

    def with_(self, **changes) -> "CostInputs":
        return replace(self, **changes)


BENCHMARKS = paths.ROOT / "docs" / "benchmarks-gpu.json"


def measured_throughput(mode: str = "batch") -> dict:
    """The course's own throughput measurement of a 7B-shaped model in vLLM (docs/benchmarks-gpu.json).

    ``batch``: 256 prompts in one offline batch with CUDA graphs (what batch jobs reach); ``single``: one request
    at a time (what a latency-bound service with one user at a time reaches). Returns value, source and setting.
    """
    data = json.loads(BENCHMARKS.read_text(encoding="utf-8"))
    part = data["graphs"]["batch_256" if mode == "batch" else "batch_1"]
    return {"tokens_per_s": part["tokens_per_s"], "requests": part["requests"], "gpu": data["environment"]["gpu"],
            "vllm": data["environment"]["vllm"], "source": "docs/benchmarks-gpu.json (graphs)",
            "prompt_tokens": data["prompt_tokens"], "output_tokens": data["output_tokens"]}


def sensitivity(inputs: CostInputs, factor: float = 2.0):
    """Break-even when one input at a time is halved or doubled: which inputs move it at all (DataFrame)."""
    import pandas as pd

    names = ["api_eur_per_m_input", "api_eur_per_m_output", "gpu_eur_per_hour", "ops_eur_per_month",
             "output_tokens_per_s", "utilization"]
    base = break_even_requests(inputs)
    rows = []
    for name in names:
        value = getattr(inputs, name)
        low = break_even_requests(inputs.with_(**{name: value / factor}))
        high = break_even_requests(inputs.with_(**{name: min(value * factor, 1.0) if name == "utilization"
                                                   else value * factor}))
        rows.append({"eingabe": name, "wert": value, f"break_even_x{1 / factor:g}": low, "break_even": base,
                     f"break_even_x{factor:g}": high,
                     "bewegt_break_even": any(v != base for v in (low, high))})
    return pd.DataFrame(rows)


def api_cost(inputs: CostInputs, requests_per_month: float) -> float:
    """Monthly cost of the hosted API for this volume in EUR."""
    tin = requests_per_month * inputs.input_tokens_per_request / 1e6
    tout = requests_per_month * inputs.output_tokens_per_request / 1e6
    return tin * inputs.api_eur_per_m_input + tout * inputs.api_eur_per_m_output


def gpu_hours_needed(inputs: CostInputs, requests_per_month: float) -> float:
    """GPU hours to generate the month's output tokens at the measured throughput and utilisation."""
    tokens = requests_per_month * inputs.output_tokens_per_request
    per_hour = inputs.output_tokens_per_s * 3600 * max(inputs.utilization, 1e-9)
    return tokens / per_hour


def capacity_requests(inputs: CostInputs) -> float:
    """Requests per month the configured GPUs can serve at the given utilisation."""
    per_hour = inputs.output_tokens_per_s * 3600 * inputs.utilization * inputs.gpus
    return per_hour * HOURS_PER_MONTH / inputs.output_tokens_per_request


def selfhost_cost(inputs: CostInputs, requests_per_month: float) -> float:
    """Monthly cost of self-hosting in EUR (GPU hours + operations)."""
    if inputs.always_on:
        gpu_cost = HOURS_PER_MONTH * inputs.gpus * inputs.gpu_eur_per_hour
    else:
        gpu_cost = gpu_hours_needed(inputs, requests_per_month) * inputs.gpu_eur_per_hour
    return gpu_cost + inputs.ops_eur_per_month


def break_even_requests(inputs: CostInputs) -> float | None:
    """Monthly request volume above which self-hosting is cheaper; None if it never is (within capacity)."""
    api_per_request = api_cost(inputs, 1.0)
    if inputs.always_on:
        volume = selfhost_cost(inputs, 0) / api_per_request
    else:
        gpu_per_request = gpu_hours_needed(inputs, 1.0) * inputs.gpu_eur_per_hour
        if gpu_per_request >= api_per_request:
            return None
        volume = inputs.ops_eur_per_month / (api_per_request - gpu_per_request)
    return volume if volume <= capacity_requests(inputs) else None


def cost_table(inputs: CostInputs, volumes: Sequence[float]):
    """A DataFrame with API and self-hosting cost for each monthly volume."""
    import pandas as pd

    rows = [{"requests_per_month": v, "api_eur": api_cost(inputs, v), "selfhost_eur": selfhost_cost(inputs, v),
             "cheaper": "self-hosted" if selfhost_cost(inputs, v) < api_cost(inputs, v) else "API"}
            for v in volumes]
    return pd.DataFrame(rows)


def plot_break_even(inputs: CostInputs, max_requests: float | None = None, ax=None):
    """Cost over monthly volume, both lines and the break-even point."""
    import matplotlib.pyplot as plt
    import numpy as np

    be = break_even_requests(inputs)
    top = max_requests or max(capacity_requests(inputs), (be or 0) * 2, 1e5)
    volumes = np.linspace(0, top, 200)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(volumes, [api_cost(inputs, v) for v in volumes], label="API (Preis pro Token)")
    ax.plot(volumes, [selfhost_cost(inputs, v) for v in volumes], label="Self-Hosting (GPU + Betrieb)")
    cap = capacity_requests(inputs)
    if cap < top:
        ax.axvline(cap, color="grey", ls=":", label="Kapazitätsgrenze der GPUs")
    if be is not None:
        ax.axvline(be, color="red", ls="--", label=f"Break-even ≈ {be:,.0f} Anfragen/Monat")
    ax.set_xlabel("Anfragen pro Monat")
    ax.set_ylabel("EUR pro Monat")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax


def plot_break_even_modes(inputs: CostInputs):
    """Side by side: GPU always on (a service) and paid per busy hour (batch jobs), same prices."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, always_on, title in ((axes[0], True, "GPU läuft immer (Dienst)"),
                                 (axes[1], False, "nur Rechenstunden (Batch-Jobs)")):
        plot_break_even(inputs.with_(always_on=always_on), ax=ax)
        ax.set_title(title)
        ax.ticklabel_format(axis="x", style="plain")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e6:.0f} Mio."))
    fig.tight_layout()
    return fig


def interactive_break_even(inputs: CostInputs | None = None):
    """ipywidgets sliders for prices, throughput and utilisation; redraws the break-even plot."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    base = inputs or CostInputs()
    sliders = {
        "api_eur_per_m_output": widgets.FloatSlider(value=base.api_eur_per_m_output, min=0.1, max=15, step=0.1,
                                                    description="API €/1M out"),
        "api_eur_per_m_input": widgets.FloatSlider(value=base.api_eur_per_m_input, min=0.05, max=5, step=0.05,
                                                   description="API €/1M in"),
        "gpu_eur_per_hour": widgets.FloatSlider(value=base.gpu_eur_per_hour, min=0.3, max=6, step=0.1,
                                                description="GPU €/h"),
        "output_tokens_per_s": widgets.FloatLogSlider(value=base.output_tokens_per_s, base=10, min=1, max=4.5,
                                                      description="Token/s"),
        "utilization": widgets.FloatSlider(value=base.utilization, min=0.05, max=1, step=0.05,
                                           description="Auslastung"),
        "ops_eur_per_month": widgets.FloatSlider(value=base.ops_eur_per_month, min=0, max=10000, step=250,
                                                 description="Betrieb €/Mon"),
    }

    def draw(**values):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        plot_break_even(base.with_(**values), ax=ax)
        plt.show()

    return widgets.interactive(draw, **sliders)


CRITERIA = {
    "sensitive_data": ("Sensible Daten (Personal, Kunden, Geheimnisse)", 3),
    "regulation": ("Regulierung (DSGVO, KRITIS, Branchenaufsicht)", 3),
    "volume": ("Hohes, planbares Volumen", 2),
    "latency": ("Latenz/Verfügbarkeit im eigenen Netz nötig", 1),
    "customization": ("Fine-tuning auf eigene Daten nötig", 2),
    "skills": ("Team kann GPUs und Kubernetes betreiben", 2),
}


def decision_matrix(scores: dict[str, int]):
    """Weighted decision matrix: each criterion scored 0 (spricht für API) .. 2 (spricht für Self-Hosting)."""
    import pandas as pd

    unknown = set(scores) - set(CRITERIA)
    if unknown:
        raise ValueError(f"Unknown criteria {sorted(unknown)}; use {sorted(CRITERIA)}")
    rows = []
    for key, (label, weight) in CRITERIA.items():
        score = scores.get(key, 1)
        if score not in (0, 1, 2):
            raise ValueError(f"Score for {key} must be 0, 1 or 2, not {score!r}")
        rows.append({"kriterium": label, "gewicht": weight, "bewertung": score, "punkte": weight * score})
    table = pd.DataFrame(rows)
    share = table["punkte"].sum() / (2 * table["gewicht"].sum())
    return table, share


def recommendation(share: float) -> str:
    if share >= 0.6:
        return "Self-Hosting empfohlen"
    if share >= 0.4:
        return "Hybrid: sensible Workloads selbst hosten, Rest über API"
    return "API reicht (vorerst)"


def as_dict(inputs: CostInputs) -> dict:
    return asdict(inputs)
