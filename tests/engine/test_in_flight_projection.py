"""A gateway's count of a backend's requests between two reads of the live maps."""

import pytest

from routing.engine import Request, projected_in_flight, route

from .mini_world import make_backend, make_snapshot


def test_alone_a_gateway_counts_exactly_what_it_sent():
    assert projected_in_flight(10, 15, 10, gateways=1) == 15
    assert projected_in_flight(10, 7, 10, gateways=1) == 7


def test_a_gateway_holding_a_quarter_of_a_backend_counts_each_new_request_for_four():
    assert projected_in_flight(40, 12, 10, gateways=8) == pytest.approx(48)
    # and each of its own finishes for four of everyone's
    assert projected_in_flight(40, 9, 10, gateways=8) == pytest.approx(36)


def test_a_gateway_that_had_sent_nothing_takes_an_equal_share():
    assert projected_in_flight(0, 3, 0, gateways=10) == pytest.approx(30)
    assert projected_in_flight(20, 1, 0, gateways=4) == pytest.approx(24)


def test_with_nothing_sent_or_finished_since_the_read_the_larger_count_stands():
    assert projected_in_flight(12, 5, 5, gateways=30) == 12
    assert projected_in_flight(3, 5, 5, gateways=30) == 5


def test_the_projection_never_falls_below_what_the_gateway_itself_has_in_flight():
    # the map lags this process's own count (published every 0.25 s): share capped at 1
    assert projected_in_flight(5, 2, 10, gateways=4) == 2
    assert projected_in_flight(0, 4, 1, gateways=1) == 4


def test_after_claiming_its_share_of_an_idle_backend_a_gateway_routes_to_the_next():
    # Two Paris backends, 10 slots each, idle at the last read; 10 gateways share them.
    # Having sent one request to the faster one, this gateway counts it as ten: that
    # backend looks full to it, and the next request goes to the other one, which
    # still meets the deadline.
    fast = make_backend("fast", slots=10)
    other = make_backend("other", slots=10)
    snap = make_snapshot(fast, other)
    req = Request(model="m-70b", input_tokens=100, max_output_tokens=10, max_ttft_ms=2000,
                  client_region="paris")  # fmt: skip
    first = route(snap, req, "fastest_feasible").primary.backend_id
    second_id = "other" if first == "fast" else "fast"
    seen = projected_in_flight(0, 1, 0, gateways=10)
    loaded = snap.with_load({first: (seen, 0)})
    assert route(loaded, req, "fastest_feasible").primary.backend_id == second_id
    exact = snap.with_load({first: (1, 0)})  # counted as one, it would still be first
    assert route(exact, req, "fastest_feasible").primary.backend_id == first
