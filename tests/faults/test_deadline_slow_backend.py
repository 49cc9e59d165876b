"""Observed latency moves traffic quickly: a backend slowed 10× loses this gateway's
traffic within a second or two (the gateway's own view, `routing.gateway.live.Observed`,
with no control plane running), and wins it back after it recovers.

Real simulator at real time (its `slow` fault), real gateway, four concurrent
clients, half of them streaming. Assertions are shares over windows of requests with
wide margins, and recovery is a condition waited on: it holds on a busy machine.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.clock import Clock
from tests.gateway import conftest as gateway

# The gateway suite's fixtures: a live simulator and gateway, a private usage stream.
world_spec = gateway.world_spec
simulator_server = gateway.simulator_server
gateway_url = gateway.gateway_url
mesh = gateway.mesh
api_key = gateway.api_key

EIGHT_B = "llama-3.1-8b-instruct"
WESTEUROPE_8B = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
#: From westeurope: its own 8B H100 (1 ms away) is the fastest; the same chip in two
#: neighbours (11 ms away) are the feasible alternatives.
ASK = {
    "model": EIGHT_B,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 64,
    "tesseract": {
        "client_region": "westeurope",
        "regions": ["westeurope", "germanywestcentral", "uksouth"],
    },
}


@dataclass
class Traffic:
    """Clients sending requests back to back; every answer's (start time, backend)."""

    gateway_url: str
    key: str
    served: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def one(self, http: httpx.Client, stream: bool) -> None:
        started = time.monotonic()
        body: dict[str, Any] = {**ASK, "stream": stream}
        response = http.post(f"{self.gateway_url}/v1/chat/completions", json=body)
        if response.status_code != 200:
            self.errors.append(response.text)
            return
        if stream:
            events = [x[6:] for x in response.text.splitlines() if x.startswith("data: {")]
            info = json.loads(events[-1])["tesseract"]
        else:
            info = response.json()["tesseract"]
        self.served.append((started, info["route"]["backend"]))

    def client(self, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(headers=headers, timeout=30) as http:
            while not self.stop.is_set():
                self.one(http, stream)

    def share(self, since: float, until: float = float("inf")) -> tuple[float, int]:
        """The share of requests started in [since, until) served by the slowed backend."""
        window = [b for t, b in list(self.served) if since <= t < until]
        return (sum(b == WESTEUROPE_8B for b in window) / max(len(window), 1), len(window))

    def recent_share(self, seconds: float) -> float:
        """The slowed backend's share of the last `seconds` (0 until 8 requests started)."""
        share, n = self.share(time.monotonic() - seconds)
        return share if n >= 8 else 0.0

    def count_since(self, since: float) -> int:
        return sum(t >= since for t, _ in list(self.served))


def wait_for(predicate, timeout_s: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"did not happen in time; {view()}"
        time.sleep(0.05)
    return time.monotonic() - started


def view() -> str:
    """What the gateway's own view holds now (for failure messages)."""
    from routing.gateway.app import application

    observed = application.gateway.holder.observed
    return f"slowdowns {observed.factors()}, noise {observed.noise_ms:.0f} ms"


def test_a_backend_slowed_ten_times_loses_its_traffic_within_seconds_and_wins_it_back(
    mesh, api_key
):
    mesh.simulator.time_scale = 1.0  # real time: what the gateway measures is the profile's
    traffic = Traffic(mesh.gateway_url, api_key)
    clients = [threading.Thread(target=traffic.client, args=(i % 2 == 1,)) for i in range(4)]
    for c in clients:
        c.start()
    try:
        # Healthy: the nearest backend serves most requests (once the start-up settles).
        wait_for(lambda: traffic.recent_share(2) >= 0.5, 60)
        before = traffic.recent_share(2)

        mesh.fault(WESTEUROPE_8B, fault="slow", slow_factor=10)
        slowed_at = time.monotonic()
        wait_for(lambda: traffic.count_since(slowed_at + 5) >= 60, 90)
        after, n_after = traffic.share(slowed_at + 5)
        first_second, _ = traffic.share(slowed_at + 1, slowed_at + 5)

        mesh.fault(WESTEUROPE_8B, fault="none")
        recovered_at = time.monotonic()
        # It comes back: tried again as the evidence fades, then trusted again.
        back = wait_for(lambda: traffic.recent_share(3) >= 0.5, 45)
    finally:
        traffic.stop.set()
        for c in clients:
            c.join(30)

    assert not traffic.errors
    assert after <= 0.1, f"{after:.0%} of {n_after} requests still went to the slowed backend"
    assert traffic.served[-1][0] - traffic.served[0][0] < 200
    assert first_second <= 0.25  # most had moved within a second already
    print(
        f"slow backend's share: healthy {before:.0%}, 1-5 s after the slowdown "
        f"{first_second:.0%}, from 5 s {after:.0%} of {n_after}; back to half "
        f"{back:.1f} s after recovering ({recovered_at - slowed_at:.1f} s slowed)"
    )


def two_backends() -> Any:
    from routing.engine import Backend, LatencyMap, Profile, Snapshot

    def backend(slug: str) -> Backend:
        return Backend(
            id=slug, model="m", region=slug, country="NL", concurrency_slots=8,
            profile=Profile(50.0, 1000, 20_000.0, 100.0, 0.1, 0.2),
        )  # fmt: skip

    return Snapshot([backend("a"), backend("b")], LatencyMap(rtt={}), version=1)


def test_the_gateways_own_view_believes_a_slowdown_at_its_second_request_and_lets_it_fade():
    from routing.gateway.live import HALF_LIFE_S, Observed

    clock = Clock()
    observed = Observed("a", clock=clock)
    base = two_backends()
    assert observed.overlay(base) is base  # nothing seen: the maps' own snapshot, no copy

    # Requests are numbered in the order they were sent.
    observed.sample("a", ttft=1.0, decode=1.0, source=1)  # as predicted: nothing to remember
    assert observed.overlay(base) is base
    observed.sample("b", ttft=10.0, decode=10.0, source=2)  # 10× slower ...
    assert observed.overlay(base) is base  # ... one request alone: maybe a straggler
    observed.sample("b", ttft=12.0, decode=10.0, source=3)  # another: a slowdown
    slowed = observed.overlay(base).backend("b").state
    assert (slowed.observed_ttft_ms or 0) >= 50.0 * 5
    assert (slowed.observed_decode_tokens_per_s or 1e9) <= 100.0 / 5
    assert observed.overlay(base).backend("a").state.observed_ttft_ms is None

    observed.sample("b", ttft=1.0, decode=1.0, source=4)  # one quick answer does not clear it
    assert (observed.overlay(base).backend("b").state.observed_ttft_ms or 0) >= 50.0 * 2
    observed.sample("b", ttft=10.0, decode=10.0, source=5)  # seen slow: believed at once
    assert (observed.overlay(base).backend("b").state.observed_ttft_ms or 0) >= 50.0 * 5

    clock.now += 10 * HALF_LIFE_S  # no news: it fades back to the maps' view
    assert observed.overlay(base) is base


def test_two_slow_requests_are_believed_as_the_less_slow_of_them():
    from routing.gateway.live import Observed

    observed = Observed("a", clock=Clock())
    base = two_backends()
    observed.sample("b", ttft=100.0, decode=1.0, source=1)
    observed.sample("b", ttft=3.0, decode=1.0, source=2)
    # 3× moves the estimate 60% of the way: 2.2× (laid over as a power of 1.25), not 60×.
    ttft = observed.overlay(base).backend("b").state.observed_ttft_ms or 0
    assert 50.0 * 1.5 <= ttft <= 50.0 * 3


def test_one_straggler_among_answers_in_time_moves_nothing():
    from routing.gateway.live import CONFIRM_WITHIN_S, Observed

    clock = Clock()
    observed = Observed("a", clock=clock)
    base = two_backends()
    # A first token 100 times late between answers in time, twice: never believed.
    for n in (0, 10):
        observed.sample("b", ttft=1.0, decode=1.0, source=n + 1)
        observed.sample("b", ttft=100.0, decode=1.0, source=n + 2)
        observed.sample("b", ttft=1.1, decode=1.0, source=n + 3)
        assert observed.overlay(base) is base
    # Nor two stragglers far apart, with no answer between them.
    observed.sample("b", ttft=100.0, decode=1.0, source=21)
    clock.now += 2 * CONFIRM_WITHIN_S
    observed.sample("b", ttft=100.0, decode=1.0, source=22)
    assert observed.overlay(base) is base


def test_answers_from_requests_sent_before_a_slowdown_do_not_hide_it():
    from routing.gateway.live import Observed

    observed = Observed("a", clock=Clock())
    base = two_backends()
    observed.sample("b", ttft=10.0, decode=1.0, source=5)  # the first slow answer
    observed.sample("b", ttft=1.0, decode=1.0, source=3)  # sent before it, still in time
    observed.sample("b", ttft=10.0, decode=1.0, source=6)  # confirms the first
    assert (observed.overlay(base).backend("b").state.observed_ttft_ms or 0) >= 50.0 * 5


def test_a_request_still_waiting_is_believed_at_once():
    from routing.gateway.live import Observed

    observed = Observed("a", clock=Clock())
    base = two_backends()
    # A client waits on it, and one request at a time would never bring a second: a
    # hung backend must lose the next request already.
    observed.bound("b", ttft=4.0, decode=1.0)
    assert (observed.overlay(base).backend("b").state.observed_ttft_ms or 0) >= 50.0 * 3


def test_an_estimate_wavering_within_a_step_of_what_was_laid_over_rebuilds_nothing():
    """A saturated gateway's own event loop makes every answer look somewhat late: the
    estimate wanders around a boundary between two powers of STEP. Measured in process
    before this rule: 36 snapshot rebuilds a second. What was laid over stays until
    the estimate is a whole step away from it; clearing (below MIN_FACTOR) is at once."""
    from routing.gateway.live import STEP, Observed

    observed = Observed("a", clock=Clock())
    base = two_backends()
    observed.sample("b", ttft=2.0, decode=1.0, source=1)
    observed.sample("b", ttft=2.0, decode=1.0, source=2)
    laid = observed.overlay(base)
    assert laid is not base
    ((ttft, _),) = observed.factors().values()
    # Samples either side of the boundary next to the laid-over power, never a whole
    # step from it: the same snapshot every time.
    for n, seen in enumerate([ttft * STEP**0.6, ttft / STEP**0.6, ttft * STEP**0.7] * 3):
        observed.sample("b", ttft=seen, decode=1.0, source=3 + n)
        assert observed.overlay(base) is laid
        assert observed.factors()["b"][0] == ttft
    # A whole step slower: laid over.
    for n in range(4):
        observed.sample("b", ttft=ttft * STEP**3, decode=1.0, source=20 + n)
    assert observed.overlay(base) is not laid
    assert observed.factors()["b"][0] >= ttft * STEP
    # An estimate below MIN_FACTOR clears at once, as before.
    for n in range(12):
        observed.sample("b", ttft=1.0, decode=1.0, source=30 + n)
    assert observed.overlay(base) is base
    assert observed.factors() == {}


def test_a_faster_sample_never_makes_a_backend_look_faster_than_the_maps_say():
    from routing.gateway.live import Observed

    observed = Observed("a", clock=Clock())
    base = two_backends()
    for n in range(5):
        observed.sample("a", ttft=0.1, decode=0.1, source=n)
    assert observed.overlay(base) is base


def test_a_slow_speed_in_the_shared_maps_fades_when_no_sample_moves_it(mesh):
    """The control plane's side of recovery: traffic avoids a backend the maps call
    slow, so no sample would ever correct them; unrefreshed, they fade to the profile."""
    import redis
    from django.conf import settings

    from backends import livestate, resources
    from backends.models import Deployment

    client = redis.Redis.from_url(settings.REDIS_URL)
    profile = Deployment.objects.get(slug=WESTEUROPE_8B)
    livestate.deployment_update(
        client,
        WESTEUROPE_8B,
        observed_ttft_ms=profile.ttft_ms * 9,
        observed_decode_tps=profile.decode_tokens_per_s / 9,
        observed_at=time.time() - resources.STALE_S - 1,
    )

    resources.fold_observed(client=client)
    once = livestate.deployment_get(client, WESTEUROPE_8B)
    resources.fold_observed(client=client)  # just refreshed: not stale yet
    again = livestate.deployment_get(client, WESTEUROPE_8B)

    assert once.observed_ttft_ms == pytest.approx(profile.ttft_ms * 5, rel=0.01)
    assert once.observed_decode_tps == pytest.approx(profile.decode_tokens_per_s * 5 / 9, rel=0.01)
    assert again.observed_ttft_ms == once.observed_ttft_ms
