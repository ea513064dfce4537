"""The closed loop: the QA pairs the course generated itself → an adapter → the same held-out gold items.

Notebook 07 writes ``splits/train.jsonl``: the gold training pairs plus the QC-accepted generated pairs of
training documents (``source`` tells them apart; ``split.training_splits``). ``train_on_split`` trains an adapter
on the generated pairs of exactly that file (a pair from a gold eval document would be rejected with its reason,
so the comparison stays leak-free), and ``compare_on_gold`` answers the gold eval split with that
adapter and the gold-trained one in one engine, with paired tests. This is the series' question "is
self-generated data good enough?", asked on held-out items both adapters never saw.
"""

from __future__ import annotations

from pathlib import Path

from . import dataset, io, split, training
from .errors import HelpersError
from .profiles import Profile

STAGE = "loop"


class LoopError(HelpersError, RuntimeError):
    """The loop cannot close: no generated pair survived QC and the split."""


def generated_train_records(work_dir: str | Path, rejects_path: str | Path | None = None) -> list[dict]:
    """The generated training split of this run, without pairs from gold eval documents (those go to rejects)."""
    path = dataset.files(work_dir).splits / "train.jsonl"
    if not path.exists():
        raise LoopError(f"{path} does not exist: notebook 07 (or `python -m helpers split`) writes it after QC.")
    records = [r for r in io.read_jsonl(path) if r.get("source") == "generated"]   # the split also holds gold
    eval_docs = {r["doc_id"] for r in split.gold_splits()["eval"]}
    leaking = [r for r in records if r.get("doc_id") in eval_docs]
    if leaking and rejects_path:
        io.append_jsonl(rejects_path, [{**r, "reason": "document is in the gold eval split (leak)", "stage": STAGE}
                                       for r in leaking])
    kept = [{**r, "source": "generated"} for r in records if r.get("doc_id") not in eval_docs]
    if not kept:
        raise LoopError(f"{path} holds {len(records)} pairs, none from a training document: nothing generated can "
                        "be trained on. More chunks (dataset.generate_chunks) or a better writer would change that.")
    return kept


def train_on_split(profile: Profile, work_dir: str | Path, name: str = "generated", tracker=None,
                   progress: bool = False) -> Path:
    """Train ``<work_dir>/adapters/<name>`` on the generated training split only (kept while ``training.same_recipe``
    holds: the same data and settings)."""
    target = training.adapters_dir(work_dir) / name
    rejects = dataset.files(work_dir).rejects(STAGE)
    records = generated_train_records(work_dir, rejects)
    if training.same_recipe(target, profile, records):
        return target
    _, gold_eval = training.training_records(work_dir)
    if tracker is None:
        from . import tracking

        tracker = tracking.Tracker(tracking.local_uri(work_dir), experiment="qlora",
                                   artifact_root=tracking.local_artifact_root(work_dir))
    training.train(profile, records, gold_eval, target, tracker=tracker, rejects_path=rejects, progress=progress,
                   run_name=name)
    return target


def compare_on_gold(profile: Profile, adapters: dict[str, str | Path], output: str | Path,
                    first: str, second: str) -> dict:
    """Both adapters (and the base model) on the gold eval split; paired comparison ``second`` vs ``first``."""
    from . import evaluation

    result = evaluation.evaluate_to_file(profile, {k: str(v) for k, v in adapters.items()}, output, progress=False)
    result["loop"] = evaluation.compare(result["items"], first, second)
    io.write_json(output, result)
    return result
