import os
import warnings

import pytest

from helpers import profiles, sovereign


def test_all_profiles_load_with_required_sections():
    names = profiles.profile_names()
    assert {"mini", "t4", "l4", "h100", "gpu-smoke"} <= set(names)
    for name in names:
        p = profiles.load_profile(name)
        assert p.vllm.max_model_len > 0 and p.lora.r > 0 and p.train.max_steps > 0
    assert profiles.load_profile().name == "mini"


def test_t4_profile_never_uses_bfloat16():
    t4 = profiles.load_profile("t4")
    assert t4.dtype == "float16" and t4.train_dtype == "float16"


def test_unknown_profile_names_the_choices():
    with pytest.raises(profiles.ProfileError, match="Unknown profile 'a100'.*mini"):
        profiles.load_profile("a100")


def test_a_misspelt_key_fails_naming_profile_key_and_the_nearest_valid_name():
    import copy

    raw = copy.deepcopy(profiles._raw_profiles()["t4"])
    raw["vllm"]["max_num_seq"] = raw["vllm"].pop("max_num_seqs")
    with pytest.raises(profiles.ProfileError, match=r"Profile 't4'.*unknown key `vllm.max_num_seq` "
                                                    r"\(did you mean `max_num_seqs`\?\)"):
        profiles.from_dict("t4", raw)
    raw = copy.deepcopy(profiles._raw_profiles()["mini"])
    raw["trian"] = raw.pop("train")
    with pytest.raises(profiles.ProfileError, match=r"Profile 'mini'.*unknown key `trian` \(did you mean `train`\?\)"):
        profiles.from_dict("mini", raw)


def test_blocks_are_typed_and_frozen_with_their_defaults_in_one_place():
    import dataclasses

    mini = profiles.load_profile("mini")
    assert isinstance(mini.train, profiles.TrainSettings) and isinstance(mini.dataset, profiles.DatasetSettings)
    assert mini.train.seed == 0 and mini.train.scheduler == "cosine" and mini.train.logging_steps == 10
    assert mini.train.warmup == max(1, mini.train.max_steps // 20) and mini.train.save_every == mini.train.max_steps // 3
    assert profiles.load_profile("h100").dataset.chunk_max_tokens == profiles.DatasetSettings.chunk_max_tokens
    with pytest.raises(dataclasses.FrozenInstanceError):
        mini.vllm.max_num_seqs = 1


def test_the_cli_default_profile_comes_from_course_profile(monkeypatch):
    from helpers import cli

    monkeypatch.setenv("COURSE_PROFILE", "t4")
    assert cli._profile_name(["generate", "--help"]) == "t4"
    assert cli._profile_name(["generate", "--profile", "l4"]) == "l4"
    monkeypatch.delenv("COURSE_PROFILE")
    assert cli._profile_name(["generate"]) == "mini"
    parser = cli.build_parser(profiles.load_profile("t4"))
    assert parser.parse_args(["generate", "--chunks", "c", "--output", "o"]).max_tokens == 256


def test_gpu_profile_without_gpu_says_what_to_do():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(profiles.ProfileError, match="needs an NVIDIA GPU.*--profile mini"):
        profiles.load_profile("l4").require_device()
    profiles.load_profile("mini").require_device()  # no error on CPU


def test_activate_sets_offline_and_no_telemetry(monkeypatch, tmp_path):
    for key in list(sovereign.OFFLINE_VARS) + list(sovereign.TELEMETRY_VARS) + ["MLFLOW_TRACKING_URI"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("COURSE_RUNS_DIR", str(tmp_path))
    sovereign.activate()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY",
                "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK"):
        assert os.environ[key] == "1"
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert str(tmp_path) in os.environ["MLFLOW_TRACKING_URI"]


def test_lifting_offline_mode_is_visible_and_keeps_telemetry_off(monkeypatch):
    sovereign.activate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sovereign.activate(allow_downloads=True)
    assert any("Offline mode lifted" in str(w.message) for w in caught)
    assert "HF_HUB_OFFLINE" not in os.environ
    assert os.environ["VLLM_NO_USAGE_STATS"] == "1"
    sovereign.activate()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
