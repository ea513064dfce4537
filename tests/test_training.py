"""QLoRA training, labels, diagnostics and MLflow tracking (issue 5): real tokenizer, real bitsandbytes NF4,
real peft, real vLLM LoRARequest, real MLflow store and `mlflow server`."""

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers import adapters, diagnose, io, labels, paths, prompts, split, tracking, training
from helpers.profiles import ProfileError, load_profile

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def profile():
    return load_profile("mini")


@pytest.fixture(scope="module")
def tok(profile):
    from helpers import models

    return labels.load_tokenizer(models.resolve(profile, "train_model"))


@pytest.fixture(scope="module")
def gold():
    s = split.gold_splits()
    return s["train"], s["eval"]


# --------------------------------------------------------------------------- labels
def test_labels_cover_exactly_the_answer_and_eos(tok, gold):
    rec = gold[0][0]
    enc = labels.encode(tok, rec, 512)
    prompt = tok.apply_chat_template(prompts.qa_messages(rec["question"], rec["context"]), tokenize=False,
                                     add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert enc["input_ids"][:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert all(x == labels.IGNORE_INDEX for x in enc["labels"][:n_prompt])
    answer = enc["labels"][n_prompt:]
    assert answer[-1] == tok.eos_token_id and enc["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(answer[:-1]).strip() == rec["answer"].strip()
    # the system prompt reached the training text
    assert prompts.SYSTEM_PROMPT in tok.decode(enc["input_ids"])


def test_pad_token_is_distinct_from_eos_unless_asked(profile):
    from helpers import models

    model_dir = models.resolve(profile, "train_model")
    good = labels.load_tokenizer(model_dir)
    bad = labels.load_tokenizer(model_dir, pad_as_eos=True)
    assert good.pad_token_id != good.eos_token_id
    assert bad.pad_token_id == bad.eos_token_id


def test_completion_collator_keeps_eos_and_masks_padding(tok, gold):
    feats = labels.encode_records(tok, gold[0][:4], 512)
    batch = labels.make_collator(tok, "completion")(feats)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["labels"][row][n - 1].item() == tok.eos_token_id
        assert (batch["labels"][row][n:] == labels.IGNORE_INDEX).all()
        assert (batch["input_ids"][row][n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][row][:n].all() and not batch["attention_mask"][row][n:].any()


def test_lm_collator_with_pad_as_eos_masks_every_eos(profile, gold):
    from helpers import models

    bad_tok = labels.load_tokenizer(models.resolve(profile, "train_model"), pad_as_eos=True)
    feats = labels.encode_records(bad_tok, gold[0][:4], 512)
    batch = labels.make_collator(bad_tok, "lm")(feats)
    assert not (batch["labels"] == bad_tok.eos_token_id).any()
    assert (batch["input_ids"] == bad_tok.eos_token_id).sum() >= 4  # EOS is in the input, just not in the labels


def test_too_long_examples_are_rejected_not_truncated(tok, gold, tmp_path):
    recs = gold[0][:3]
    long_rec = {**recs[0], "id": "long", "context": "Wort " * 800}
    rejects = tmp_path / "rejects.jsonl"
    with pytest.warns(UserWarning, match="longer than max_length"):
        enc = labels.encode_records(tok, recs + [long_rec], 256, rejects)
    assert len(enc) == 3 and all(e["labels"][-1] == tok.eos_token_id for e in enc)
    lines = io.read_jsonl(rejects)
    assert [l["id"] for l in lines] == ["long"] and lines[0]["reason"].startswith("too_long")
    assert lines[0]["stage"] == "encode"
    with pytest.raises(training.TrainingDataError, match="max_length"):
        labels.encode_records(tok, [long_rec], 256)


def test_template_without_eos_is_refused(tok, gold):
    broken = labels.load_tokenizer(str(Path(tok.name_or_path)))
    broken.chat_template = broken.chat_template.replace("+ eos_token ", "")
    with pytest.raises(labels.TemplateError, match="EOS"):
        labels.encode(broken, gold[0][0], 512)


# --------------------------------------------------------------------------- bad files
def test_empty_training_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("")
    with pytest.raises(training.TrainingDataError, match="is empty"):
        training.load_records(path)


def test_malformed_training_file_names_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n{not json\n')
    with pytest.raises(training.TrainingDataError, match=r"train.jsonl:2: not valid JSON"):
        training.load_records(path)


def test_records_without_answer_go_to_rejects(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": 1, "question": "a", "answer": "b"}\n{"id": 2, "question": "a", "answer": ""}\n')
    with pytest.warns(UserWarning, match="1 of 2 records"):
        good = training.load_records(path, tmp_path / "rej.jsonl")
    assert [r["id"] for r in good] == [1]
    assert io.read_jsonl(tmp_path / "rej.jsonl")[0]["reason"].startswith("missing or empty field")


def test_training_records_add_generated_pairs_labelled(tmp_path, gold):
    extra = [{**gold[0][0], "id": "gen-1"}, {**gold[1][0], "id": "gen-leak"}]
    io.write_jsonl(tmp_path / "data" / "qa_accepted.jsonl", extra)
    train, evaluation = training.training_records(tmp_path, tmp_path / "rej.jsonl")
    assert {r["source"] for r in evaluation} == {"gold"}
    generated = [r for r in train if r["source"] == "generated"]
    assert [r["id"] for r in generated] == ["gen-1"]  # the pair from an eval document is rejected as a leak
    assert io.read_jsonl(tmp_path / "rej.jsonl")[0]["id"] == "gen-leak"
    assert len(train) == len(gold[0]) + 1


def test_an_empty_accepted_file_means_gold_only(tmp_path, gold, capsys):
    # notebook 07 may accept no generated pair (random weights in the GPU rehearsal did): training goes on, on gold
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa_accepted.jsonl").write_text("\n", encoding="utf-8")
    train, _ = training.training_records(tmp_path, tmp_path / "rej.jsonl")
    assert len(train) == len(gold[0]) and {r["source"] for r in train} == {"gold"}
    assert "training on gold only" in capsys.readouterr().out


def test_gpu_profile_without_gpu_is_refused(gold, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ProfileError, match="needs an NVIDIA GPU"):
        training.train(load_profile("l4"), gold[0][:4], None, tmp_path / "a")


# --------------------------------------------------------------------------- diagnose
def test_diagnose_flags_pad_as_eos_with_lm_collator(profile, gold):
    bad = diagnose.inspect_setup(profile, gold[0][:16], pad_as_eos=True, collator="lm")
    good = diagnose.inspect_setup(profile, gold[0][:16])
    assert bad["pad_equals_eos"] and bad["eos_label_share"] == 0.0 and not bad["ok"]
    assert "pad_token == eos_token" in bad["problems"][0]
    assert good["ok"] and good["eos_label_share"] == 1.0 and good["answer_labelled_share"] == 1.0
    assert 0 < good["masked_label_share"] < 1


def test_diagnose_cli_exit_codes(tmp_path, gold):
    data = tmp_path / "train.jsonl"
    io.write_jsonl(data, gold[0][:8])
    base = [sys.executable, "-m", "helpers", "diagnose", "--profile", "mini", "--data", str(data)]
    ok = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300)
    bad = subprocess.run(base + ["--pad-as-eos", "--collator", "lm"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "OK: EOS reaches the labels" in ok.stdout
    assert bad.returncode == 1 and "pad == eos" in bad.stdout and "PROBLEMS" in bad.stdout


def test_train_cli_reports_bad_input(tmp_path):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "helpers", "train", "--train", str(empty), "--output",
                           str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is empty" in proc.stderr
    assert not (tmp_path / "a").exists()


def test_train_cli_runs_one_step(tmp_path, gold):
    data = tmp_path / "train.jsonl"
    io.write_jsonl(data, gold[0][:8])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.run([sys.executable, "-m", "helpers", "train", "--train", str(data), "--eval", str(data),
                           "--output", str(tmp_path / "a"), "--max-steps", "1", "--tracking-uri", uri],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Adapter saved to" in proc.stdout
    assert (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert len(tracking.runs_table(uri, "qlora")) == 1


# --------------------------------------------------------------------------- a real (tiny) training run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, profile, gold):
    """Two QLoRA steps on 16 gold pairs, tracked in a local MLflow store."""
    work = tmp_path_factory.mktemp("train")
    tracker = tracking.Tracker(tracking.local_uri(work), experiment="test", system_metrics=True,
                               system_metrics_interval=1)
    result = training.train(profile, gold[0][:16], gold[1][:8], work / "adapters" / "tiny", tracker=tracker,
                            max_steps=2, progress=False)
    return work, result


def test_training_saves_an_adapter_with_its_record(tiny_run, profile):
    work, result = tiny_run
    adapter = result.adapter_dir
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == profile.lora.r <= profile.vllm.max_lora_rank
    assert {"q_proj", "v_proj", "down_proj"} <= set(config["target_modules"])
    info = training.adapter_info(adapter)
    assert info["pad_token_id"] != info["eos_token_id"] and info["collator"] == "completion"
    assert info["quantize_4bit"] and info["max_steps"] == 2 and len(info["losses"]) >= 1
    assert info["eval_loss_last"] is not None and info["peak_memory_mb"] > 0
    assert info["compute_dtype"] == training.compute_dtype(profile)     # what the NF4 matmuls ran in, recorded
    assert info["dataset_fingerprint"] == training.fingerprint(
        [{**r} for r in split.gold_splits()["train"][:16]])
    assert not list(adapter.parent.glob(".tiny.tmp"))
    assert list((adapter.parent / "tiny.checkpoints").glob("checkpoint-*"))


def test_a_real_run_is_its_own_recipe_and_no_other(tiny_run, profile, gold):
    # same_recipe reads what _train wrote: the run's data and settings match, other data or settings do not
    work, result = tiny_run
    two_steps = dataclasses.replace(profile, train=dataclasses.replace(profile.train, max_steps=2))
    assert training.same_recipe(result.adapter_dir, two_steps, gold[0][:16])
    assert not training.same_recipe(result.adapter_dir, profile, gold[0][:16])          # 150 steps, not 2
    assert not training.same_recipe(result.adapter_dir, two_steps, gold[0][:15])        # other data
    faster = dataclasses.replace(two_steps, train=dataclasses.replace(two_steps.train, learning_rate=0.1))
    assert not training.same_recipe(result.adapter_dir, faster, gold[0][:16])
    assert not training.same_recipe(result.adapter_dir, two_steps, gold[0][:16], pad_as_eos=True)


def test_training_was_tracked_in_the_local_mlflow_store(tiny_run):
    work, result = tiny_run
    uri = tracking.local_uri(work)
    run_id = result.info["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["collator"] == "completion" and run.data.params["lora_r"] == "16"
    assert run.data.tags["dataset_fingerprint"] == result.info["dataset_fingerprint"]
    assert [s for s, _ in tracking.metric_history(uri, run_id, "loss")]  # per-step loss
    assert "train_seconds" in run.data.metrics
    assert any(k.startswith("system/") for k in run.data.metrics), "no system metrics sampled"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://")) / "adapter"
    assert (artifacts / "adapter_model.safetensors").exists()
    assert str(artifacts).startswith(str(work))
    table = tracking.runs_table(uri, "test")
    assert len(table) == 1 and table["status"][0] == "FINISHED"


def test_training_in_its_own_process_returns_the_same_record(monkeypatch, profile, gold, tmp_path, capsys):
    # on a GPU `train` runs in a spawned process (only an exit empties the card); forced here on the CPU
    monkeypatch.setattr(training, "own_process", lambda p: True)
    tracker = tracking.Tracker(tracking.local_uri(tmp_path), experiment="child", system_metrics=False)
    result = training.train(profile, gold[0][:16], None, tmp_path / "child", tracker=tracker, max_steps=1,
                            progress=False)
    assert result.info["global_step"] == 1 and (result.adapter_dir / "adapter_model.safetensors").exists()
    assert "Schritt 1/1" in capsys.readouterr().out        # the child's output is shown in the caller's cell
    assert tracker.run_id == result.info["mlflow_run_id"] is not None
    assert len(tracking.runs_table(tracking.local_uri(tmp_path), "child")) == 1


def test_a_child_process_that_dies_is_named():
    import os

    from helpers import childproc

    with pytest.raises(childproc.ChildFailed, match="ended without a result"):
        childproc.run(os._exit, 3, what="The training process")


def test_resume_continues_from_the_last_checkpoint(tiny_run, profile, gold):
    work, first = tiny_run
    out = work / "adapters" / "tiny"
    result = training.train(profile, gold[0][:16], None, out, resume=True, max_steps=3, progress=False)
    assert result.info["resumed_from"].endswith("checkpoint-2")
    assert result.info["global_step"] == 3
    assert [s for s, _ in result.info["losses"]][0] == 1  # the log history of the first run was restored


def test_mlflow_unreachable_only_warns(profile, gold, tmp_path):
    from helpers.serve import free_port

    tracker = tracking.Tracker(f"http://127.0.0.1:{free_port()}", experiment="x")
    with pytest.warns(tracking.TrackingWarning, match="Training continues without tracking"):
        result = training.train(profile, gold[0][:8], None, tmp_path / "a", tracker=tracker, max_steps=1,
                                progress=False)
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert not tracker.enabled and result.info.get("mlflow_run_id") is None


def test_adapter_for_another_base_model_is_refused(tmp_path, tiny_run, profile):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import MistralConfig, MistralForCausalLM

    from helpers import models

    torch.manual_seed(0)
    other = MistralForCausalLM(MistralConfig(vocab_size=512, hidden_size=128, intermediate_size=256,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                             head_dim=64))
    peft_model = get_peft_model(other, LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "other")
    with pytest.raises(adapters.AdapterError, match="does not match the base model"):
        adapters.check_shapes(tmp_path / "other", models.resolve(profile))
    with pytest.raises(adapters.AdapterError, match="not a LoRA adapter"):
        adapters.lora_request("x", tmp_path, profile)
    assert adapters.check_shapes(tiny_run[1].adapter_dir, models.resolve(profile))["r"] == 16


def test_rank_above_vllm_limit_is_refused(profile):
    import dataclasses

    big = dataclasses.replace(profile, lora=dataclasses.replace(profile.lora, r=64))
    with pytest.raises(ValueError, match="max_lora_rank"):
        training.lora_config(big)


def test_saved_adapter_loads_in_vllm_with_lorarequest(tiny_run, profile, gold):
    from helpers import inference

    _, result = tiny_run
    request = adapters.lora_request("tiny", result.adapter_dir, profile)
    llm = inference.make_llm(profile, enable_lora=True)
    try:
        batch = diagnose.eval_prompts(llm, gold[1][:2])
        params = inference.sampling_params(profile, max_tokens=8)
        base = inference.generate(llm, batch, params, progress=False)
        tuned = inference.generate(llm, batch, params, lora_request=request, progress=False)
    finally:
        inference.shutdown(llm)
    assert all(g.adapter == "tiny" and g.output_tokens > 0 for g in tuned)
    assert all(g.adapter is None for g in base)


# --------------------------------------------------------------------------- mlflow server
def test_mlflow_server_on_loopback(tiny_run):
    work, result = tiny_run
    server = tracking.MLflowServer(work)
    try:
        server.start(timeout=180)
        assert server.running and tracking.reachable(server.url)
        table = tracking.runs_table(server.url, "test")
        assert result.info["mlflow_run_id"][:8] in set(table["run_id"])
    finally:
        server.stop()
    assert not server.running and not tracking.reachable(server.url, timeout=1)


def test_mlflow_server_port_busy(tmp_path):
    import socket

    from helpers.serve import PortBusyError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        with pytest.raises(PortBusyError, match="already in use"):
            tracking.MLflowServer(tmp_path, port=sock.getsockname()[1]).start()


# --------------------------------------------------------------------------- notebooks 03/05/05.1/05.3 in the course run
@pytest.mark.course
def test_notebook_05_3_measures_the_pad_token_lesson(course_run):
    run_dir, _, proc = course_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run_dir / "metrics" / "05.3.json").read_text())
    # diagnose flags the buggy setup and passes the fixed one
    assert m["diagnose_buggy_ok"] is False and m["diagnose_fixed_ok"] is True
    assert m["eos_label_share_buggy"] == 0.0 and m["eos_label_share_fixed"] == 1.0
    # and the behaviour follows: only the fixed adapter stops, and its answers are shorter
    assert m["stop_rate_fixed"] >= 0.9 and m["stop_rate_buggy"] <= 0.2 and m["stop_rate_base"] <= 0.2
    assert m["mean_tokens_fixed"] < m["mean_tokens_buggy"]
    adapters = run_dir / "adapters"
    assert (adapters / "fixed" / "adapter_config.json").exists() and (adapters / "padbug" / "adapter_config.json").exists()


@pytest.mark.course
def test_notebook_05_1_logged_runs_in_the_run_folder(course_run):
    run_dir, _, proc = course_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run_dir / "metrics" / "05.1.json").read_text())
    assert m["runs_logged"] >= 2 and m["runs_via_server"] == m["runs_logged"] and m["server_stopped"] is True
    assert (run_dir / "mlflow" / "mlflow.db").exists()
    assert list((run_dir / "mlflow" / "artifacts").rglob("adapter_model.safetensors"))


def test_gold_training_records_carry_no_planted_personal_data(tmp_path):
    from helpers import pii

    train, evaluation = training.training_records(tmp_path)
    planted = [p["value"] for p in pii.load_planted() if len(p["value"]) >= 6]
    text = " ".join(r["question"] + r["answer"] + r["context"] for r in train)
    assert [v for v in planted if v in text] == []
    assert "[NAME]" in text or "[TELEFON]" in text or "[E-MAIL]" in text   # scrubbed, not dropped


def test_context_target_quotes_the_context_for_answerable_gold_records_only():
    """Kurs-Mini cannot paraphrase: on `answer_target: context` an answerable gold or generated record teaches its
    context; refusals and records without a source are left as they are, and an unknown target is an error."""
    recs = [{"id": "a", "source": "gold", "type": "factual", "question": "Q?", "context": "Kontext A.", "answer": "Ref."},
            {"id": "b", "source": "gold", "type": "unanswerable", "question": "Q?", "context": "Kontext B.",
             "answer": prompts.REFUSAL},
            {"id": "c", "source": "generated", "type": "factual", "question": "Q?", "context": "Kontext C.",
             "answer": "Gen."},
            {"id": "d", "type": "factual", "question": "Q?", "context": "Kontext D.", "answer": "Eigene."}]
    out = training.answer_targets(recs, "context")
    assert [r["answer"] for r in out] == ["Kontext A.", prompts.REFUSAL, "Kontext C.", "Eigene."]
    assert out[0]["reference_answer"] == "Ref." and "reference_answer" not in out[1]
    assert training.answer_targets(out, "context") == out          # applying it again changes nothing
    assert training.answer_targets(recs, "reference") == recs
    with pytest.raises(ValueError, match="reference or context"):
        training.answer_targets(recs, "summary")
    assert load_profile("mini").train.answer_target == "context"
    assert load_profile("l4").train.answer_target == "reference"


def test_an_unknown_answer_target_in_a_profile_is_refused():
    import dataclasses

    with pytest.raises(ProfileError, match="answer_target"):
        dataclasses.replace(load_profile("mini").train, answer_target="summary")


def test_max_epochs_caps_the_steps_of_a_small_data_set(tmp_path, gold, capsys):
    import dataclasses

    mini = load_profile("mini")
    assert mini.train.max_epochs and mini.train.steps_for(26) < mini.train.max_steps    # 07's generated pairs
    assert mini.train.steps_for(204) == mini.train.max_steps                             # gold: not capped
    cfg = dataclasses.replace(mini.train, max_epochs=1, batch_size=4, max_steps=50, logging_steps=1)
    result = training.train(dataclasses.replace(mini, train=cfg), gold[0][:6], None, tmp_path / "a", progress=False)
    assert result.info["global_step"] == result.info["max_steps"] == 2                   # 6 examples / 4 = 2 steps
    assert "2 steps instead of 50" in capsys.readouterr().out


def test_nf4_matmuls_run_in_bfloat16_only_on_a_cpu_that_has_it(monkeypatch):
    import dataclasses

    amx = "processor : 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
    avx512 = "processor : 0\nflags\t\t: fpu avx2 avx512f avx512bw\n"
    assert training.cpu_has_native_bf16(amx) and not training.cpu_has_native_bf16(avx512)
    assert training.cpu_has_native_bf16("flags : sse avx512_bf16") and not training.cpu_has_native_bf16("")
    mini = load_profile("mini")
    assert mini.train.compute_dtype == "bfloat16-if-native" and mini.train_dtype == "float32"
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda cpuinfo=None: True)
    assert training.compute_dtype(mini) == "bfloat16"
    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda cpuinfo=None: False)
    assert training.compute_dtype(mini) == "float32"              # emulated bfloat16 would be slower
    plain = dataclasses.replace(mini, train=dataclasses.replace(mini.train, compute_dtype=None))
    assert training.compute_dtype(plain) == "float32"
    assert training.compute_dtype(load_profile("l4")) == "bfloat16"   # GPU profiles: their train dtype
    with pytest.raises(ProfileError, match="compute_dtype"):
        dataclasses.replace(mini.train, compute_dtype="int4")
