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
        "fastest_feasible",
        "nearest_feasible",
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


SLOW = Profile(105.0, 1000, 2_000.0, 20.0, 1.0, 2.0)
FAST = Profile(20.0, 1000, 50_000.0, 100.0, 1.0, 2.0)


def test_nearest_breaks_a_tie_at_a_shared_site_by_predicted_speed_not_by_id():
    s = make_snapshot(make_backend("paris-a-slow", profile=SLOW), make_backend("paris-b-fast"))
    assert route(s, Request(**BASE), "nearest").primary.backend_id == "paris-b-fast"


def test_fastest_feasible_takes_the_earliest_predicted_finish_queue_included():
    # paris is nearest but its queue makes it finish after frankfurt.
    s = make_snapshot(
        make_backend("paris-queued", slots=2, in_flight=2, queued=1),
        make_backend("frankfurt-free", "frankfurt"),
        make_backend("virginia-free", "virginia"),
    )
    req = Request(**BASE, max_ttft_ms=1000)
    assert route(s, req, "fastest_feasible").primary.backend_id == "frankfurt-free"


def test_nearest_feasible_takes_the_nearest_backend_that_meets_the_deadline():
    # paris misses the 200 ms deadline on its queue; frankfurt is the nearest that meets
    # it (virginia's faster chip finishes first, which fastest_feasible takes).
    s = make_snapshot(
        make_backend("paris-queued", slots=2, in_flight=2, queued=1),
        make_backend("virginia-fast", "virginia", profile=FAST),
        make_backend("frankfurt-free", "frankfurt"),
    )
    req = Request(**BASE, max_ttft_ms=200)
    assert route(s, req, "nearest_feasible").primary.backend_id == "frankfurt-free"
    assert route(s, req, "fastest_feasible").primary.backend_id == "virginia-fast"
    loose = Request(**BASE, max_ttft_ms=10_000)
    assert route(s, loose, "nearest_feasible").primary.backend_id == "paris-queued"


def test_the_feasible_baselines_see_only_candidates_predicted_to_meet_the_sla():
    s = make_snapshot(make_backend("paris-queued", slots=2, in_flight=2, queued=1))
    req = Request(**BASE, max_ttft_ms=50)
    for name in ("fastest_feasible", "nearest_feasible"):
        plan = route(s, req, name)
        assert plan.primary is None or plan.primary.meets_sla is False
        assert plan.status != "ok"
