"""Each term of the prediction: network, queue, prefill, decode, health."""

from dataclasses import replace

import pytest

from routing.engine import Health, Profile, Request, Snapshot, route
from routing.engine.mesh import PEER_BAND, peer_speeds
from tests.engine.mini_world import PROFILE, make_backend, make_snapshot


def predict(backend, **kw):
    base = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10}
    base["client_region"] = "paris"
    plan = route(make_snapshot(backend), Request(**(base | kw)))
    assert plan.ok, plan.to_dict()
    return plan.primary.prediction


def test_network_is_one_round_trip_from_the_client_region():
    p = predict(make_backend("a", "virginia"))
    assert p.rtt_ms == 80.0
    assert p.ttft_ms == pytest.approx(80 + 105)


def test_inside_one_region_the_network_costs_the_intra_region_rtt():
    assert predict(make_backend("a", "paris")).rtt_ms == 1.0


def test_a_client_given_by_coordinates_joins_the_nearest_region_plus_the_physical_floor():
    # Lyon is nearest to Paris; its floor to Paris is ~3.9 ms (392 km there and back at 200 km/ms).
    p = predict(
        make_backend("a", "virginia"), client_region=None, client_lat=45.76, client_lon=4.84
    )
    assert p.rtt_ms == pytest.approx(80.0 + 3.93, abs=0.05)


def test_without_a_client_location_or_a_gateway_region_no_network_is_known():
    # Only a snapshot that does not say where its gateway is (a bare unit-test world);
    # every gateway's snapshot does (tests/engine/test_no_client_location.py).
    assert predict(make_backend("a", "tokyo"), client_region=None).rtt_ms == 0.0


def test_prefill_is_the_fixed_part_plus_input_tokens_over_prefill_speed():
    assert predict(make_backend("a"), input_tokens=2000).prefill_ms == pytest.approx(5 + 200)
    assert predict(make_backend("a"), input_tokens=0).prefill_ms == pytest.approx(5)


def test_decode_is_output_tokens_over_decode_speed():
    p = predict(make_backend("a"), max_output_tokens=50)
    assert p.decode_ms == pytest.approx(500)
    assert p.total_ms == pytest.approx(p.ttft_ms + 500)


def test_an_observed_ttft_scales_the_prefill_model():
    p = predict(make_backend("a", observed_ttft_ms=210.0), input_tokens=1000)
    assert p.prefill_ms == pytest.approx(210.0)


def test_an_observed_decode_speed_overrides_the_profile():
    p = predict(make_backend("a", observed_decode_tokens_per_s=50.0), max_output_tokens=10)
    assert p.decode_ms == pytest.approx(200)


def test_no_queue_while_a_slot_is_free():
    assert predict(make_backend("a", slots=4, in_flight=3)).queue_ms == 0.0


def test_queue_wait_is_slot_releases_needed_times_service_time_over_slots():
    # 4 busy slots + 2 queued: this request needs 3 releases; service 105 + 100 ms.
    p = predict(make_backend("a", slots=4, in_flight=4, queued=2, max_queue=10))
    assert p.queue_ms == pytest.approx(3 * 205 / 4)
    assert p.ttft_ms == pytest.approx(1 + 105 + 3 * 205 / 4)


def test_an_observed_mean_service_time_drives_the_queue_estimate():
    p = predict(make_backend("a", slots=4, in_flight=4, mean_service_ms=400.0))
    assert p.queue_ms == pytest.approx(1 * 400 / 4)


def test_degraded_multiplies_backend_and_network_by_one_and_a_half_not_the_queue():
    p = predict(make_backend("a", "virginia", health=Health.DEGRADED, slots=1, in_flight=1))
    queue = 205 / 1
    assert p.queue_ms == pytest.approx(queue)
    assert p.ttft_ms == pytest.approx(1.5 * (80 + 105) + queue)
    assert p.total_ms == pytest.approx(1.5 * (80 + 105 + 100) + queue)


def test_the_sla_filter_uses_predicted_ttft_and_total():
    snap = make_snapshot(make_backend("near"), make_backend("far", "virginia"))
    base = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10}
    base["client_region"] = "paris"
    plan = route(snap, Request(**base, max_ttft_ms=150))
    assert [c.backend_id for c in plan.choices] == ["near"]
    assert plan.reason_for("far").detail == "sla: predicted ttft 185 ms > 150 ms"
    plan = route(snap, Request(**base, max_latency_ms=250))
    assert plan.reason_for("far").detail == "sla: predicted latency 285 ms > 250 ms"


def test_a_profile_ttft_floor_is_what_prefill_does_not_explain():
    assert PROFILE.ttft_floor_ms == pytest.approx(5.0)
    fast = Profile(50.0, 480, 9600.0, 58.0, 0.72, 0.72)
    assert fast.ttft_floor_ms == 0.0


def test_with_load_replaces_counters_and_keeps_everything_else():
    snap = make_snapshot(make_backend("a", slots=2))
    busy = snap.with_load({"a": (2, 1)}, version=2)
    assert isinstance(busy, Snapshot)
    assert busy.version == 2
    base = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10}
    base["client_region"] = "paris"
    assert route(snap, Request(**base)).primary.prediction.queue_ms == 0.0
    assert route(busy, Request(**base)).primary.prediction.queue_ms == pytest.approx(2 * 205 / 2)
    assert route(snap, Request(**base)).primary.prediction.queue_ms == 0.0  # old one untouched


def _queues(snap):
    """Each region's backend's predicted queue for one request from Paris."""
    out = {}
    for region in ("paris", "frankfurt", "virginia"):
        req = Request(model="m-70b", input_tokens=1000, max_output_tokens=10,
                      client_region="paris", allowed_regions=frozenset({region}))  # fmt: skip
        out[region] = route(snap, req).primary.prediction.queue_ms
    return out


def test_counters_laid_over_a_base_read_are_the_read_s_with_the_request_s_own_on_top():
    snap = make_snapshot(
        make_backend("a", "paris", slots=2),
        make_backend("b", "frankfurt", slots=2),
        make_backend("c", "virginia", slots=2, in_flight=2, queued=1),
    )
    read = {"a": (2, 1), "b": (1, 0)}
    over = snap.with_load({"b": (2, 1)}, base=read)
    assert _queues(over) == _queues(snap.with_load({"a": (2, 1), "b": (2, 1), "c": (2, 1)}))
    assert _queues(over)["paris"] > 0
    assert _queues(over)["frankfurt"] > 0
    assert _queues(snap.with_load({}, base=read))["frankfurt"] == 0.0  # the read's own
    assert _queues(snap) == {"paris": 0.0, "frankfurt": 0.0, "virginia": pytest.approx(2 * 205 / 2)}


def test_a_base_read_is_taken_once_while_it_is_the_same_read_and_a_new_read_at_once():
    snap = make_snapshot(make_backend("a", "paris", slots=2))
    read = {"a": (2, 1)}
    first = snap.with_load({}, base=read)
    again = snap.with_load({}, base=read)
    assert first.index("m-70b") is again.index("m-70b")  # built once for the read
    assert _queues_a(first) == _queues_a(again) > 0
    assert _queues_a(snap.with_load({}, base={"a": (0, 0)})) == 0.0  # a new read counts
    assert _queues_a(snap.with_load({"a": (2, 1)}, base={"a": (0, 0)})) == _queues_a(first)


def _queues_a(snap):
    req = Request(model="m-70b", input_tokens=1000, max_output_tokens=10, client_region="paris")
    return route(snap, req).primary.prediction.queue_ms


# -- peers: one chip and profile, one speed ---------------------------------------------


def ttft_ratios(*backends):
    return [round(ratio, 6) for ratio, _ in peer_speeds(backends)]


def test_peers_whose_observed_speeds_differ_by_noise_are_predicted_at_their_median():
    # 105 ms is the profile's TTFT; these three observed 10% apart, within PEER_BAND.
    a, b, c = (make_backend(n, observed_ttft_ms=ms) for n, ms in
               (("a", 100.0), ("b", 110.0), ("c", 120.0)))  # fmt: skip
    assert ttft_ratios(a, b, c) == [round(110 / 105, 6)] * 3
    # and a route between two of them goes by distance, not by the noise
    near = make_backend("near", "paris", observed_ttft_ms=126.0)
    far = make_backend("far", "frankfurt", observed_ttft_ms=110.0)
    plan = route(make_snapshot(near, far), Request(model="m-70b", input_tokens=1000,
                 max_output_tokens=10, client_region="paris"))  # fmt: skip
    assert plan.primary.backend_id == "near"


def test_a_backend_slower_than_its_peers_by_more_than_the_band_keeps_its_own_speed():
    slow = make_backend("slow", observed_ttft_ms=105.0 * (1 + PEER_BAND) * 1.3)
    peers = [make_backend(n, observed_ttft_ms=105.0) for n in "abc"]
    assert ttft_ratios(slow, *peers) == [round((1 + PEER_BAND) * 1.3, 6), 1.0, 1.0, 1.0]


def test_a_backend_not_yet_observed_keeps_its_profile_whatever_its_peers_saw():
    # One peer slowed: its unobserved neighbour is not predicted slow with it.
    fresh = make_backend("fresh")
    seen = make_backend("seen", observed_ttft_ms=210.0, observed_decode_tokens_per_s=50.0)
    assert peer_speeds([fresh, seen]) == [(1.0, PROFILE.decode_tokens_per_s), (2.0, 50.0)]


def test_another_chip_or_another_profile_is_not_a_peer():
    other_chip = replace(make_backend("tpu", observed_ttft_ms=126.0), chip="tpu")
    other_profile = make_backend("big", profile=replace(PROFILE, ttft_ms=210.0))
    gpu = make_backend("gpu", observed_ttft_ms=105.0)
    assert ttft_ratios(other_chip, other_profile, gpu) == [1.2, 1.0, 1.0]


def test_without_any_observation_the_profile_is_the_prediction():
    assert peer_speeds([make_backend("a"), make_backend("b")]) == [
        (1.0, PROFILE.decode_tokens_per_s),
        (1.0, PROFILE.decode_tokens_per_s),
    ]
