"""Session affinity: the backend holding the session's KV cache skips that prefill."""

import pytest

from routing.engine import Request, route
from tests.engine.mini_world import make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 2000, "max_output_tokens": 10, "client_region": "paris"}


def test_the_affinity_backend_skips_prefilling_the_cached_prefix():
    snap = make_snapshot(make_backend("a"))
    plain = route(snap, Request(**BASE)).primary.prediction
    warm = route(
        snap, Request(**BASE, session_id="s1", affinity_backend_id="a", cached_prefix_tokens=1500)
    ).primary.prediction
    assert plain.prefill_ms == pytest.approx(5 + 200)
    assert warm.prefill_ms == pytest.approx(5 + 50)


def test_moving_a_session_costs_the_recompute_so_it_stays_despite_a_shorter_path():
    # Frankfurt client: frankfurt is 1 ms away, paris 10 ms;
    # paris holds 1,500 cached tokens (150 ms of prefill).
    snap = make_snapshot(make_backend("paris"), make_backend("frankfurt", "frankfurt"))
    req = Request(
        **(BASE | {"client_region": "frankfurt"}),
        affinity_backend_id="paris",
        cached_prefix_tokens=1500,
    )
    plan = route(snap, req)
    assert plan.primary.backend_id == "paris"
    assert plan.fallbacks[
        0
    ].prediction.prefill_ms - plan.primary.prediction.prefill_ms == pytest.approx(150)


def test_a_small_cache_does_not_outweigh_a_much_longer_path():
    snap = make_snapshot(make_backend("tokyo", "tokyo"), make_backend("paris"))
    req = Request(**BASE, affinity_backend_id="tokyo", cached_prefix_tokens=100)
    assert route(snap, req).primary.backend_id == "paris"


def test_a_cached_prefix_longer_than_the_prompt_saves_only_the_prompt():
    snap = make_snapshot(make_backend("a"))
    req = Request(**BASE, affinity_backend_id="a", cached_prefix_tokens=10_000)
    assert route(snap, req).primary.prediction.prefill_ms == pytest.approx(5)


def test_an_affinity_backend_that_breaks_policy_is_still_excluded():
    snap = make_snapshot(make_backend("us", "virginia"), make_backend("eu", "frankfurt"))
    req = Request(
        **BASE,
        affinity_backend_id="us",
        cached_prefix_tokens=2000,
        allowed_jurisdictions=frozenset({"EU"}),
    )
    assert [c.backend_id for c in route(snap, req).choices] == ["eu"]


def test_an_unknown_affinity_backend_is_ignored():
    snap = make_snapshot(make_backend("a"))
    req = Request(**BASE, affinity_backend_id="gone", cached_prefix_tokens=2000)
    assert route(snap, req).primary.prediction.prefill_ms == pytest.approx(205)
