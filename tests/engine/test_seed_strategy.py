"""`seed`: the whitepaper's formula, against hand-computed values, quirks included."""

import pytest

from routing.engine import Health, Profile, Request, route
from tests.engine.mini_world import PROFILE, make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}
# For PROFILE and BASE: L_backend = prefill 105 + decode 100 = 205 ms;
# C_token = blended (1000·$1 + 10·$2) / 1010 tokens, per token.
L_BACKEND = 205.0
C_TOKEN = (1000 * 1.0 + 10 * 2.0) / 1010 / 1e6


def seed_score(plan, backend_id):
    for c in plan.choices:
        if c.backend_id == backend_id:
            return c.score
    raise AssertionError(f"{backend_id} not ranked")


def test_the_seed_score_matches_the_whitepaper_by_hand():
    snap = make_snapshot(make_backend("a", slots=10, in_flight=5))
    plan = route(snap, Request(**BASE, priority=2), "seed")
    # f_load = 1 + 50/100, f_cost = 1, f_priority = 1/2, f_health = 1
    assert seed_score(plan, "a") == pytest.approx(1.5 * 1.0 * 0.5 * 1.0 * L_BACKEND * C_TOKEN)


def test_a_queue_over_100_ms_switches_the_load_factor_to_q_over_10():
    snap = make_snapshot(make_backend("a", slots=1, in_flight=1, queued=1, max_queue=5))
    plan = route(snap, Request(**BASE, priority=1), "seed")
    q = 2 * 205 / 1  # two slot releases needed, 205 ms service, 1 slot
    assert plan.primary.prediction.queue_ms == pytest.approx(q)
    assert seed_score(plan, "a") == pytest.approx((1 + q / 10) * L_BACKEND * C_TOKEN)


def test_prefer_cost_multiplies_by_a_thousand_times_the_token_cost():
    snap = make_snapshot(make_backend("a"))
    plan = route(snap, Request(**BASE, priority=1, prefer_cost_over_latency=True), "seed")
    assert seed_score(plan, "a") == pytest.approx((1000 * C_TOKEN) * L_BACKEND * C_TOKEN)


def test_degraded_multiplies_the_score_by_one_and_a_half():
    snap = make_snapshot(make_backend("a", health=Health.DEGRADED))
    plan = route(snap, Request(**BASE, priority=1), "seed")
    assert seed_score(plan, "a") == pytest.approx(1.5 * L_BACKEND * C_TOKEN)


def test_quirk_a_zero_cost_backend_scores_zero_and_beats_a_much_faster_one():
    free = Profile(105.0, 1000, 1000.0, 10.0, 0.0, 0.0)  # 10x slower, free
    snap = make_snapshot(make_backend("fast"), make_backend("free-and-slow", profile=free))
    plan = route(snap, Request(**BASE), "seed")
    assert plan.primary.backend_id == "free-and-slow"
    assert plan.primary.score == 0.0


def test_quirk_priority_never_reorders_candidates_within_one_request():
    snap = make_snapshot(
        make_backend("a", in_flight=3),
        make_backend("b", "frankfurt", profile=Profile(105.0, 1000, 20_000.0, 200.0, 3.0, 3.0)),
        make_backend("c", "virginia", in_flight=9),
    )
    orders = {
        p: [c.backend_id for c in route(snap, Request(**BASE, priority=p), "seed").choices]
        for p in range(1, 6)
    }
    assert len({tuple(o) for o in orders.values()}) == 1


def test_quirk_the_seed_score_ignores_the_network():
    # Same backend profile in Paris and Tokyo for a Paris client: equal scores, tie by id.
    snap = make_snapshot(make_backend("b-paris"), make_backend("a-tokyo", "tokyo"))
    plan = route(snap, Request(**BASE), "seed")
    assert plan.primary.score == plan.fallbacks[0].score
    assert plan.primary.backend_id == "a-tokyo"


def test_seed_still_applies_the_sla_filter_with_its_expected_latency():
    snap = make_snapshot(make_backend("a-tokyo", "tokyo"), make_backend("b-paris"))
    plan = route(snap, Request(**BASE, max_latency_ms=300), "seed")
    assert [c.backend_id for c in plan.choices] == ["b-paris"]


def test_profile_constant_for_the_hand_computation():
    assert PROFILE.prefill_tokens_per_s == 10_000.0
