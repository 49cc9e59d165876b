"""Baselines route by their one criterion, inside the hard filters, blind to the SLA."""

from routing.engine import BASELINES, STRATEGIES, Profile, Request, get_strategy, route
from tests.engine.mini_world import make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}


def snap():
    return make_snapshot(
        make_backend("paris-busy", slots=10, in_flight=9),
        make_backend(
            "virginia-cheap", "virginia", profile=Profile(80.0, 1000, 10_000.0, 100.0, 0.1, 0.1)
        ),
        make_backend("tokyo-fast", "tokyo", profile=Profile(20.0, 1000, 50_000.0, 100.0, 3.0, 3.0)),
    )


def test_the_registry_names_every_strategy():
    assert set(STRATEGIES) == {"deadline", "seed", *BASELINES}
    assert set(BASELINES) == {
        "nearest",
        "round_robin",
        "least_loaded",
        "lowest_latency",
        "cheapest",
    }


def test_nearest_takes_the_lowest_rtt():
    assert route(snap(), Request(**BASE), "nearest").primary.backend_id == "paris-busy"


def test_least_loaded_takes_the_emptiest_backend_per_slot():
    assert route(snap(), Request(**BASE), "least_loaded").primary.backend_id == "tokyo-fast"


def test_lowest_latency_takes_the_lowest_observed_ttft_whatever_the_distance():
    assert route(snap(), Request(**BASE), "lowest_latency").primary.backend_id == "tokyo-fast"


def test_cheapest_takes_the_lowest_blended_price():
    assert route(snap(), Request(**BASE), "cheapest").primary.backend_id == "virginia-cheap"


def test_round_robin_rotates_over_the_allowed_backends():
    rr = get_strategy("round_robin")
    s = snap()
    picks = [route(s, Request(**BASE), rr).primary.backend_id for _ in range(6)]
    assert picks[:3] == ["paris-busy", "tokyo-fast", "virginia-cheap"]
    assert picks[3:] == picks[:3]


def test_baselines_ignore_the_sla_and_say_so_in_the_plan():
    plan = route(snap(), Request(**BASE, max_ttft_ms=50), "nearest")
    assert plan.status == "ok"
    assert plan.primary.meets_sla is False


def test_an_unknown_strategy_name_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("fastest-please")
