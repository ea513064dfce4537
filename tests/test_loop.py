"""The closed loop's data and its adapter cache (helpers.loop): which generated pairs train, when it retrains."""

import dataclasses

import pytest

from helpers import io, loop, split, training
from helpers.profiles import load_profile

MINI = load_profile("mini")


@pytest.fixture
def generated(tmp_path):
    from helpers import dataset

    s = split.gold_splits()
    train = [{**r, "source": "generated"} for r in s["train"][:12]]
    leak = [{**s["eval"][0], "source": "generated"}]
    gold = [{**r, "source": "gold"} for r in s["train"][12:20]]
    path = dataset.files(tmp_path).splits / "train.jsonl"
    io.write_jsonl(path, train + leak + gold)
    return tmp_path, train


def test_only_generated_pairs_of_training_documents_train_and_leaks_are_rejected(generated):
    work, train = generated
    rejects = work / "rejects.jsonl"
    kept = loop.generated_train_records(work, rejects)
    assert [r["id"] for r in kept] == [r["id"] for r in train]
    (leak,) = io.read_jsonl(rejects)
    assert "eval split" in leak["reason"] and leak["stage"] == loop.STAGE


def test_no_trainable_pair_says_what_to_change(tmp_path):
    from helpers import dataset

    with pytest.raises(loop.LoopError, match="does not exist"):
        loop.generated_train_records(tmp_path)
    io.write_jsonl(dataset.files(tmp_path).splits / "train.jsonl",
                   [{**split.gold_splits()["eval"][0], "source": "generated"}])
    with pytest.raises(loop.LoopError, match="generate_chunks"):
        loop.generated_train_records(tmp_path)


def test_an_adapter_of_the_same_recipe_is_kept_and_another_recipe_retrains(generated, monkeypatch):
    work, train = generated
    target = training.adapters_dir(work) / "generated"
    target.mkdir(parents=True)
    (target / "adapter_config.json").write_text("{}")
    io.write_json(target / "training_info.json", {**training.recipe(MINI, train), "train_examples": len(train)})
    calls = []
    monkeypatch.setattr(training, "train", lambda profile, *a, **k: calls.append(profile))
    assert loop.train_on_split(MINI, work) == target and not calls           # same data, same settings: kept
    slower = dataclasses.replace(MINI, train=dataclasses.replace(MINI.train, learning_rate=0.0005))
    loop.train_on_split(slower, work, tracker=object())
    assert calls == [slower]                                                   # other learning rate: trains
