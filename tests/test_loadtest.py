import numpy as np
import pytest

from helpers import loadtest, serve
from helpers.profiles import load_profile


def _rec(model, latency, ok=True, tokens=10, ttft=None, wall=10.0):
    return {"model": model, "ok": ok, "latency_s": latency, "ttft_s": ttft, "completion_tokens": tokens,
            "finish_reason": "stop" if ok else None, "error": None if ok else "boom", "wall_s": wall}


def test_percentiles_are_computed_from_recorded_values_not_bucket_edges():
    latencies = list(np.arange(1, 101) / 10)  # 0.1 s ... 10.0 s
    p = loadtest.percentiles(latencies)
    assert p["p50"] == pytest.approx(5.05)
    assert p["p95"] == pytest.approx(9.505)
    assert p["p99"] == pytest.approx(9.901)
    # vLLM's e2e histogram has an edge at 10 s: reading p95/p99 off the bucket edge would say 10.0
    assert p["p95"] != 10.0 and p["p99"] != 10.0
    assert loadtest.percentiles([None, None]) == {"p50": None, "p90": None, "p95": None, "p99": None}


def test_summary_per_adapter_counts_errors_and_excludes_them_from_latency():
    records = ([_rec("fixed", x) for x in (1.0, 2.0, 3.0)] + [_rec("padbug", 5.0, ttft=0.5)]
               + [_rec("padbug", 99.0, ok=False, tokens=0)])
    rows = {r["model"]: r for r in loadtest.summarize(records)}
    assert rows["(alle)"]["requests"] == 5 and rows["(alle)"]["errors"] == 1
    assert rows["fixed"]["latency_p50_s"] == pytest.approx(2.0)
    assert rows["padbug"]["latency_p99_s"] == pytest.approx(5.0)  # the failed 99 s request is not a latency
    assert rows["padbug"]["ttft_p50_s"] == pytest.approx(0.5)
    assert rows["fixed"]["ttft_p50_s"] is None
    assert rows["(alle)"]["tokens_per_s"] == pytest.approx(40 / 10.0)


def test_load_test_is_bounded_and_checks_names_before_sending(tmp_path):
    server = serve.VLLMServer(load_profile("mini"), adapters={"fixed": str(tmp_path)}, log_path=tmp_path / "log")
    conv = [[{"role": "user", "content": "Hallo"}]]
    with pytest.raises(loadtest.LoadTestError, match="n_requests must be between 1 and"):
        loadtest.run(server, conv, n_requests=loadtest.MAX_REQUESTS + 1)
    with pytest.raises(loadtest.LoadTestError, match="concurrency must be between 1 and"):
        loadtest.run(server, conv, concurrency=0)
    with pytest.raises(loadtest.LoadTestError, match="Unknown model/adapter name.*fixd.*serves kurs-mini, fixed"):
        loadtest.run(server, conv, models=["fixd"])


def test_failed_requests_are_recorded_not_retried_or_raised(tmp_path):
    """A server that is not there (connection refused on a free port): every request is recorded as failed."""
    server = serve.VLLMServer(load_profile("mini"), port=serve.free_port(), log_path=tmp_path / "log")
    records = loadtest.run(server, [[{"role": "user", "content": "Hallo"}]], n_requests=3, concurrency=2,
                           timeout=5, progress=False)
    assert len(records) == 3 and not any(r["ok"] for r in records)
    assert all("Connection" in r["error"] for r in records)
    assert loadtest.summarize(records)[0]["errors"] == 3


def _hist(counts):
    return {"vllm:e2e_request_latency_seconds": [
        {"sample": "vllm:e2e_request_latency_seconds_bucket", "labels": {"le": le, "model_name": "m"}, "value": c}
        for le, c in counts]}


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus():
    m = _hist([("1.0", 0), ("2.0", 10), ("5.0", 20), ("+Inf", 20)])
    assert loadtest.histogram_quantile(m, "vllm:e2e_request_latency_seconds", 0.5)["estimate"] == pytest.approx(2.0)
    est = loadtest.histogram_quantile(m, "vllm:e2e_request_latency_seconds", 0.75)
    assert est == {"estimate": pytest.approx(3.5), "bucket_low": 2.0, "bucket_high": 5.0}
    # the slowest requests beyond the last finite edge: Prometheus can only say "the last edge"
    tail = _hist([("1.0", 0), ("5.0", 18), ("+Inf", 20)])
    assert loadtest.histogram_quantile(tail, "vllm:e2e_request_latency_seconds", 0.99)["estimate"] == 5.0
    # with 20 recorded latencies, 2 of them 60 s, the true p99 is far above that edge
    recorded = [_rec("m", 3.0)] * 18 + [_rec("m", 60.0)] * 2
    table = loadtest.bucket_comparison(recorded, tail, qs=(0.99,))
    assert table.iloc[0, 1] == pytest.approx(60.0) and table.iloc[0, 2] == 5.0
    assert loadtest.histogram_quantile({}, "vllm:e2e_request_latency_seconds", 0.5)["estimate"] is None
