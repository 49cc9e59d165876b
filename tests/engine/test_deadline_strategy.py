"""`deadline` (the default): the nearest backend that meets the deadline, within a
decode band of the quickest, until it is nearly full, then the least loaded one that
meets it with margin (a request none meets with margin stays); no deadline: the
earliest finish; cost when asked."""

import pytest

from routing.engine import (
    FINISH_BAND_SHARE,
    HOLD_CAP_MS,
    HOLD_LOOSE,
    HOLD_STEP_MS,
    LATE_REACH_MIN_MS,
    LATE_REACH_SHARE,
    SAFETY_SHARE,
    SPREAD_WHEN_FREE,
    LatencyMap,
    Profile,
    Request,
    Snapshot,
    route,
)
from tests.engine.mini_world import PROFILE, make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}
PRICEY = Profile(105.0, 1000, 10_000.0, 100.0, 5.0, 5.0)


def decoding_at(tokens_per_s: float) -> Profile:
    """The mini world's profile with another decode speed."""
    return Profile(105.0, 1000, 10_000.0, tokens_per_s, 1.0, 2.0)


def test_deadline_is_the_default_strategy():
    assert route(make_snapshot(make_backend("a")), Request(**BASE)).strategy == "deadline"


def test_it_picks_the_nearest_backend_that_meets_the_deadline():
    snap = make_snapshot(make_backend("far", "virginia"), make_backend("near"))
    assert route(snap, Request(**BASE, max_ttft_ms=1000)).primary.backend_id == "near"


def test_the_nearest_keeps_the_request_while_more_than_a_tenth_of_its_slots_are_free():
    # paris 89% busy (11 slots free), frankfurt idle and 10 ms away: both meet 200 ms
    # with margin, so the nearer wins. Second-old load counters must not move requests
    # while there is room (every gateway would move them at once).
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=89),
        make_backend("frankfurt", "frankfurt", slots=100),
    )
    assert pytest.approx(0.1) == SPREAD_WHEN_FREE
    assert route(snap, Request(**BASE, max_ttft_ms=200)).primary.backend_id == "paris"


def test_a_nearly_full_nearest_backend_sends_the_request_to_the_least_loaded_in_time():
    # paris has 10 of 100 slots free: the request spreads. frankfurt (60 busy) and
    # virginia (30 busy) both meet 1 s with margin; the less loaded wins, not the
    # nearer, and paris comes last of the three.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=90),
        make_backend("frankfurt", "frankfurt", slots=100, in_flight=60),
        make_backend("virginia", "virginia", slots=100, in_flight=30),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=1000), max_fallbacks=2)
    assert [c.backend_id for c in plan.choices] == ["virginia", "frankfurt", "paris"]


def test_spreading_prefers_a_backend_with_margin_to_a_less_loaded_one_on_the_edge():
    # paris is nearly full; virginia is idle but its 185 ms TTFT (80 + 105) leaves less
    # than SAFETY_SHARE (40%) of the 195 ms deadline unused; frankfurt (busier, 115 ms)
    # keeps its margin and wins.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=95),
        make_backend("frankfurt", "frankfurt", slots=100, in_flight=50),
        make_backend("virginia", "virginia", slots=100),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=195), max_fallbacks=2)
    by_id = {c.backend_id: c for c in plan.choices}
    assert by_id["virginia"].prediction.ttft_ms > (1 - SAFETY_SHARE) * 195
    assert plan.primary.backend_id == "frankfurt"


def test_a_request_no_backend_meets_with_margin_stays_on_a_nearly_full_nearest_backend():
    # paris is nearly full; frankfurt is idle and 10 ms farther. Neither meets the 140 ms
    # deadline with SAFETY_SHARE of it unused: the request would gamble on the scatter
    # wherever it went, and the nearer one leaves it the most room.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=95),
        make_backend("frankfurt", "frankfurt", slots=100),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=140), max_fallbacks=1)
    assert all(c.prediction.ttft_ms > (1 - SAFETY_SHARE) * 140 for c in plan.choices)
    assert all(c.meets_sla for c in plan.choices)
    assert [c.backend_id for c in plan.choices] == ["paris", "frankfurt"]


def test_a_queue_that_would_miss_the_deadline_sends_the_request_farther():
    # paris: 4 requests ahead of 2 slots, ~410 ms of queue; frankfurt meets 200 ms.
    snap = make_snapshot(
        make_backend("paris-busy", slots=2, in_flight=2, queued=3, max_queue=8),
        make_backend("frankfurt-idle", "frankfurt"),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=200))
    assert plan.primary.backend_id == "frankfurt-idle"
    assert plan.reason_for("paris-busy").code == "sla_ttft"


def test_a_backend_that_would_stream_much_more_slowly_is_passed_over_while_another_is_in_time():
    # 100 output tokens: paris decodes at 20 tok/s (5 s), frankfurt at 100 (1 s). Both
    # meet the 300 ms TTFT deadline; paris is 4 s slower, past half of it: out of band.
    snap = make_snapshot(
        make_backend("paris-slow", profile=decoding_at(20.0)),
        make_backend("frankfurt", "frankfurt"),
    )
    req = Request(**{**BASE, "max_output_tokens": 100}, max_ttft_ms=300)
    assert route(snap, req).primary.backend_id == "frankfurt"


def test_a_backend_that_slowed_five_times_loses_a_short_answer_it_would_still_serve_in_time():
    # The resource map's case: 12 tokens, a 300 ms TTFT deadline, the nearest backend's
    # observed decode fell to a fifth of its profile's.
    snap = make_snapshot(
        make_backend("paris", observed_decode_tokens_per_s=PROFILE.decode_tokens_per_s / 5),
        make_backend("frankfurt", "frankfurt"),
    )
    req = Request(**{**BASE, "max_output_tokens": 12}, max_ttft_ms=300)
    assert route(snap, req).primary.backend_id == "frankfurt"


def test_inside_the_band_the_nearer_backend_wins_though_it_finishes_later():
    # paris decodes 10 tokens in 125 ms, frankfurt in 100 ms: 25 ms apart, inside half
    # of a 200 ms deadline. paris finishes 15 ms later and still wins: it is nearer.
    snap = make_snapshot(
        make_backend("paris", profile=decoding_at(80.0)),
        make_backend("frankfurt", "frankfurt"),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=200))
    assert plan.primary.backend_id == "paris"
    assert plan.primary.prediction.total_ms > plan.fallbacks[0].prediction.total_ms


def test_the_band_is_half_of_the_request_s_own_deadline():
    # 100 tokens: paris 1,250 ms of decode, frankfurt 1,000 ms: 250 ms apart.
    snap = make_snapshot(
        make_backend("paris", profile=decoding_at(80.0)),
        make_backend("frankfurt", "frankfurt"),
    )
    req = {**BASE, "max_output_tokens": 100}
    assert pytest.approx(0.5) == FINISH_BAND_SHARE
    assert route(snap, Request(**req, max_ttft_ms=500)).primary.backend_id == "paris"
    assert route(snap, Request(**req, max_ttft_ms=490)).primary.backend_id == "frankfurt"


def test_without_a_deadline_the_earliest_finish_wins_and_ten_ms_more_network_beats_a_queue():
    snap = make_snapshot(
        make_backend("paris-busy", slots=2, in_flight=2, queued=2, max_queue=8),
        make_backend("frankfurt-idle", "frankfurt"),
    )
    plan = route(snap, Request(**BASE))
    assert plan.primary.backend_id == "frankfurt-idle"
    assert plan.fallbacks[0].backend_id == "paris-busy"


def test_without_a_deadline_a_tie_goes_to_the_less_loaded_then_the_cheaper_backend():
    snap = make_snapshot(make_backend("a-pricey", profile=PRICEY), make_backend("b-cheap"))
    assert route(snap, Request(**BASE)).primary.backend_id == "b-cheap"
    snap = make_snapshot(make_backend("a", in_flight=5), make_backend("b", in_flight=1))
    assert route(snap, Request(**BASE)).primary.backend_id == "b"


def test_at_one_site_the_earlier_finish_wins_then_the_less_loaded():
    snap = make_snapshot(
        make_backend("a-slower", profile=decoding_at(90.0)),
        make_backend("b-busy", in_flight=5),
        make_backend("c-idle"),
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=200), max_fallbacks=2)
    assert [c.backend_id for c in plan.choices] == ["c-idle", "b-busy", "a-slower"]


def test_a_session_stays_on_the_backend_holding_its_prompt_at_a_shared_site():
    snap = make_snapshot(make_backend("a"), make_backend("b"))
    req = Request(**BASE, max_ttft_ms=1000, affinity_backend_id="b", cached_prefix_tokens=500)
    assert route(snap, req).primary.backend_id == "b"


def test_prefer_cost_takes_the_cheapest_backend_that_meets_the_sla_with_margin():
    # 320 ms: virginia (185 ms) meets it with margin (40% of it is 128 ms), tokyo
    # (325 ms) not at all.
    snap = make_snapshot(
        make_backend("near-pricey", profile=PRICEY),
        make_backend("far-cheap", "virginia"),
        make_backend("farther-cheap", "tokyo"),
    )
    req = Request(**BASE, prefer_cost_over_latency=True, max_ttft_ms=320)
    plan = route(snap, req)
    assert plan.primary.backend_id == "far-cheap"
    assert [c.backend_id for c in plan.choices] == ["far-cheap", "near-pricey"]


def test_prefer_cost_does_not_take_a_cheap_backend_on_the_edge_of_the_deadline():
    # 200 ms: virginia's 185 ms is in time but leaves less than SAFETY_SHARE of it.
    snap = make_snapshot(
        make_backend("near-pricey", profile=PRICEY),
        make_backend("far-cheap", "virginia"),
    )
    req = Request(**BASE, prefer_cost_over_latency=True, max_ttft_ms=200)
    plan = route(snap, req)
    assert plan.fallbacks[0].prediction.ttft_ms > (1 - SAFETY_SHARE) * 200
    assert [c.backend_id for c in plan.choices] == ["near-pricey", "far-cheap"]


def test_a_nearer_backend_on_the_edge_of_the_deadline_loses_to_one_with_margin():
    # 130 ms: paris (~106 ms) is in time with 18% to spare, a queue-free frankfurt
    # backend with a faster prefill answers in ~75 ms; margin first, then distance.
    fast_prefill = Profile(65.0, 1000, 20_000.0, 100.0, 1.0, 2.0)
    snap = make_snapshot(
        make_backend("paris"), make_backend("frankfurt", "frankfurt", profile=fast_prefill)
    )
    plan = route(snap, Request(**BASE, max_ttft_ms=130))
    assert plan.primary.backend_id == "frankfurt"
    assert plan.fallbacks[0].backend_id == "paris"
    assert plan.fallbacks[0].meets_sla


def test_spreading_passes_over_an_idle_backend_that_would_stream_much_more_slowly():
    # paris is nearly full. frankfurt is idle but its decode slowed to a fifth (100
    # tokens: 5 s against 1 s), out of the band; virginia, busier, decodes at full
    # speed and meets 1 s with margin: the spread goes there, not to the slowed one.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=95),
        make_backend("frankfurt", "frankfurt", slots=100, profile=decoding_at(20.0)),
        make_backend("virginia", "virginia", slots=100, in_flight=50),
    )
    req = Request(**{**BASE, "max_output_tokens": 100}, max_ttft_ms=1000)
    assert route(snap, req).primary.backend_id == "virginia"


def test_without_a_deadline_prefer_cost_still_takes_the_cheapest_backend():
    snap = make_snapshot(
        make_backend("near-pricey", profile=PRICEY), make_backend("far-cheap", "virginia")
    )
    req = Request(**BASE, prefer_cost_over_latency=True)
    assert route(snap, req).primary.backend_id == "far-cheap"


def test_margin_counts_on_both_deadlines_when_both_are_set():
    # TTFT 320 ms: paris (106) and virginia (185) both keep 40% of it. End-to-end
    # 400 ms: paris (206: 106 + 10 tokens at 10 ms) keeps 40%, virginia (285) does not.
    # Nearly full, paris still wins the spread: virginia, idle, lacks the margin.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=95),
        make_backend("virginia", "virginia", slots=100),
    )
    req = Request(**BASE, max_ttft_ms=320, max_latency_ms=400)
    plan = route(snap, req)
    assert plan.primary.backend_id == "paris"
    assert plan.fallbacks[0].prediction.total_ms > (1 - SAFETY_SHARE) * 400
    assert plan.fallbacks[0].prediction.ttft_ms <= (1 - SAFETY_SHARE) * 320


def test_a_late_request_does_not_cross_an_ocean_for_a_backend_with_room():
    # Nothing meets 100 ms (paris: 106). The request accepts a late answer. Paris is
    # nearly full and Virginia idle, but 80 ms away: out of a late request's reach
    # (LATE_REACH_SHARE of Paris's 106 ms), and its first token would come later.
    # Paris serves it.
    snap = make_snapshot(
        make_backend("paris", slots=100, in_flight=95),
        make_backend("virginia", "virginia", slots=100),
    )
    late = route(snap, Request(**BASE, max_ttft_ms=100, allow_relaxed_deadline=True))
    assert late.status == "degraded"
    assert late.primary.backend_id == "paris"


def test_a_late_request_takes_the_earliest_first_token_among_backends_as_near():
    # Two Paris backends, neither meets 50 ms. One prefills twice as fast but decodes
    # slowly: it finishes later, and answers first. The answer is late anyway: the
    # earlier first token is the smaller lateness.
    quick_start = Profile(55.0, 1000, 20_000.0, 20.0, 1.0, 2.0)
    snap = make_snapshot(make_backend("steady"), make_backend("quick-start", profile=quick_start))
    late = route(snap, Request(**BASE, max_ttft_ms=50, allow_relaxed_deadline=True))
    assert late.status == "degraded"
    assert late.primary.backend_id == "quick-start"
    assert late.primary.prediction.total_ms > late.fallbacks[0].prediction.total_ms


def test_a_late_request_leaves_a_nearly_full_backend_for_one_as_near_with_room():
    # The quicker Paris backend has a tenth of its slots free (SPREAD_WHEN_FREE): the
    # late request goes to the other one, which has room, rather than take the last
    # slots from requests still in time.
    quick_start = Profile(55.0, 1000, 20_000.0, 100.0, 1.0, 2.0)
    snap = make_snapshot(
        make_backend("quick-start", profile=quick_start, slots=100, in_flight=90),
        make_backend("steady", slots=100),
    )
    late = route(snap, Request(**BASE, max_ttft_ms=50, allow_relaxed_deadline=True))
    assert late.primary.backend_id == "steady"


def test_a_late_request_reaches_a_little_farther_than_the_nearest_for_a_quicker_backend():
    # The client is 5 ms from its Paris backend and 10 ms from Frankfurt's: within the
    # nearest's round trip plus LATE_REACH_SHARE of the first token predicted there
    # (about 115 ms). Frankfurt prefills twice as fast and answers first; 80 ms away in
    # Virginia an idle one as quick does not.
    quick_start = Profile(55.0, 1000, 20_000.0, 100.0, 1.0, 2.0)
    assert 10.0 <= 5.0 + LATE_REACH_SHARE * 115.0 < 80.0
    latency = LatencyMap(
        rtt={("paris", "frankfurt"): 10.0, ("paris", "virginia"): 80.0},
        intra_region_ms=5.0,
    )
    snap = Snapshot(
        [
            make_backend("paris"),
            make_backend("frankfurt", "frankfurt", profile=quick_start),
            make_backend("virginia", "virginia", profile=quick_start),
        ],
        latency,
        1,
    )
    late = route(snap, Request(**BASE, max_ttft_ms=50, allow_relaxed_deadline=True))
    assert late.primary.backend_id == "frankfurt"


def test_a_late_request_with_a_long_first_token_crosses_to_a_neighbour_that_answers_sooner():
    # A big model prefills slowly in Paris (about 1 s to the first token) and twice as
    # fast in Virginia, 80 ms away. Nothing meets 200 ms. The request's own wait is
    # what sets its reach (LATE_REACH_SHARE of the first token predicted at the
    # nearest), so it crosses: its first token comes some 400 ms sooner.
    slow = Profile(1000.0, 1000, 1_000.0, 100.0, 1.0, 2.0)
    quick = Profile(500.0, 1000, 2_000.0, 100.0, 1.0, 2.0)
    assert 1.0 + LATE_REACH_SHARE * 1000.0 > 80.0
    snap = make_snapshot(
        make_backend("paris", profile=slow), make_backend("virginia", "virginia", profile=quick)
    )
    late = route(snap, Request(**BASE, max_ttft_ms=200, allow_relaxed_deadline=True))
    assert late.status == "degraded"
    assert late.primary.backend_id == "virginia"


def test_a_late_request_with_a_short_first_token_stays_by_the_nearest():
    # A small model answers in about 40 ms in Paris; 10 ms away in Frankfurt a backend
    # prefills three times as fast. The request asked for 20 ms, which nothing meets.
    # Frankfurt's first token would come sooner, but 10 ms is beyond this request's
    # reach (LATE_REACH_MIN_MS, more than a share of its 40 ms): it stays, and leaves
    # Frankfurt's quick slots to the requests still in time there.
    small = Profile(40.0, 1000, 25_000.0, 100.0, 1.0, 2.0)
    quicker = Profile(12.0, 1000, 100_000.0, 100.0, 1.0, 2.0)
    assert 1.0 + max(LATE_REACH_MIN_MS, LATE_REACH_SHARE * 41.0) < 10.0
    snap = make_snapshot(
        make_backend("paris", profile=small),
        make_backend("frankfurt", "frankfurt", profile=quicker),
    )
    late = route(snap, Request(**BASE, max_ttft_ms=20, allow_relaxed_deadline=True))
    assert late.status == "degraded"
    assert late.primary.backend_id == "paris"
    assert late.fallbacks[0].prediction.ttft_ms < late.primary.prediction.ttft_ms


def test_a_late_request_that_prefers_cost_goes_to_the_nearest_not_the_cheapest():
    # Nothing meets 100 ms. The cheap backend is far; the request would wait there
    # with every other late cost-preferring request. Late, it is served as any late
    # request: by the nearest.
    snap = make_snapshot(
        make_backend("near-pricey", profile=PRICEY),
        make_backend("far-cheap", "virginia"),
    )
    req = Request(
        **BASE, prefer_cost_over_latency=True, max_ttft_ms=100, allow_relaxed_deadline=True
    )
    late = route(snap, req)
    assert late.status == "degraded"
    assert late.primary.backend_id == "near-pricey"


# --------------------------------------------------------------------------- holding
# paris alone, 95 of 100 slots busy (nearly full), predicted TTFT 106 ms from a Paris
# client: a deadline of at least HOLD_LOOSE × 106 + HOLD_STEP_MS (449 ms) is loose.


def _nearly_full_paris(*others):
    return make_snapshot(make_backend("paris", slots=100, in_flight=95), *others)


def test_a_loose_request_is_held_rather_than_sent_to_a_nearly_full_backend():
    plan = route(_nearly_full_paris(), Request(**BASE, max_ttft_ms=1000))
    assert plan.hold_ms == HOLD_STEP_MS
    assert plan.primary.backend_id == "paris"  # where it goes if the gateway cannot hold
    assert plan.to_dict()["hold_ms"] == HOLD_STEP_MS


def test_a_tight_request_goes_at_once_to_the_nearly_full_backend():
    plan = route(_nearly_full_paris(), Request(**BASE, max_ttft_ms=300))
    assert plan.primary.prediction.ttft_ms * HOLD_LOOSE + HOLD_STEP_MS > 300
    assert plan.hold_ms == 0.0


def test_a_loose_request_that_can_spread_to_a_backend_with_room_is_not_held():
    plan = route(_nearly_full_paris(make_backend("frankfurt", "frankfurt", slots=100)),
                 Request(**BASE, max_ttft_ms=1000))  # fmt: skip
    assert plan.primary.backend_id == "frankfurt"
    assert plan.hold_ms == 0.0


def test_a_loose_request_is_not_held_while_its_backend_has_room():
    snap = make_snapshot(make_backend("paris", slots=100, in_flight=80))
    assert route(snap, Request(**BASE, max_ttft_ms=1000)).hold_ms == 0.0


def test_holding_spends_the_deadline_until_what_is_left_is_no_longer_loose():
    loose = Request(**BASE, max_ttft_ms=1000)
    assert route(_nearly_full_paris(), loose.held_for(500)).hold_ms == HOLD_STEP_MS  # 500 left
    assert route(_nearly_full_paris(), loose.held_for(600)).hold_ms == 0.0  # 400 left


def test_a_request_without_a_deadline_is_held_at_most_the_cap_in_all():
    free = Request(**BASE)
    assert route(_nearly_full_paris(), free).hold_ms == HOLD_STEP_MS
    at_cap = HOLD_CAP_MS - HOLD_STEP_MS
    assert route(_nearly_full_paris(), free.held_for(at_cap)).hold_ms == HOLD_STEP_MS
    assert route(_nearly_full_paris(), free.held_for(at_cap + 1)).hold_ms == 0.0


def test_a_late_request_is_never_held():
    # Nothing meets 100 ms: the answer is late already, and waiting makes it later.
    late = route(_nearly_full_paris(),
                 Request(**BASE, max_ttft_ms=100, allow_relaxed_deadline=True))  # fmt: skip
    assert late.status == "degraded"
    assert late.hold_ms == 0.0


def test_the_baselines_never_hold():
    for name in ("fastest_feasible", "nearest_feasible", "nearest", "least_loaded"):
        assert route(_nearly_full_paris(), Request(**BASE, max_ttft_ms=1000), name).hold_ms == 0


def test_a_held_request_counts_its_deadlines_from_its_arrival():
    r = Request(**BASE, max_ttft_ms=1000, max_latency_ms=3000).held_for(100).held_for(50)
    assert (r.max_ttft_ms, r.max_latency_ms, r.held_ms) == (850, 2850, 150)
    assert Request(**BASE).held_for(100).first_deadline_ms is None
