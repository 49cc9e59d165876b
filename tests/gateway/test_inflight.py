"""A gateway process's in-flight counts laid over the live maps (`InFlight.apply`)."""

import pytest

from backends.livestate import DeploymentLive, LiveMaps, occupancy
from backends.snapshot import World
from routing.gateway.live import SHARED_STALE_S, InFlight
from tests.clock import Clock
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


# ------------------------------------------------- everyone's counts, read every 0.25 s


def test_a_read_of_everyones_counts_takes_this_processs_own_part_exact_not_as_published():
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40))  # the live maps: 1 s old
    inflight = InFlight(Clock())  # a read never goes stale unless the test says so
    for _ in range(5):
        inflight.start("a", "m-70b")
    # Redis holds what each process last published: this one's 3 is a quarter second old
    inflight.read({"gw-b:1": {"a": 10}, "me": {"a": 3}}, "me", snap)
    assert _in_flight(inflight.apply(snap, "m-70b", live=_read(8)), "a") == 15


def test_a_backend_everyone_has_left_since_the_live_maps_reads_empty():
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40), make_backend("b"))
    inflight = InFlight(Clock())
    inflight.read({}, "me", snap)
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == 0


def test_after_a_read_each_send_counts_for_the_processs_share_of_everyones():
    snap = make_snapshot(make_backend("a", slots=100))
    inflight = InFlight(Clock())
    for _ in range(5):
        inflight.start("a", "m-70b")
    others = {"gw-b:1": {"a": 5}, "gw-c:1": {"a": 5}, "gw-d:1": {"a": 5}}
    inflight.read(others, "me", snap)  # 5 of 20 are ours
    inflight.start("a", "m-70b")
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == pytest.approx(24)
    inflight.finish("a")
    inflight.finish("a")
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == pytest.approx(16)


def test_a_lone_process_with_no_share_yet_claims_an_equal_part_of_a_backend():
    snap = make_snapshot(make_backend("a", slots=100))
    inflight = InFlight(Clock())
    inflight.read({"gw-b:1": {"a": 4}, "gw-c:1": {"a": 4}}, "me", snap)  # three gateways
    inflight.start("a", "m-70b")
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == pytest.approx(11)


def test_a_read_never_shows_fewer_than_the_backend_last_reported_running():
    snap = make_snapshot(make_backend("a", slots=100))
    live = LiveMaps({"a": DeploymentLive(running=30)}, {}, {})
    inflight = InFlight(Clock())
    inflight.read({"gw-b:1": {"a": 10}}, "me", snap, live)
    assert _in_flight(inflight.apply(snap, "m-70b", live=live), "a") == 30


def test_a_read_gone_stale_gives_way_to_the_live_maps_count_again():
    clock = Clock()
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40))
    inflight = InFlight(clock)
    inflight.read({"gw-b:1": {"a": 10}}, "me", snap)
    clock.now += SHARED_STALE_S / 2
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == 10
    clock.now += SHARED_STALE_S  # Redis went away: no read since
    assert _in_flight(inflight.apply(snap, "m-70b"), "a") == 40


def test_a_read_lays_counts_over_the_requests_model_only():
    snap = make_snapshot(
        make_backend("a", slots=100, in_flight=7),
        make_backend("s", model="m-8b", slots=100, in_flight=9),
    )
    inflight = InFlight(Clock())
    inflight.read({"gw-b:1": {"a": 2, "s": 3}}, "me", snap)
    routed = inflight.apply(snap, "m-70b")
    assert _in_flight(routed, "a") == 2
    small = routed.index("m-8b")
    assert float(small.in_flight[small.pos["s"]]) == 9  # not this request's model


def test_a_read_gone_stale_counts_this_processs_sends_from_the_live_maps_read_again():
    clock = Clock()
    snap = make_snapshot(make_backend("a", slots=100, in_flight=40))
    live = _read(gateways=1)  # the live maps' read: 40 in flight, this process alone
    inflight = InFlight(clock)
    inflight.apply(snap, "m-70b", live=live)
    inflight.read({"gw-b:1": {"a": 10}}, "me", snap)
    for _ in range(3):
        inflight.start("a", "m-70b")
    clock.now += 2 * SHARED_STALE_S
    # back on the live maps' read, with this process's count as of now: 40, not 43
    assert _in_flight(inflight.apply(snap, "m-70b", live=live), "a") == 40
    inflight.start("a", "m-70b")
    assert _in_flight(inflight.apply(snap, "m-70b", live=live), "a") == 41


# ---------------------------------------------- the gateways' count and the backend's queue


def _load(snapshot, backend_id):
    idx = snapshot.index("m-70b")
    pos = idx.pos[backend_id]
    return float(idx.in_flight[pos]), float(idx.queued[pos])


def test_the_gateways_count_takes_in_the_backends_queue_so_the_queue_is_not_counted_twice():
    # 15 sent and not finished: 10 running, 5 in the backend's queue
    assert occupancy(15, DeploymentLive(running=10, waiting=5)) == (10, 5)
    # a scrape newer than the count: never fewer than the backend says run
    assert occupancy(8, DeploymentLive(running=12, waiting=0)) == (12, 0)
    assert occupancy(3, None) == (3, 0)


def test_the_live_maps_and_a_read_of_everyones_counts_split_running_from_queued_alike():
    snap = make_snapshot(make_backend("a", slots=100))
    record = {"a": DeploymentLive(running=10, waiting=5)}
    maps = LiveMaps(record, {}, {"a": 15})
    laid = World(snap, {}).with_live(maps).snapshot
    assert _load(laid, "a") == (10, 5)
    inflight = InFlight(Clock())
    inflight.read({"gw-b:1": {"a": 15}}, "me", snap, maps)
    assert _load(inflight.apply(snap, "m-70b", live=maps), "a") == (10, 5)
