"""bench-gpu bookkeeping that needs no GPU: merging re-measured parts and the verdicts in docs/benchmarks.md."""

import pytest

from helpers import bench_gpu

ENV = {"gpu": "NVIDIA H100 80GB HBM3", "vllm": "0.26.0"}


def results(**parts):
    return {"environment": dict(ENV), "prompt_tokens": 512, "output_tokens": 256, "prompts": 256,
            "measured_at": {}, **parts}


def generation_parts(step_tps, raw_tps):
    step = {"requests": 256, "output_tokens": 25600, "seconds": 25600 / step_tps, "tokens_per_s": step_tps,
            "valid_records": 250, "rejects": 6, "min_tokens": 40, "max_tokens": 130, "build_seconds": 0.05}
    raw = {"requests": 256, "output_tokens": 25600, "seconds": 25600 / raw_tps, "tokens_per_s": raw_tps}
    return {"generation_step": step, "generation_raw": raw, "generation_ratio": round(step_tps / raw_tps, 3)}


def test_merge_keeps_earlier_parts_and_replaces_re_measured_ones():
    base = results(eager={"startup_s": 16.0}, qlora={"peak_memory_gb": 9.5}, generation_variants=[{"label": "x"}])
    base["measured_at"] = {"eager": "2026-11-24", "qlora": "2026-11-24"}
    new = results(qlora={"peak_memory_gb": 8.4})
    new["measured_at"] = {"qlora": "2026-11-25T15:00"}
    merged = bench_gpu.merge(base, new)
    assert merged["eager"] == {"startup_s": 16.0} and merged["qlora"] == {"peak_memory_gb": 8.4}
    assert merged["generation_variants"] == [{"label": "x"}]
    assert merged["measured_at"] == {"eager": "2026-11-24", "qlora": "2026-11-25T15:00"}


def test_merge_refuses_results_from_another_machine_or_shape():
    other = results()
    other["environment"]["gpu"] = "NVIDIA L4"
    with pytest.raises(ValueError, match="different environments"):
        bench_gpu.merge(results(), other)
    with pytest.raises(ValueError, match="prompts"):
        bench_gpu.merge(results(), {**results(), "prompts": 64})


@pytest.mark.parametrize("step_tps, verdict", [(9500.0, "erreicht"), (8000.0, "verfehlt")])
def test_generation_verdict_follows_the_measured_ratio(tmp_path, step_tps, verdict):
    out = bench_gpu.write_markdown(results(**generation_parts(step_tps, 10000.0)), tmp_path / "b.md", plot=False)
    text = out.read_text(encoding="utf-8")
    assert f"erreicht {step_tps / 10000:.0%} des rohen vLLM-Durchsatzes" in text
    assert f"(Ziel ≥ 90%: {verdict})" in text
    assert "40–130 Tokens" in text  # unequal lengths: the tail comparison is explained


def test_qlora_verdicts_check_memory_and_speed_separately(tmp_path):
    q = {"steps": 32, "batch": "4 x 1024", "peak_memory_gb": 9.4, "tokens_per_s": 4000.0, "seconds": 30.0,
         "train_tokens_per_example": 1024.0, "trainable_parameters": 41943040}
    text = bench_gpu.write_markdown(results(qlora=q), tmp_path / "b.md", plot=False).read_text(encoding="utf-8")
    assert "Ziel ≤ 9.0 GB: verfehlt" in text and "Ziel ≥ 3258 Tokens/s (die rohe" in text
    assert text.count(": erreicht.") == 1
    assert "Noch nicht auf der GPU gemessen: generation" in text


def test_committed_benchmarks_render_from_their_json(tmp_path):
    """docs/benchmarks.md is generated from docs/benchmarks-gpu.json, never edited by hand."""
    from helpers import io

    data = io.read_json(bench_gpu.RESULTS)
    rendered = bench_gpu.write_markdown(data, tmp_path / "benchmarks.md", plot=False).read_text(encoding="utf-8")
    committed = (bench_gpu.RESULTS.parent / "benchmarks.md").read_text(encoding="utf-8")
    assert rendered.replace("![Durchsatz](benchmarks.png)\n", "").rstrip() == \
        committed.replace("![Durchsatz](benchmarks.png)\n", "").rstrip()
    for part in ("generation", "qlora", "eager", "graphs", "lora"):
        assert part in data["measured_at"]


def test_qlora_records_fill_the_length_the_train_step_encodes():
    # bench_qlora's batch 4 x N means N real tokens per example: each stretched record fits N, almost exactly
    from helpers import chunking, labels
    from helpers.profiles import load_profile

    tok = chunking.get_tokenizer(load_profile("mini"))
    records = bench_gpu.long_records(3, max_tokens=256, tokenizer=tok)
    lengths = [labels.encode(tok, r, 256)["length"] for r in records]
    assert len({r["id"] for r in records}) == 3
    assert all(240 <= n <= 256 for n in lengths), lengths


def test_decode_reads_every_weight_of_mistral_7b_once():
    # Mistral-7B-v0.1 has 7,241,732,096 parameters (public); batch-1 decode reads all but the embedding table
    from helpers import bench_gpu_report as report

    assert report.decode_bytes_per_token(bench_gpu.MISTRAL_7B) == 2 * (7_241_732_096 - 32000 * 4096 + 4096)
    share = report.bandwidth_share(100.0, "NVIDIA H200", bench_gpu.MISTRAL_7B)
    assert share["limit_tokens_per_s"] == round(4.8e12 / report.decode_bytes_per_token(bench_gpu.MISTRAL_7B), 1)
    assert share["share"] == round(100.0 / share["limit_tokens_per_s"], 3)
    assert report.bandwidth_share(100.0, "Some Future GPU", bench_gpu.MISTRAL_7B) is None


def test_decode_section_sets_the_measured_copy_bandwidth_beside_the_data_sheet():
    from helpers import bench_gpu_report as report

    per_token = report.decode_bytes_per_token(bench_gpu.MISTRAL_7B)
    results = {"environment": {"gpu": "NVIDIA H200"}, "prompt_tokens": 512,
               "graphs": {"batch_1": {"tokens_per_s": 200.0}}}
    plain = " ".join(report.decode_section(results))
    assert "Kopie" not in plain
    results["membw"] = {"tb_s": 4.0, "seconds": 1.0, "bytes_moved": 4 * 10 ** 12}
    text = " ".join(report.decode_section(results))
    limit = 4.0e12 / per_token
    assert f"{limit:.1f} Tokens/s" in text and f"{200.0 / limit:.0%}" in text and "83% des Datenblatts" in text


def test_generation_benchmark_carries_mistrals_own_tokenizer(tmp_path):
    # the 7B dummy of `bench-gpu generation` tokenizes as Mistral-7B-v0.1 does (32,000 pieces) and has the
    # course's [INST] template, so the grammar and the prompts see the vocabulary a workshop's model has
    from transformers import AutoTokenizer

    tok, folder = bench_gpu.generation_tokenizer(tmp_path, "mistral")
    assert len(tok) == 32000 and tok.eos_token == "</s>"
    model_dir = bench_gpu.make_model_dir(tmp_path / "dummy", tokenizer_dir=folder, vocab_size=len(tok))
    again = AutoTokenizer.from_pretrained(model_dir)
    text = "Wie beantrage ich Urlaub im Personalportal?"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert "[INST]" in again.apply_chat_template([{"role": "user", "content": text}], tokenize=False)
    with pytest.raises(ValueError, match="Unknown vocabulary"):
        bench_gpu.generation_tokenizer(tmp_path, "klingon")


def test_a_one_gpu_judge_on_a_larger_gpu_gets_its_cards_memory_and_no_more(tmp_path):
    from helpers.profiles import load_profile

    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)    # weights: 1,000 bytes
    l4 = load_profile("l4")                                      # 24 GB card, gpu_memory_utilization 0.90
    h200 = 150_000_000_000
    got = bench_gpu.card_settings(l4, tmp_path, h200)
    engine = 0.90 * 24e9
    assert got["gpu_memory_utilization"] == round(engine / h200, 4)
    assert got["kv_cache_memory_bytes"] == int(engine - 1000 - 2 * 2**30)
    assert bench_gpu.card_settings(l4, tmp_path, 24_000_000_000) == {}       # on its own card: vLLM measures
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "model.safetensors", "wb") as f:                        # sparse: 22 GB of weights
        f.truncate(22_000_000_000)
    with pytest.raises(ValueError, match="no KV cache"):
        bench_gpu.card_settings(l4, big, h200)


def test_judge_engines_render_with_judgments_per_second_and_memory_beside_the_card():
    from helpers import bench_gpu_report as report

    run = {"requests": 256, "output_tokens": 16384, "seconds": 8.0, "tokens_per_s": 2048.0}
    one = {"requests": 1, "output_tokens": 64, "seconds": 0.5, "tokens_per_s": 128.0}
    results = {"judge_t4": {"profile": "t4", "judge_model": "hugging-quants/x-AWQ", "batch": run, "single": one,
                            "judgments_per_s": 32.0, "memory_used_gb_per_gpu": [13.9], "card_gb": 16,
                            "startup_s": 60.0, "prompt_tokens": 600, "output_tokens": 64},
               "judge_70b": {"error": "needs 2 GPUs, found 1"}}
    text = "\n".join(report.judge_section(results))
    assert "| t4 | hugging-quants/x-AWQ | 32.0 | 128.0 | 13.9 | 16 | 60.0 |" in text
    assert "70b" not in text.split("|---|")[-1]            # an errored part gets no row
    assert "Prompts à 600 Tokens" in text and "64 Output-Tokens" in text
    assert report.judge_section({"judge_70b": {"error": "x"}}) == []
