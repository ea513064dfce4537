"""The A/B router: sticky weighted assignment (pure), config validation, the preflight against a real vLLM's
model list, and `python -m helpers route` in front of the session's real `vllm serve` (tests/conftest.py
`lora_server`: Kurs-Mini + random adapters "a" and "b", --max-loras 2)."""

import json
from collections import Counter
from pathlib import Path

import httpx
import pytest

from helpers import abmanifests, router, sequential


def _cfg(upstream="http://127.0.0.1:9", arms=(("v1", "a", 50), ("v2", "b", 50)), **kw):
    return router.ABConfig(experiment=kw.pop("experiment", "exp-1"), virtual_model="faq", upstream=upstream,
                           arms=tuple(router.Arm(*a) for a in arms), **kw)


# --------------------------------------------------------------------------- assignment (pure)
def test_assignment_is_sticky_and_follows_the_weights():
    users = [f"user-{i}" for i in range(10_000)]
    w = {"v1": 90, "v2": 10}
    first = [router.assign("exp-1", u, w) for u in users]
    assert first == [router.assign("exp-1", u, w) for u in users]        # same user, same arm, every time
    share = Counter(first)["v2"] / len(users)
    # binomial 99 % interval around 0.10 for n = 10 000: 0.10 +- 2.576 * 0.003
    assert abs(share - 0.10) < 2.576 * (0.1 * 0.9 / len(users)) ** 0.5
    assert set(router.assign("exp-1", u, {"v1": 0, "v2": 7}) for u in users[:500]) == {"v2"}
    # another experiment id reshuffles users independently
    other = [router.assign("exp-2", u, {"v1": 50, "v2": 50}) for u in users]
    same_exp = [router.assign("exp-1", u, {"v1": 50, "v2": 50}) for u in users]
    assert 0.4 < sum(a == b for a, b in zip(other, same_exp)) / len(users) < 0.6


def test_raising_v2s_weight_moves_users_only_from_v1_to_v2():
    users = [f"u{i}" for i in range(20_000)]
    ramp = [{"v1": 99, "v2": 1}, {"v1": 9, "v2": 1}, {"v1": 1, "v2": 1}, {"v1": 30, "v2": 70}, {"v1": 0, "v2": 5}]
    before = [router.assign("exp-1", u, ramp[0]) for u in users]
    for weights in ramp[1:]:
        after = [router.assign("exp-1", u, weights) for u in users]
        moves = Counter((a, b) for a, b in zip(before, after) if a != b)
        assert set(moves) <= {("v1", "v2")}, moves
        assert moves[("v1", "v2")] > 0
        before = after


def test_config_validation_names_the_problem(tmp_path):
    with pytest.raises(router.RouterConfigError, match="sum to 0"):
        router.validate(_cfg(arms=(("v1", "a", 0), ("v2", "b", 0))))
    with pytest.raises(router.RouterConfigError, match="integer >= 0"):
        router.validate(_cfg(arms=(("v1", "a", -1), ("v2", "b", 5))))
    with pytest.raises(router.RouterConfigError, match="adapters used twice"):
        router.validate(_cfg(arms=(("v1", "a", 1), ("v2", "a", 1))))
    with pytest.raises(router.RouterConfigError, match="Unknown arm 'v3'"):
        _cfg().with_weights({"v3": 100})
    cfg = _cfg()
    path = router.write_config(cfg, tmp_path / "ab.yaml")
    assert router.load_config(path) == cfg
    promoted = cfg.with_weights({"v1": 0, "v2": 100})
    assert promoted.config_version == 2 and promoted.weights == {"v1": 0, "v2": 100}
    (tmp_path / "bad.yaml").write_text("experiment: x\narms: []\n")
    with pytest.raises(router.RouterConfigError):
        router.load_config(tmp_path / "bad.yaml")


# --------------------------------------------------------------------------- preflight on a real server
def _served(server):
    return httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]


def test_preflight_refuses_what_would_break_the_test(lora_server, tmp_path):
    served = _served(lora_server)
    ok = router.preflight(_cfg(lora_server.url), served, max_loras=2, max_lora_rank=16, ledger=tmp_path / "names.json")
    assert set(ok["adapters"]) == {"a", "b"} and ok["adapters"]["a"]["rank"] == 8
    with pytest.raises(router.PreflightError, match="max_loras=1"):
        router.preflight(_cfg(lora_server.url), served, max_loras=1, max_lora_rank=16)
    with pytest.raises(router.PreflightError, match="does not serve adapter 'faq-v9'"):
        router.preflight(_cfg(lora_server.url, arms=(("v1", "a", 1), ("v2", "faq-v9", 1))), served, 2, 16)
    with pytest.raises(router.PreflightError, match="rank 8 > max_lora_rank 4"):
        router.preflight(_cfg(lora_server.url), served, max_loras=2, max_lora_rank=4)
    # the ledger remembers which weights each name had; 'a' now naming b's weights is a reused name
    ledger = json.loads((tmp_path / "names.json").read_text())
    ledger["a"], ledger["b"] = ledger["b"], ledger["a"]
    (tmp_path / "names.json").write_text(json.dumps(ledger))
    with pytest.raises(router.PreflightError, match="used for other weights"):
        router.preflight(_cfg(lora_server.url), served, 2, 16, ledger=tmp_path / "names.json")


def test_preflight_live_reads_max_loras_from_the_server_after_warmup(lora_server, tmp_path):
    res = router.preflight_live(_cfg(lora_server.url, max_loras=None, max_lora_rank=16))
    assert res["max_loras"] == lora_server.profile.vllm.max_loras == 2


# --------------------------------------------------------------------------- the router process
def _ask(r, user=None, request_id=None):
    headers = {"content-type": "application/json"}
    if user:
        headers["x-user-id"] = user
    if request_id:
        headers["x-request-id"] = request_id
    body = {"model": "faq", "messages": [{"role": "user", "content": "Wie erreiche ich den Service Desk?"}],
            "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{r.url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def _metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_router_sends_every_request_to_its_assigned_adapter_sticky_logged_and_counted(lora_server, tmp_path):
    cfg_path = router.write_config(_cfg(lora_server.url, experiment="t-route"), tmp_path / "ab.yaml")
    with router.RouterServer(cfg_path, ledger=tmp_path / "names.json") as r:
        users = [f"user-{i}" for i in range(24)]
        responses = [(u, _ask(r, u)) for _ in range(2) for u in users]
        responses += [(None, _ask(r, request_id=f"req-{i}")) for i in range(6)]
        assert all(resp.status_code == 200 for _, resp in responses), [x.text for _, x in responses][:3]
        # 100 % of responses name the adapter of the arm they were assigned to
        adapter = {"v1": "a", "v2": "b"}
        assert all(resp.json()["model"] == adapter[resp.headers["x-ab-arm"]] for _, resp in responses)
        by_user = {}
        for u, resp in responses:
            if u:
                by_user.setdefault(u, set()).add(resp.headers["x-ab-arm"])
        assert all(len(arms) == 1 for arms in by_user.values())
        assert {u: arms.pop() for u, arms in by_user.items()} == {u: router.assign("t-route", u, {"v1": 50, "v2": 50})
                                                                 for u in users}
        log = [x for x in router.read_log(tmp_path / "assignments.jsonl") if "event" not in x]
        assert len(log) == len(responses)
        assert all(x["response_model"] == x["adapter"] and x["config_version"] == 1 for x in log)
        assert Counter(x["unit"] for x in log) == {"user": 48, "request_id": 6}
        assert {x["request_id"] for x in log if x["unit"] == "request_id"} == {f"req-{i}" for i in range(6)}
        assert all(len(x["user_hash"]) == 16 and "user-" not in x["user_hash"] for x in log)
        metrics = httpx.get(f"{r.url}/metrics").text
        counts = Counter(x["arm"] for x in log)
        for arm in ("v1", "v2"):
            assert _metric(metrics, "ab_router_requests_total", arm=arm, status="ok") == counts[arm]
            assert _metric(metrics, "ab_router_request_latency_seconds_count", arm=arm) == counts[arm]
        assert set(router.METRIC_NAMES) - {"ab_router_guardrail_trips_total"} <= {
            line.split("{")[0] for line in metrics.splitlines() if not line.startswith("#")}
        state = r.state()
        assert state["counts"] == dict(counts) and state["srm"]["alarm"] is False
        # a model other than the virtual one is refused, not passed to some adapter
        wrong = httpx.post(f"{r.url}/v1/chat/completions", json={"model": "a", "messages": []}, timeout=30)
        assert wrong.status_code == 404 and "faq" in wrong.json()["error"]["message"]
        # promotion-style weight change: re-read on change, new version logged, every user on v2
        router.write_config(router.load_config(cfg_path).with_weights({"v1": 0, "v2": 100}), cfg_path)
        after = [_ask(r, u) for u in users[:8]]
        assert {x.headers["x-ab-arm"] for x in after} == {"v2"} and {x.json()["model"] for x in after} == {"b"}
        assert {x.headers["x-ab-config-version"] for x in after} == {"2"}


def test_a_missing_adapter_is_refused_at_start_and_a_crashed_arm_errors_then_trips_its_guardrail(lora_server, tmp_path):
    cfg = _cfg(lora_server.url, arms=(("v1", "a", 50), ("v2", "faq-v2-gone", 50)), experiment="t-crash",
               guardrails=router.Guardrails(max_error_rate=0.2, window=20, min_requests=5))
    cfg_path = router.write_config(cfg, tmp_path / "ab.yaml")
    with pytest.raises(router.PreflightError, match="faq-v2-gone"):
        router.preflight_live(cfg)
    with pytest.raises(Exception, match="faq-v2-gone"):   # the CLI refuses to start (exit code 2)
        router.RouterServer(cfg_path, port=None).start(timeout=60)
    # started without preflight (the adapter vanished after the start): errors, never another adapter
    with router.RouterServer(cfg_path, preflight=False) as r:
        results = [_ask(r, f"crash-user-{i}") for i in range(40)]
        for resp in results:
            if resp.status_code == 200:
                assert resp.json()["model"] == "a" and resp.headers["x-ab-adapter"] == "a"
            else:
                assert resp.headers["x-ab-arm"] == "v2" and "faq-v2-gone" in resp.json()["error"]["message"]
        log = router.read_log(tmp_path / "assignments.jsonl")
        errors = [x for x in log if x.get("status") == "error"]
        assert len(errors) == 5 and all(x["arm"] == "v2" for x in errors)     # tripped after min_requests
        trips = [x for x in log if x.get("event") == "guardrail"]
        assert len(trips) == 1 and trips[0]["arm"] == "v2" and trips[0]["weights"] == {"v1": 50, "v2": 0}
        assert all(x["arm"] == "v1" for x in log if "event" not in x and x["ts"] > trips[0]["ts"])
        assert r.state()["effective_weights"] == {"v1": 50, "v2": 0}
        metrics = httpx.get(f"{r.url}/metrics").text
        assert _metric(metrics, "ab_router_arm_weight", arm="v2") == 0
        # every ab_router_* name the Grafana A/B dashboard queries is exported by the live router
        exposed = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if not line.startswith("#")}
        assert abmanifests.dashboard_metric_names() - exposed == set()
        assert all(x["response_model"] in (None, x["adapter"]) for x in log if "event" not in x)


def test_a_p95_latency_breach_trips_the_arm_and_with_no_arm_left_the_router_refuses_clearly(lora_server, tmp_path):
    """Real latencies through the real vLLM, a limit no CPU request can meet: each arm trips on p95 once it has
    min_requests answers; then no arm has weight and the router says so instead of picking one."""
    cfg = _cfg(lora_server.url, experiment="t-p95",
               guardrails=router.Guardrails(max_p95_latency_s=0.0001, window=10, min_requests=3))
    cfg_path = router.write_config(cfg, tmp_path / "ab.yaml")
    with router.RouterServer(cfg_path) as r:
        results = [_ask(r, f"p95-user-{i}") for i in range(16)]
        log = router.read_log(tmp_path / "assignments.jsonl")
        trips = [x for x in log if x.get("event") == "guardrail"]
        assert sorted(x["arm"] for x in trips) == ["v1", "v2"]
        assert all("p95 latency" in x["reason"] for x in trips)
        served = [x for x in log if "event" not in x and x.get("status") == "ok"]
        assert Counter(x["arm"] for x in served) == {"v1": 3, "v2": 3}     # each arm tripped at min_requests
        refused = [resp for resp in results if resp.status_code == 503]
        assert refused and len(refused) == len(results) - 6
        assert all("No arm" in resp.json()["error"]["message"] for resp in refused)
        metrics = httpx.get(f"{r.url}/metrics").text
        assert _metric(metrics, "ab_router_guardrail_trips_total", arm="v1", reason="latency") == 1
        assert r.state()["effective_weights"] == {"v1": 0, "v2": 0}
