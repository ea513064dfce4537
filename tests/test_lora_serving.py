"""LoRA serving with real vLLM: offline LoRARequests (one and two adapters mixed in one batch), the CPU
base-request workaround, a real server queried by adapter name, and the bad-input errors."""

import gc
import socket

import pytest

from helpers import adapters, inference, loadtest, prompts, serve, servermetrics, split
from helpers.profiles import load_profile

N = 4
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: adapters.random_adapter(root / name, r=8, seed=i) for i, name in enumerate(("a", "b"), 1)}


@pytest.fixture(scope="module")
def conversations():
    return [prompts.qa_messages(r["question"], r["context"]) for r in split.gold_splits()["eval"][:N]]


@pytest.fixture(scope="module")
def plain_base(conversations):
    """Greedy answers of the base model from a plain engine (no LoRA at all): the reference."""
    profile = load_profile("mini")
    llm = inference.make_llm(profile)
    try:
        gens = inference.generate(llm, inference.chat_prompts(llm, conversations),
                                  inference.sampling_params(profile, max_tokens=MAX_TOKENS), progress=False)
        return [g.text for g in gens]
    finally:
        inference.shutdown(llm)
        del llm
        gc.collect()


@pytest.fixture(scope="module")
def engine(plain_base, adapter_dirs, conversations):
    profile = load_profile("mini")
    llm, aset = adapters.make_lora_llm(profile, adapter_dirs)
    yield llm, aset, inference.chat_prompts(llm, conversations), inference.sampling_params(profile,
                                                                                           max_tokens=MAX_TOKENS)
    inference.shutdown(llm)
    del llm
    gc.collect()


def _texts(engine, names):
    llm, aset, batch, params = engine
    return [g.text for g in adapters.generate_mixed(llm, aset, batch[:len(names)], names, params, progress=False)]


def test_one_adapter_changes_the_answers(engine, plain_base):
    only_a = _texts(engine, ["a"] * N)
    assert only_a != plain_base


def test_two_adapters_mixed_in_one_batch_match_their_single_adapter_runs(engine):
    only_a, only_b = _texts(engine, ["a"] * N), _texts(engine, ["b"] * N)
    assert only_a != only_b
    mixed = _texts(engine, ["a", "b", "b", "a"])
    assert mixed == [only_a[0], only_b[1], only_b[2], only_a[3]]


def test_base_requests_mixed_with_adapters_get_the_true_base_answers(engine, plain_base):
    mixed = _texts(engine, ["base", "a", None, "b"])
    assert mixed[0] == plain_base[0] and mixed[2] == plain_base[2]
    assert mixed[1] == _texts(engine, ["a"] * N)[1]


def test_the_cpu_lora_bug_the_workaround_exists_for(engine, plain_base, adapter_dirs):
    """vLLM's PyTorch LoRA ops (CPU) index adapter weights with -1 for base tokens: base requests next to
    adapter requests get the last slot's adapter. If this starts failing, vLLM fixed it upstream (PR
    #48421) and adapters.needs_base_adapter turns the workaround off by itself."""
    assert adapters.base_requests_leak() is True
    assert adapters.needs_base_adapter(load_profile("mini")) is True
    llm, _, batch, params = engine
    naive = adapters.AdapterSet(adapter_dirs)  # base requests without LoRARequest, as on a GPU
    gens = adapters.generate_mixed(llm, naive, batch, [None, "a", "b", None], params, progress=False)
    assert [gens[0].text, gens[3].text] != [plain_base[0], plain_base[3]]
    guarded = adapters.AdapterSet(adapter_dirs, base_leaks=True)
    with pytest.raises(adapters.AdapterError, match="would silently get an adapter's weights"):
        guarded.request(None)


def test_unknown_adapter_name_lists_the_known_ones(engine):
    llm, aset, batch, params = engine
    with pytest.raises(adapters.AdapterError, match="Unknown adapter 'c'. Known adapters: a, b"):
        adapters.generate_mixed(llm, aset, batch[:2], ["a", "c"], params, progress=False)


# --------------------------------------------------------------------------- bad adapters (no engine)
def test_rank_above_max_lora_rank_is_refused_before_the_engine_starts(tmp_path):
    big = adapters.random_adapter(tmp_path / "r32", r=32)
    with pytest.raises(adapters.AdapterError, match=r"rank 32, but profile 'mini' serves LoRA up to "
                                                    r"max_lora_rank=16.*vLLM accepts 32"):
        adapters.check_adapter("big", big, load_profile("mini"))
    with pytest.raises(adapters.AdapterError, match="rank 32"):
        adapters.make_lora_llm(load_profile("mini"), {"big": big})


def test_adapter_of_another_base_model_is_named(tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    other = tmp_path / "other-model"
    cfg = MistralConfig(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=64)
    torch.manual_seed(0)
    MistralForCausalLM(cfg).save_pretrained(other)
    foreign = adapters.random_adapter(tmp_path / "foreign", model_dir=str(other), r=8)
    with pytest.raises(ValueError, match="does not match the base model(.|\n)*trained on '.*other-model'"):
        adapters.check_adapter("foreign", foreign, load_profile("mini"))


def test_not_an_adapter_and_reserved_names(tmp_path):
    with pytest.raises(adapters.AdapterError, match="has no adapter_config.json"):
        adapters.check_adapter("x", tmp_path, load_profile("mini"))
    with pytest.raises(adapters.AdapterError, match="'base' is reserved"):
        adapters.check_all({"base": tmp_path}, load_profile("mini"))


def test_lora_server_reports_a_busy_port_before_starting(adapter_dirs, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        server = serve.lora_server(load_profile("mini"), adapter_dirs, port=sock.getsockname()[1], log_path=tmp_path / "l")
        with pytest.raises(serve.PortBusyError, match="already in use"):
            server.start()
        assert server.process is None


# --------------------------------------------------------------------------- the real server
def test_server_answers_by_adapter_name_through_the_openai_client(lora_server, conversations):
    assert set(lora_server.adapters) >= {"a", "b"}
    served = {m.id for m in lora_server.client().models.list().data}
    assert served >= {"kurs-mini", "a", "b"}
    answers = {m: serve.ask(lora_server, conversations[0], model=m, max_tokens=MAX_TOKENS) for m in ("a", "b")}
    assert answers["a"]["model"] == "a" and answers["b"]["model"] == "b"
    assert answers["a"]["text"] != answers["b"]["text"]
    with pytest.raises(Exception, match="does not exist"):  # vLLM's own 404 for an unknown name
        serve.ask(lora_server, conversations[0], model="nope", max_tokens=2)


def test_bounded_load_test_and_per_adapter_metrics(lora_server, conversations):
    records = loadtest.run(lora_server, conversations, models=["a", "b"], n_requests=6, concurrency=3,
                           max_tokens=MAX_TOKENS, progress=False)
    assert all(r["ok"] for r in records), [r["error"] for r in records]
    assert all(r["ttft_s"] is not None and 0 < r["ttft_s"] <= r["latency_s"] for r in records)
    rows = {r["model"]: r for r in loadtest.summarize(records)}
    assert rows["a"]["requests"] == 3 and rows["b"]["requests"] == 3
    assert rows["(alle)"]["latency_p50_s"] <= rows["(alle)"]["latency_p95_s"]
    metrics = servermetrics.parse_metrics(lora_server.metrics_text())
    info = servermetrics.lora_info(metrics)
    assert {"a", "b"} <= set(info["adapter"])
    assert info["max_loras"].iloc[0] == str(load_profile("mini").vllm.max_loras)
    assert servermetrics.metric_total(metrics, "vllm:request_success", "_total") >= 6
    per_model = servermetrics.per_model(metrics)
    assert list(per_model["model_name"]) == ["kurs-mini"]  # vLLM labels requests by base model only
