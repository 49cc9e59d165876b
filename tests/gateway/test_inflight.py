"""A gateway process's in-flight counts laid over the live maps (`InFlight.apply`)."""

import pytest

from backends.livestate import LiveMaps
from routing.gateway.live import InFlight
from tests.engine.mini_world import make_backend, make_snapshot


def _in_flight(snapshot, backend_id):
    idx = snapshot.index("m-70b")
    return float(idx.in_flight[idx.pos[backend_id]])


def _read(gateways):
    return LiveMaps({}, {}, {}, gateways=gateways)


def test_sends_since_the_live_read_count_for_the_processs_share_of_the_backend():
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40))
    inflight = InFlight()
    for _ in range(10):
        inflight.start("a", "m-70b")
    live = _read(gateways=8)
    assert _in_flight(inflight.apply(snap, "m-70b", live=live), "a") == 40  # as read
    inflight.start("a", "m-70b")
    inflight.start("a", "m-70b")
    # 10 of the 40 were ours: each new one stands for four of everyone's
    assert _in_flight(inflight.apply(snap, "m-70b", live=live), "a") == pytest.approx(48)


def test_a_new_read_of_the_live_maps_starts_the_count_again():
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40))
    inflight = InFlight()
    inflight.apply(snap, "m-70b", live=_read(8))
    inflight.start("a", "m-70b")
    assert _in_flight(inflight.apply(snap, "m-70b", live=_read(8)), "a") == 40
    inflight.finish("a")
    assert _in_flight(inflight.apply(snap, "m-70b", live=None), "a") == 40


def test_a_lone_process_without_live_maps_counts_exactly_what_it_has_in_flight():
    snap = make_snapshot(make_backend("a", slots=100))
    inflight = InFlight()
    inflight.apply(snap, "m-70b")
    for _ in range(3):
        inflight.start("a", "m-70b")
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == 3
    inflight.finish("a")
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == 2
