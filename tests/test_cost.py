import pytest

from helpers import cost


def test_break_even_is_where_costs_meet():
    inputs = cost.CostInputs()
    be = cost.break_even_requests(inputs)
    assert be is not None
    assert cost.api_cost(inputs, be) == pytest.approx(cost.selfhost_cost(inputs, be), rel=1e-9)
    assert cost.api_cost(inputs, be * 0.9) < cost.selfhost_cost(inputs, be * 0.9)
    assert cost.api_cost(inputs, be * 1.1) > cost.selfhost_cost(inputs, be * 1.1)


def test_on_demand_break_even_and_no_break_even_when_gpu_is_dearer_per_token():
    on_demand = cost.CostInputs(always_on=False)
    be = cost.break_even_requests(on_demand)
    assert cost.api_cost(on_demand, be) == pytest.approx(cost.selfhost_cost(on_demand, be), rel=1e-9)
    slow = cost.CostInputs(always_on=False, output_tokens_per_s=1.0)
    assert cost.break_even_requests(slow) is None


def test_api_cost_scales_linearly_with_tokens():
    inputs = cost.CostInputs(api_eur_per_m_input=1.0, api_eur_per_m_output=2.0, input_tokens_per_request=1000,
                             output_tokens_per_request=500)
    assert cost.api_cost(inputs, 1000) == pytest.approx(1.0 + 1.0)


def test_capacity_limits_break_even():
    tiny_gpu = cost.CostInputs(output_tokens_per_s=0.5, api_eur_per_m_output=0.01, api_eur_per_m_input=0.01)
    assert cost.break_even_requests(tiny_gpu) is None


def test_decision_matrix_weights_and_validation():
    table, share = cost.decision_matrix({k: 2 for k in cost.CRITERIA})
    assert share == 1.0 and cost.recommendation(share) == "Self-Hosting empfohlen"
    _, share0 = cost.decision_matrix({k: 0 for k in cost.CRITERIA})
    assert share0 == 0.0 and cost.recommendation(share0).startswith("API")
    with pytest.raises(ValueError, match="Unknown criteria"):
        cost.decision_matrix({"color": 1})
    with pytest.raises(ValueError, match="must be 0, 1 or 2"):
        cost.decision_matrix({"volume": 5})
    assert list(table["punkte"]) == [w * 2 for _, w in cost.CRITERIA.values()]


def test_sensitivity_shows_which_inputs_move_the_always_on_break_even():
    table = cost.sensitivity(cost.CostInputs()).set_index("eingabe")
    moves = table["bewegt_break_even"].to_dict()
    # always on: GPU hours are fixed, so throughput and utilisation cannot move the break-even
    assert moves["output_tokens_per_s"] is False and moves["utilization"] is False
    assert all(moves[k] for k in ("api_eur_per_m_input", "api_eur_per_m_output", "gpu_eur_per_hour",
                                  "ops_eur_per_month"))
    batch = cost.sensitivity(cost.CostInputs(always_on=False)).set_index("eingabe")["bewegt_break_even"]
    assert batch["output_tokens_per_s"] and batch["utilization"]


def test_default_throughput_is_the_committed_measurement():
    measured = cost.measured_throughput("batch")
    assert cost.CostInputs().output_tokens_per_s == measured["tokens_per_s"]
    assert measured["source"].startswith("docs/benchmarks-gpu.json")
    assert cost.measured_throughput("single")["tokens_per_s"] < measured["tokens_per_s"]
