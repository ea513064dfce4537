"""Promotion and rollback against a real MLflow registry (local sqlite store): alias and weights move
together, rollback restores registry and config exactly, both are idempotent."""

import pytest

from helpers import adapters, promotion, router, sequential, tracking


@pytest.fixture
def setup(tmp_path):
    uri = tracking.local_uri(tmp_path)
    dirs = {n: adapters.random_adapter(tmp_path / n, r=8, seed=i) for i, n in enumerate(("faq-v1", "faq-v2"), 1)}
    versions = {n: promotion.register_adapter(uri, "faq-adapter", d, n) for n, d in dirs.items()}
    cfg = router.ABConfig(experiment="faq-ab", virtual_model="faq", upstream="http://127.0.0.1:9",
                          arms=(router.Arm("v1", "faq-v1", 50), router.Arm("v2", "faq-v2", 50)), config_version=3)
    cfg_path = router.write_config(cfg, tmp_path / "ab.yaml")
    return uri, versions, cfg_path


def test_register_adapter_creates_versions_with_the_adapter_name_and_rank(setup):
    uri, versions, _ = setup
    assert versions == {"faq-v1": "1", "faq-v2": "2"}
    state = promotion.registry_state(uri, "faq-adapter")
    assert state["versions"]["2"]["adapter_name"] == "faq-v2" and state["versions"]["2"]["lora_rank"] == "8"
    assert promotion.champion(uri, "faq-adapter") is None


@pytest.mark.parametrize("had_champion", [True, False])
def test_promote_then_rollback_restores_registry_and_config_exactly_and_both_are_idempotent(setup, had_champion):
    uri, versions, cfg_path = setup
    client = promotion.registry_client(uri)
    if had_champion:
        client.set_registered_model_alias("faq-adapter", "champion", versions["faq-v1"])
        client.set_model_version_tag("faq-adapter", versions["faq-v2"], "ab_outcome", "earlier value")
    before_registry = promotion.registry_state(uri, "faq-adapter")
    before_config = cfg_path.read_bytes()
    decision = sequential.Decision(sequential.V2_WINS, 120, 61, 59, 0.1, 0.6, 0.5, 812.0, 0.0012, 3)

    res = promotion.promote(uri, "faq-adapter", versions["faq-v2"], cfg_path, "v2", decision.as_tags())
    assert res["changed"] and promotion.champion(uri, "faq-adapter") == versions["faq-v2"]
    cfg = router.load_config(cfg_path)
    assert cfg.weights == {"v1": 0, "v2": 100} and cfg.config_version == 4
    tags = promotion.registry_state(uri, "faq-adapter")["versions"]["2"]
    assert tags["ab_outcome"] == "v2 wins" and tags["ab_p_always_valid"] == "0.0012" and tags["ab_n"] == "120"
    promoted_registry, promoted_config = promotion.registry_state(uri, "faq-adapter"), cfg_path.read_bytes()

    again = promotion.promote(uri, "faq-adapter", versions["faq-v2"], cfg_path, "v2", decision.as_tags())
    assert again["changed"] is False
    assert promotion.registry_state(uri, "faq-adapter") == promoted_registry and cfg_path.read_bytes() == promoted_config

    assert promotion.rollback(uri, cfg_path)["changed"]
    assert promotion.registry_state(uri, "faq-adapter") == before_registry
    assert cfg_path.read_bytes() == before_config
    assert promotion.rollback(uri, cfg_path) == {"changed": False}
    assert promotion.registry_state(uri, "faq-adapter") == before_registry and cfg_path.read_bytes() == before_config


@pytest.mark.parametrize("outcome,drill_arm,arm,drill", [
    (sequential.V1_WINS, "v2", "v1", False),            # a decision wins over the drill arm
    (sequential.V2_WINS, None, "v2", False),
    (sequential.NO_DECISION, "v2", "v2", True),         # no decision: the same promotion, labelled as a drill
])
def test_an_outcome_promotes_its_winner_or_runs_a_labelled_drill_that_rolls_back_exactly(setup, outcome, drill_arm,
                                                                                         arm, drill):
    uri, versions, cfg_path = setup
    promotion.set_champion(uri, "faq-adapter", versions["faq-v1"])
    before = (promotion.registry_state(uri, "faq-adapter"), cfg_path.read_bytes())
    by_arm = {"v1": versions["faq-v1"], "v2": versions["faq-v2"]}

    res = promotion.apply_outcome(uri, "faq-adapter", by_arm, cfg_path, outcome, {"ab_n": 80}, drill_arm=drill_arm)
    assert res["changed"] and res["arm"] == arm and res["drill"] is drill
    assert promotion.champion(uri, "faq-adapter") == by_arm[arm]
    assert router.load_config(cfg_path).weights == {a: (100 if a == arm else 0) for a in ("v1", "v2")}
    tags = promotion.registry_state(uri, "faq-adapter")["versions"][by_arm[arm]]
    assert tags["decision"] == outcome and tags["drill"] == str(drill).lower() and tags["ab_n"] == "80"
    again = promotion.apply_outcome(uri, "faq-adapter", by_arm, cfg_path, outcome, {"ab_n": 80}, drill_arm=drill_arm)
    assert again["changed"] is False
    assert promotion.rollback(uri, cfg_path)["changed"]
    assert (promotion.registry_state(uri, "faq-adapter"), cfg_path.read_bytes()) == before


def test_no_decision_without_a_drill_changes_nothing_and_an_unregistered_arm_is_refused(setup):
    uri, versions, cfg_path = setup
    before = cfg_path.read_bytes()
    res = promotion.apply_outcome(uri, "faq-adapter", {"v1": versions["faq-v1"]}, cfg_path, sequential.NO_DECISION)
    assert res["changed"] is False and res["arm"] is None and "traffic unchanged" in res["reason"]
    with pytest.raises(promotion.PromotionError, match="register_adapter"):
        promotion.apply_outcome(uri, "faq-adapter", {"v1": versions["faq-v1"]}, cfg_path, sequential.V2_WINS)
    assert cfg_path.read_bytes() == before and promotion.champion(uri, "faq-adapter") is None


def test_promoting_an_unknown_arm_changes_nothing(setup):
    uri, versions, cfg_path = setup
    before = cfg_path.read_bytes()
    with pytest.raises(router.RouterConfigError, match="Unknown arm"):
        promotion.promote(uri, "faq-adapter", versions["faq-v2"], cfg_path, "v3", {})
    assert cfg_path.read_bytes() == before and promotion.champion(uri, "faq-adapter") is None
    assert not promotion.snapshot_path(cfg_path).exists()


def test_retire_unloads_the_loser_after_the_grace_period_and_rollback_serves_it_again(lora_server, tmp_path):
    import time

    from helpers import serve

    server, dirs = lora_server, lora_server.test_adapters      # the session's server: runtime loading on loopback
    uri = tracking.local_uri(tmp_path)
    versions = {n: promotion.register_adapter(uri, "faq-adapter", d, n) for n, d in dirs.items()}
    cfg = router.ABConfig(experiment="faq-ab", virtual_model="faq", upstream=server.url,
                          arms=(router.Arm("v1", "a", 50), router.Arm("v2", "b", 50)), config_version=1)
    cfg_path = router.write_config(cfg, tmp_path / "ab.yaml")
    before = cfg_path.read_bytes()
    with pytest.raises(promotion.PromotionError, match="follows `promote`"):
        promotion.retire(cfg_path)

    promotion.promote(uri, "faq-adapter", versions["b"], cfg_path, "v2")
    t0 = time.time()
    try:
        res = promotion.retire(cfg_path, grace_s=1.5)
        assert time.time() - t0 >= 1.0 and set(res["unloaded"]) == {"a"}
        assert "a" not in serve.served_adapters(server.base_url) and "b" in serve.served_adapters(server.base_url)
        resp = server.client(max_retries=0).completions.with_raw_response.create  # the retired name is gone
        with pytest.raises(Exception, match="'a'|404|does not exist"):
            resp(model="a", prompt="Frage", max_tokens=2)
        assert promotion.retire(cfg_path, grace_s=0)["unloaded"] == res["unloaded"]   # idempotent

        back = promotion.rollback(uri, cfg_path)
        assert back["reloaded"] == ["a"] and cfg_path.read_bytes() == before
    finally:   # the shared server serves "a" again whatever failed above
        if "a" not in serve.served_adapters(server.base_url):
            serve.lora_admin(server.base_url, "load", "a", str(dirs["a"]))
    assert set(serve.served_adapters(server.base_url)) >= {"a", "b"}
    out = server.client().completions.create(model="a", prompt="Frage", max_tokens=2)
    assert out.model == "a"


def test_runtime_adapter_loading_is_refused_off_loopback():
    from helpers import serve
    from helpers.profiles import load_profile

    server = serve.VLLMServer(load_profile("mini"), host="0.0.0.0", runtime_lora_updates=True)
    with pytest.raises(serve.ServerError, match="loopback only"):
        server.environment()
