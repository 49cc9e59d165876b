"""`deadline` (the default): finish first among SLA-feasible; ties, cost, priority."""

import pytest

from routing.engine import (
    RESERVE_BY_PRIORITY,
    TIE_MS,
    TIE_SHARE,
    TIE_SHARE_CONTENDED,
    Profile,
    Request,
    route,
    tie_band_ms,
)
from tests.engine.mini_world import make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}
PRICEY = Profile(105.0, 1000, 10_000.0, 100.0, 5.0, 5.0)


def test_deadline_is_the_default_strategy():
    assert route(make_snapshot(make_backend("a")), Request(**BASE)).strategy == "deadline"


def test_it_picks_the_backend_predicted_to_finish_first():
    snap = make_snapshot(make_backend("near"), make_backend("far", "virginia"))
    assert route(snap, Request(**BASE)).primary.backend_id == "near"


def test_ten_ms_more_network_beats_a_long_queue():
    snap = make_snapshot(
        make_backend("paris-busy", slots=2, in_flight=2, queued=2, max_queue=8),
        make_backend("frankfurt-idle", "frankfurt"),
    )
    plan = route(snap, Request(**BASE))
    assert plan.primary.backend_id == "frankfurt-idle"
    assert plan.fallbacks[0].backend_id == "paris-busy"


def test_a_tie_within_a_millisecond_goes_to_the_cheaper_backend():
    snap = make_snapshot(make_backend("a-pricey", profile=PRICEY), make_backend("b-cheap"))
    assert route(snap, Request(**BASE)).primary.backend_id == "b-cheap"


def test_at_equal_time_and_price_the_less_loaded_backend_wins():
    snap = make_snapshot(make_backend("a", in_flight=5), make_backend("b", in_flight=1))
    assert route(snap, Request(**BASE)).primary.backend_id == "b"


def test_prefer_cost_takes_the_cheapest_backend_that_meets_the_sla():
    snap = make_snapshot(
        make_backend("near-pricey", profile=PRICEY),
        make_backend("far-cheap", "virginia"),
        make_backend("farther-cheap", "tokyo"),
    )
    req = Request(**BASE, prefer_cost_over_latency=True, max_ttft_ms=200)
    plan = route(snap, req)
    assert plan.primary.backend_id == "far-cheap"
    assert [c.backend_id for c in plan.choices] == ["far-cheap", "near-pricey"]


def test_a_low_priority_request_leaves_the_last_fast_slots_to_others():
    # 15 of 100 slots free: priority 1 keeps 20% free, priority 5 only 2%.
    snap = make_snapshot(
        make_backend("fast-busy", slots=100, in_flight=85),
        make_backend("slower-free", "frankfurt", slots=100),
    )
    low = route(snap, Request(**BASE, priority=1))
    assert low.primary.backend_id == "slower-free"
    assert low.fallbacks[0].backend_id == "fast-busy"
    high = route(snap, Request(**BASE, priority=5))
    assert high.primary.backend_id == "fast-busy"


def test_a_low_priority_request_takes_a_reserved_slot_when_nothing_else_meets_its_deadline():
    snap = make_snapshot(
        make_backend("fast-busy", slots=100, in_flight=85),
        make_backend("slow-free", "virginia", slots=100),
    )
    plan = route(snap, Request(**BASE, priority=1, max_ttft_ms=150))
    assert plan.primary.backend_id == "fast-busy"


def test_the_reservation_is_explained():
    snap = make_snapshot(
        make_backend("fast-busy", slots=100, in_flight=85),
        make_backend("slower-free", "frankfurt", slots=100),
    )
    plan = route(snap, Request(**BASE, priority=1), max_fallbacks=0)
    reason = plan.reason_for("fast-busy")
    assert reason.code == "reserved"
    assert "priority > 1" in reason.detail


def test_reserves_shrink_as_priority_rises():
    shares = [RESERVE_BY_PRIORITY[p] for p in range(1, 6)]
    assert shares == sorted(shares, reverse=True)
    assert len(set(shares)) == 5


def test_on_an_idle_mesh_finishing_first_wins_over_load():
    # paris total 206 ms, virginia 285 ms; TTFT deadline 200 ms -> band 20 ms: paris,
    # though it is the busier of the two.
    snap = make_snapshot(make_backend("paris", in_flight=2), make_backend("virginia", "virginia"))
    req = Request(**BASE, priority=5, max_ttft_ms=200)
    assert tie_band_ms(req) == pytest.approx(20.0)
    assert route(snap, req).primary.backend_id == "paris"


def test_on_an_idle_mesh_a_near_tie_goes_to_the_less_loaded_backend():
    # frankfurt finishes 9 ms after paris: inside the 20 ms band, and idle.
    snap = make_snapshot(make_backend("paris", in_flight=2), make_backend("frankfurt", "frankfurt"))
    req = Request(**BASE, priority=5, max_ttft_ms=200)
    assert route(snap, req).primary.backend_id == "frankfurt"


def test_a_busy_fastest_backend_shares_requests_with_slack_with_a_less_loaded_one():
    # paris 80% busy: the band widens to 0.1 + 0.9·0.6 = 64% of 200 ms; frankfurt is 9 ms
    # slower, so it ties, and the less loaded one wins.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=80),
        make_backend("frankfurt", "frankfurt", slots=100),
    )
    req = Request(**BASE, priority=5, max_ttft_ms=200)
    assert tie_band_ms(req, busy=0.8) == pytest.approx(0.64 * 200)
    assert route(snap, req).primary.backend_id == "frankfurt"


def test_a_request_without_slack_still_gets_the_fastest_backend_when_it_is_busy():
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=80),
        make_backend("frankfurt", "frankfurt", slots=100),
    )
    plan = route(snap, Request(**BASE, priority=5, max_ttft_ms=110))
    assert plan.primary.backend_id == "paris"
    assert plan.reason_for("frankfurt").code == "sla_ttft"


def test_the_tie_band_grows_from_a_tenth_to_the_whole_deadline_as_the_fastest_fills():
    req = Request(**BASE, max_ttft_ms=100)
    assert tie_band_ms(req, busy=0.0) == pytest.approx(TIE_SHARE * 100)
    assert tie_band_ms(req, busy=0.5) == pytest.approx(TIE_SHARE * 100)
    assert tie_band_ms(req, busy=1.0) == pytest.approx(TIE_SHARE_CONTENDED * 100)
    assert tie_band_ms(Request(**BASE)) == TIE_MS


def test_only_a_candidate_with_margin_takes_a_request_from_the_fastest():
    # paris 80% busy: band 128 ms. frankfurt is idle and in the band, but its TTFT
    # (115 ms) leaves under 10% of a 120 ms deadline unused: paris keeps the request.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=80),
        make_backend("frankfurt", "frankfurt", slots=100),
    )
    assert route(snap, Request(**BASE, priority=5, max_ttft_ms=120)).primary.backend_id == "paris"
    assert route(snap, Request(**BASE, priority=5, max_ttft_ms=200)).primary.backend_id == (
        "frankfurt"
    )


def test_a_late_request_is_spread_away_from_the_fastest_backend():
    # Nothing meets 100 ms (paris: 106). The request accepts a late answer: it is
    # ranked as if contended (band = its whole deadline), so idle virginia, 79 ms
    # slower, ties with 40%-busy paris and wins on load.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=40),
        make_backend("virginia", "virginia", slots=100),
    )
    late = route(snap, Request(**BASE, max_ttft_ms=100, allow_relaxed_deadline=True, priority=5))
    assert late.status == "degraded"
    assert late.primary.backend_id == "virginia"
    # On time, paris is not contended (40% busy): band 20 ms, finishing first wins.
    on_time = route(snap, Request(**BASE, max_ttft_ms=200, priority=5))
    assert on_time.primary.backend_id == "paris"
