"""bench.fluid: the fluid bound and the bursts, on hand-made requests whose answers are known."""

import numpy as np
import pytest

pytest.importorskip("scipy")  # a bench dependency (make bench-install; dev pins it too)

from bench.fluid import _Request, balance, bursts, fluid_in_time

TWO_ONE_SLOT_BACKENDS = np.array([1.0, 1.0])


def tight(at_s: float, slot_s: float = 0.5) -> _Request:
    """In time only on backend 0, allowed on both."""
    return _Request(at_s, (0,), (0, 1), [slot_s, slot_s])


def loose(at_s: float, slot_s: float = 0.5) -> _Request:
    """In time on either backend."""
    return _Request(at_s, (0, 1), (0, 1), [slot_s, slot_s])


def test_the_fluid_bound_sends_the_loose_requests_where_the_tight_ones_are_not():
    # Backend 0 has one slot-second: the two tight requests fill it, so the two loose
    # ones must go to backend 1. A router sending them to the nearer backend 0 first
    # would miss; the bound is what the best placement serves in time: all four.
    requests = [tight(0.0), loose(0.1), loose(0.2), tight(1.0)]
    assert fluid_in_time(requests, TWO_ONE_SLOT_BACKENDS, 0) == pytest.approx(4)


def test_tight_work_beyond_its_backends_slot_time_is_served_late_elsewhere():
    # Three tight requests of half a second, one slot-second at backend 0: two in time,
    # the third served late on backend 1 (it must be served somewhere allowed).
    requests = [tight(0.0), tight(0.5), tight(1.0)]
    assert fluid_in_time(requests, TWO_ONE_SLOT_BACKENDS, 0) == pytest.approx(2)


def test_a_slice_with_more_work_than_slot_time_counts_only_what_fits_in_time():
    # Slices of a second: the first second brings 3 s of loose work for 2 slot-seconds
    # (4 of its 6 requests fit), the second brings one request, which fits.
    requests = [loose(0.1 * i) for i in range(6)] + [loose(2.0)]
    assert fluid_in_time(requests, TWO_ONE_SLOT_BACKENDS, 1.0) == pytest.approx(5)


def test_the_balance_is_the_busiest_backends_lowest_utilisation_with_everyone_in_time():
    # Two loose requests over one second: one on each backend, each half busy.
    assert balance([loose(0.0), loose(1.0)], TWO_ONE_SLOT_BACKENDS) == pytest.approx(0.5)
    # A tight pair must both be on backend 0: it is fully busy whatever the rest does.
    assert balance([tight(0.0), tight(1.0), loose(0.5)], TWO_ONE_SLOT_BACKENDS) == pytest.approx(
        1.0
    )


def test_bursts_count_the_windows_in_which_more_arrive_than_the_pool_completes():
    # Windows of a second on a pool completing 2 requests a second: 3 arrive in the
    # first, 1 in the second, 3 in the third (the fourth, partial, is not counted).
    at = [0.0, 0.2, 0.3, 1.5, 2.1, 2.2, 2.9, 3.0]
    assert bursts([loose(t) for t in at], 2.0, 1.0) == pytest.approx(2 / 3)
    assert bursts([loose(t) for t in at], 3.0, 1.0) == 0.0
