"""Hardware profiles: one YAML file, loaded once at the edge into one typed, frozen ``Profile``.

The edge is the command line (``--profile``, default ``COURSE_PROFILE`` or ``mini``), the notebook's papermill
parameter ``profile`` and the course runner. Everything below it takes the ``Profile`` object. Each block of a
profile is a dataclass here, with every default stated once; a key that no block knows fails loudly, naming the
profile, the key and the nearest valid name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from .errors import HelpersError

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
DEFAULT_PROFILE = "mini"
# A second YAML file whose profiles are added to PROFILES_FILE's (a dress rehearsal writes one; a site may keep
# its own variants there). Its names must not repeat the course's.
EXTRA_PROFILES_ENV = "COURSE_PROFILES_EXTRA"


class ProfileError(HelpersError, ValueError):
    """A profile is unknown, malformed, or cannot run on this machine."""


# ---------------------------------------------------------------------------- the blocks
@dataclass(frozen=True)
class VLLMSettings:
    """Engine settings, for ``vllm.LLM`` and for ``vllm serve`` alike (see ``inference.engine_kwargs``)."""
    max_model_len: int
    enforce_eager: bool = False
    max_num_seqs: int = 256
    gpu_memory_utilization: float | None = None   # None: vLLM's default (0.9)
    quantization: str | None = None
    max_lora_rank: int = 16                        # the largest adapter rank the engine accepts
    max_loras: int = 1                             # adapters in one batch
    kv_cache_gb: int = 1                           # CPU only: VLLM_CPU_KVCACHE_SPACE
    seed: int = 0
    tensor_parallel_size: int = 1                  # GPUs one engine spreads the model over (70B judge: 2)


@dataclass(frozen=True)
class GenerationSettings:
    max_tokens: int
    temperature: float = 0.0


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class TrainSettings:
    """Everything ``training.train`` reads; nothing is set anywhere else."""
    max_steps: int
    batch_size: int
    learning_rate: float
    max_length: int
    grad_accum: int = 1
    quantize_4bit: bool = True
    gradient_checkpointing: bool = False
    optimizer: str = "adamw_torch"
    seed: int = 0
    scheduler: str = "cosine"
    warmup_steps: int | None = None    # None: 5 % of max_steps (at least 1)
    logging_steps: int = 10
    save_steps: int | None = None      # None: every third of the run (with the eval)
    threads: int | None = None         # CPU only: torch threads (None: torch's default)
    # what answerable gold records teach: "reference" (the human answer) or "context" (quote the context: a model
    # too small to paraphrase, like Kurs-Mini, learns to answer with the passage; training.answer_targets)
    answer_target: str = "reference"
    # a small data set stops after this many passes over it (None: always max_steps). 26 generated pairs x 150
    # steps x 8 would be ~46 passes: memorising, and on 2 cores the slowest training of the course
    max_epochs: float | None = None
    # dtype of the frozen NF4 matmuls (bnb_4bit_compute_dtype; QLoRA's own choice is bfloat16). None: the train
    # dtype. "bfloat16-if-native": bfloat16 on a CPU with bfloat16 matrix instructions (AMX or AVX512-BF16), the
    # train dtype elsewhere (without them oneDNN emulates bfloat16; a 1600x384x1024 matmul measured 5x slower than
    # float32 with AVX-512 alone and 160x with AVX2)
    compute_dtype: str | None = None

    def __post_init__(self):
        if self.max_epochs is not None and self.max_epochs <= 0:
            raise ProfileError(f"train.max_epochs must be positive or empty, not `{self.max_epochs}`")
        if self.answer_target not in ("reference", "context"):
            raise ProfileError(f"train.answer_target must be `reference` or `context`, not `{self.answer_target}`")
        if self.compute_dtype not in (None, "float32", "float16", "bfloat16", "bfloat16-if-native"):
            raise ProfileError(f"train.compute_dtype must be empty, float32, float16, bfloat16 or bfloat16-if-native, "
                               f"not `{self.compute_dtype}`")

    def steps_for(self, n_examples: int) -> int:
        """Optimizer steps for ``n_examples`` training examples: ``max_steps``, capped at ``max_epochs`` passes."""
        if not self.max_epochs or n_examples <= 0:
            return self.max_steps
        per_epoch = math.ceil(n_examples / (self.batch_size * self.grad_accum))
        return max(1, min(self.max_steps, math.ceil(self.max_epochs * per_epoch)))

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps is not None else max(1, self.max_steps // 20)

    @property
    def eval_every(self) -> int:
        return max(1, self.max_steps // 3)

    @property
    def save_every(self) -> int:
        return self.save_steps if self.save_steps is not None else self.eval_every


@dataclass(frozen=True)
class SampleSettings:
    demo_prompts: int = 8
    eval_prompts: int = 40
    serve_requests: int = 8


@dataclass(frozen=True)
class ServerSettings:
    startup_timeout_s: float = 300


@dataclass(frozen=True)
class DatasetSettings:
    """The dataset pipeline (notebooks 04, 07, 07.1)."""
    chunk_max_tokens: int = 256     # tokens of the profile's tokenizer per chunk
    chunk_overlap: int = 32         # tokens repeated from the previous chunk
    chunk_min_tokens: int = 40      # chunks shorter than this are not used for QA generation
    generate_chunks: int | None = 16  # chunks the notebooks generate QA pairs for (None: all)
    unit_chunks: int = 16           # chunks per generation work unit (commit, resume and shard granularity)
    qa_max_tokens: int = 128        # output tokens per generated QA pair (JSON)
    question_max_chars: int = 160
    answer_max_chars: int = 320
    length_in_schema: bool = False  # maxLength inside the decoding grammar (see generation.schema)
    bench_prompts: int = 64         # prompts of the batching benchmark / notebook 07.1
    bench_sequential: int = 8       # of those, how many the slow per-request loop runs
    bench_max_tokens: int = 64      # output tokens per request in the throughput comparison


@dataclass(frozen=True)
class PipelineSettings:
    """The Argo workflow of post 10 (helpers.pipeline): image, GPU placement, sharding, hygiene."""
    image: str = "ghcr.io/souveraene-llms/course:0.4.0"  # the course image, pinned (tag or @sha256 digest)
    shards: int = 1                     # `generate --shard i/N` tasks (one GPU each on the cluster)
    gpus_per_step: int = 1              # nvidia.com/gpu, requests = limits
    gpu_concurrency: int = 1            # GPU steps running at once (the semaphore's ConfigMap value)
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: list[dict] = field(default_factory=lambda: [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    gpu_cpu: str = "4"                  # CPU request of a GPU step
    gpu_memory: str = "32Gi"            # memory request = limit of a GPU step
    cpu_memory: str = "4Gi"             # memory request = limit of a CPU step
    deadline_hours: float = 8           # activeDeadlineSeconds of the whole workflow


@dataclass(frozen=True)
class GateSettings:
    """Promotion gate (helpers.gate): absolute minima plus the minimum change against the champion."""
    stop_rate: float = 0.9              # share of answers that stop by themselves (evaluate: stopped)
    refusal: float = 0.5                # correct refusals on unanswerable questions (evaluate: refusal_correct)
    judge_grade_share: float = 0.3      # share of judge grade A (helpers judge)
    context_adherence: float = 0.3      # answers grounded in the context (evaluate: grounded)
    min_change: float = 0.0             # candidate - champion on every metric must be at least this


BLOCKS: dict[str, type] = {"vllm": VLLMSettings, "generation": GenerationSettings, "lora": LoraSettings,
                           "train": TrainSettings, "samples": SampleSettings, "server": ServerSettings,
                           "dataset": DatasetSettings, "pipeline": PipelineSettings, "gate": GateSettings}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str
    model: str
    train_model: str
    dtype: str
    vllm: VLLMSettings
    generation: GenerationSettings
    train: TrainSettings
    lora: LoraSettings = field(default_factory=LoraSettings)
    samples: SampleSettings = field(default_factory=SampleSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    dataset: DatasetSettings = field(default_factory=DatasetSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    train_dtype: str | None = None     # None: the same as dtype
    base_model: str | None = None      # the base the serving weights derive from (e.g. an AWQ export); None: model
    chat_template: str | None = None   # "course-inst": a base model without template gets the course's [INST] one
    generator_model: str | None = None  # the instruct model that writes QA pairs (`generate`); None: model
    judge_model: str | None = None      # the instruct model that grades answers (`judge`); None: generator_model
    generator_adapter: str | None = None  # a LoRA on generator_model: "writer" (assets/roles) or a folder; None: none
    judge_adapter: str | None = None      # a LoRA on judge_model: "judge" (assets/roles) or a folder; None: none
    card_gb: float | None = None       # the card the profile is sized for (GB as sold: L4 24, T4 16, H100 80)
    emulate_card: bool = False         # on a larger GPU, behave as if it had card_gb: vLLM's share scaled down,
                                       # training capped (torch.cuda.set_per_process_memory_fraction)

    def instruct_view(self, role: str) -> "Profile":
        """This profile with the instruct model of ``role`` ("generator" or "judge") as its served model, so that
        engines, LoRA checks and ``vllm serve`` flags work for that role exactly as for the course model."""
        if role not in ("generator", "judge"):
            raise ProfileError(f"Unknown instruct role '{role}': generator or judge.")
        model = self.generator_model if role == "generator" else self.judge_model
        if model == self.model:
            return self
        return dataclasses.replace(self, model=model, train_model=model, base_model=None, chat_template=None,
                                   generator_model=model, judge_model=model)

    @property
    def serving_base(self) -> str:
        """The model an adapter must have been trained on to be served by this profile."""
        return self.base_model or self.model

    def __post_init__(self):
        if self.train_dtype is None:
            object.__setattr__(self, "train_dtype", self.dtype)
        if self.generator_model is None:
            object.__setattr__(self, "generator_model", self.model)
        if self.judge_model is None:
            object.__setattr__(self, "judge_model", self.generator_model)
        if self.emulate_card and not self.card_gb:
            raise ProfileError(f"Profile '{self.name}': emulate_card needs card_gb (the card to emulate, in GB).")
        if self.chat_template not in (None, "course-inst"):
            raise ProfileError(f"Profile '{self.name}': chat_template must be `course-inst` (the course's [INST] "
                               f"template for base models) or left out, not {self.chat_template!r}.")

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
        self.check_card(torch.cuda.get_device_properties(0).total_memory)

    def check_card(self, total_bytes: int) -> None:
        """Refuse a GPU smaller than the card the profile is sized for (before any model is loaded)."""
        if not self.card_gb or total_bytes >= self.card_gb * 1e9 * CARD_TOLERANCE:
            return
        fitting = [name for name, raw in _all_raw().items() if raw.get("device") == "cuda" and raw.get("card_gb")
                   and raw["card_gb"] * 1e9 * CARD_TOLERANCE <= total_bytes]
        raise ProfileError(
            f"Profile '{self.name}' is sized for a {self.card_gb:g} GB card, but this GPU has "
            f"{total_bytes / 1e9:.1f} GB. Use a profile for a smaller card"
            + (f" ({', '.join(fitting)})" if fitting else " (t4 is the smallest; below 16 GB use gpu-smoke or mini)")
            + f", or lower its `vllm.gpu_memory_utilization`, `vllm.max_model_len` and `train.batch_size` in "
              f"{PROFILES_FILE.name} and remove `card_gb`.")

    def card_share(self, total_bytes: int | None = None) -> float:
        """With ``emulate_card``: the emulated card's share of this GPU (<= 1); otherwise 1.0."""
        if not (self.emulate_card and self.card_gb and self.device == "cuda"):
            return 1.0
        if total_bytes is None:
            import torch

            if not torch.cuda.is_available():
                return 1.0
            total_bytes = torch.cuda.get_device_properties(0).total_memory
        return min(1.0, self.card_gb * 1e9 / total_bytes)


# A card reports a little less than its marketed size (an L4 "24 GB" shows 23,034 MiB = 24.2 GB; a T4 16.1 GB).
CARD_TOLERANCE = 0.95


# ---------------------------------------------------------------------------- loading
@lru_cache(maxsize=1)
def _raw_profiles() -> dict[str, dict]:
    with open(PROFILES_FILE, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _extra_profiles(path: str) -> dict[str, dict]:
    file = Path(path)
    if not file.is_file():
        raise ProfileError(f"{EXTRA_PROFILES_ENV}={path}: no such file. Unset the variable or write the file "
                           "(`python -m helpers rehearsal prepare` writes one).")
    return _read_extra(path, file.stat().st_mtime_ns)   # re-read when the file changes (a second rehearsal)


@lru_cache(maxsize=4)
def _read_extra(path: str, _mtime_ns: int) -> dict[str, dict]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: expected a mapping of profile names to profile blocks.")
    clash = sorted(set(data) & set(_raw_profiles()))
    if clash:
        raise ProfileError(f"{path}: the profiles {', '.join(clash)} already exist in {PROFILES_FILE.name}; "
                           "give the extra profiles other names.")
    return data


def _all_raw() -> dict[str, dict]:
    """The course's profiles plus those of the file named by ``COURSE_PROFILES_EXTRA`` (if set)."""
    extra = os.environ.get(EXTRA_PROFILES_ENV)
    return {**_raw_profiles(), **(_extra_profiles(extra) if extra else {})}


def profile_names() -> list[str]:
    return list(_all_raw())


def default_name() -> str:
    """The profile the edge uses when none is named: ``COURSE_PROFILE``, else ``mini``."""
    return os.environ.get("COURSE_PROFILE") or DEFAULT_PROFILE


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls, data: Any, profile: str, where: str):
    """``cls(**data)``, refusing keys the class does not know and naming the nearest valid one."""
    if not isinstance(data, dict):
        raise ProfileError(f"Profile '{profile}' in {PROFILES_FILE.name}: `{where}` must be a mapping, "
                           f"got {data!r}.")
    valid = _fields(cls)
    for key in data:
        if key not in valid:
            near = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean `{near[0]}`?" if near else f"valid keys: {', '.join(valid)}"
            raise ProfileError(f"Profile '{profile}' in {PROFILES_FILE.name}: unknown key `{where}{key}` ({hint})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ProfileError(f"Profile '{profile}' in {PROFILES_FILE.name} lacks the keys: "
                           + ", ".join(f"{where}{k}" for k in missing))
    return cls(**data)


def from_dict(name: str, data: dict) -> Profile:
    """Build a typed ``Profile`` from one YAML block (strict: unknown keys fail)."""
    data = dict(data)
    for block, cls in BLOCKS.items():
        if block in data:
            data[block] = _build(cls, data[block] or {}, name, f"{block}.")
    return _build(Profile, {"name": name, **data}, name, "")


def load_profile(name: str | None = None) -> Profile:
    """Load a profile by name (default: ``COURSE_PROFILE`` or ``mini``). Call it once, at the edge."""
    name = name or default_name()
    raw = _all_raw()
    if name not in raw:
        near = difflib.get_close_matches(name, list(raw), n=1)
        raise ProfileError(f"Unknown profile '{name}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                           + f". Choose one of: {', '.join(raw)} (defined in {PROFILES_FILE}).")
    return from_dict(name, raw[name])
