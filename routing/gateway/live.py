"""What a gateway process keeps in memory: the world, and everyone's in-flight counts.

The world (the engine's snapshot plus how to reach each backend) is read from the
catalog in a worker thread, never on a request: at first use, then in the background
when it is older than `TESSERACT_WORLD_REFRESH_S`, or at once when the control plane
publishes a change on the `tesseract:world` channel (an operator drained a cluster,
a model was loaded somewhere). The live maps (`backends.livestate`: health, load,
observed speeds, probed RTTs) are laid over it from Redis — no query — when they are
announced on `tesseract:live`, and at the latest every `TESSERACT_LIVE_REFRESH_S`.
A request always routes on the last complete world.

Laid over that, per process, is what this gateway saw itself (`Observed`): every
attempt that ends is a sample of its backend's speed, folded in at once, so a backend
that slows down loses this gateway's traffic within a request or two, without waiting
for the usage drain and the control plane's fold (seconds) to reach the live maps; and
a provider's 429 seen here rests its deployment in this process at once (`rest`).

The in-flight counts go their own way (`InFlight`, `share_inflight`): every 0.25 s
each process publishes its own and reads everyone's, and between reads it projects a
backend's count from what it sent and saw finish since.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import msgspec
from django.conf import settings

from accounts import redis_client
from backends import livestate
from backends.livestate import LiveMaps
from backends.signals import WORLD_CHANNEL
from backends.snapshot import World, load_world
from routing.engine import Backend, Snapshot, projected_in_flight
from routing.gateway.db import off_loop

if TYPE_CHECKING:
    from routing.gateway.attempt import Attempt

logger = logging.getLogger(__name__)


class WorldHolder:
    def __init__(
        self,
        loader: Callable[[], World] = load_world,
        *,
        refresh_s: float | None = None,
        redis: Any = None,
        live_refresh_s: float | None = None,
    ) -> None:
        self._loader = loader
        self._refresh_s = refresh_s if refresh_s is not None else settings.TESSERACT_WORLD_REFRESH_S
        self._redis = redis
        self._live_refresh_s = (
            live_refresh_s if live_refresh_s is not None else settings.TESSERACT_LIVE_REFRESH_S
        )
        self._world: World | None = None
        self._loaded_at = 0.0
        self._live_at = 0.0
        self._stale = False
        self._lock = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None
        self._live_task: asyncio.Task[None] | None = None
        self._live_again = False
        #: what this process saw itself, laid over the world's snapshot by `snapshot()`
        self.observed = Observed()
        #: deployment slug → epoch seconds: provider rests this process began (`rest`)
        self._rests: dict[str, float] = {}
        #: set once the announcements listener has subscribed: a world loaded from then
        #: on misses no change (`GatewayApp.warm` waits for it)
        self.listening = asyncio.Event()

    async def get(self) -> World:
        world = self._world
        if world is None:
            async with self._lock:
                if self._world is None:
                    await self._load()
            assert self._world is not None
            return self._world
        now = time.monotonic()
        if (self._stale or now - self._loaded_at > self._refresh_s) and (
            self._refreshing is None or self._refreshing.done()
        ):
            self._refreshing = asyncio.create_task(self._refresh())
        elif self._redis is not None and now - self._live_at > self._live_refresh_s:
            self.live_soon()
        return world

    async def _load(self) -> None:
        self._stale = False
        world = await off_loop(self._loader)()
        maps = None
        if self._redis is not None:
            try:
                maps = await livestate.aread(self._redis)
                self._live_at = time.monotonic()
            except Exception:  # the catalog alone still routes correctly, if less well
                logger.exception("could not read the live maps; routing on the catalog")
        if maps is not None or self._rests:
            world = world.with_live(self._with_rests(maps or world.live))
        self._world, self._loaded_at = world, time.monotonic()

    def _with_rests(self, maps: LiveMaps) -> LiveMaps:
        """`maps` with the rests this process began itself (`rest`) that have not ended:
        a read of the live maps that started before a rest reached Redis must not lift
        it here."""
        if not self._rests:
            return maps
        now = time.time()
        rests = {slug: until for slug, until in self._rests.items() if until > now}
        self._rests = rests
        cooling = {
            slug: until for slug, until in rests.items() if maps.cooling.get(slug, 0.0) < until
        }
        if not cooling:
            return maps
        return msgspec.structs.replace(maps, cooling={**maps.cooling, **cooling})

    def live_soon(self) -> None:
        """Re-read the live maps in the background, coalescing bursts into one read."""
        if self._redis is None:
            return
        if self._live_task is not None and not self._live_task.done():
            self._live_again = True  # it may have read before this change
            return
        self._live_at = time.monotonic()  # no second task from the next request
        self._live_task = asyncio.create_task(self._refresh_live())

    async def _refresh_live(self) -> None:
        while True:
            self._live_again = False
            try:
                maps = await livestate.aread(self._redis)
            except Exception:
                logger.warning("could not read the live maps; keeping the last ones")
                return
            if self._world is not None:
                self._world = self._world.with_live(self._with_rests(maps))
                self._live_at = time.monotonic()
            if not self._live_again:
                return

    async def _refresh(self) -> None:
        try:
            await self._load()
        except Exception:  # keep serving the last good world
            logger.exception("world refresh failed; keeping version %s", self.version)
            self._loaded_at = time.monotonic()

    async def reload_now(self) -> World:
        async with self._lock:
            await self._load()
        assert self._world is not None
        return self._world

    def rest(self, slug: str, until: float) -> None:
        """Route around `slug` in this process until `until` (epoch seconds) at once: a
        provider's 429 seen here. Every other gateway learns of it through the live maps
        (`livestate.acool`); this one keeps it over every read of them until it ends."""
        if until <= time.time() or self._rests.get(slug, 0.0) >= until:
            return
        self._rests[slug] = until
        world = self._world
        if world is None or world.live.resting(slug, time.time()):
            return  # resting already (a burst of 429s): no rebuild; Redis has the longer
        self._world = world.with_live(self._with_rests(world.live))

    def invalidate(self) -> None:
        """Refresh in the background on the next request."""
        self._stale = True

    async def reload_soon(self) -> None:
        """Reload now, coalescing a burst of announcements into one read of the catalog."""
        if self._refreshing is not None and not self._refreshing.done():
            self._stale = True  # the running refresh may predate the change
            return
        self._refreshing = asyncio.create_task(self._refresh())

    def forget(self) -> None:
        """Drop the world: the next request loads it before routing (tests, start-up).

        What this process observed goes with it: it was measured against that world."""
        self._world = None
        self.observed = Observed()

    def snapshot(self, world: World) -> Snapshot:
        """`world`'s snapshot with this process's own observations laid over it."""
        return self.observed.overlay(world.snapshot)

    @property
    def version(self) -> int | str | None:
        return None if self._world is None else self._world.version

    @property
    def current(self) -> World | None:
        """The last complete world, if any (never loads one)."""
        return self._world


# --------------------------------------------------------------------------- observed


#: Weight of a sample slower than the current estimate: a slowdown is believed at once
#: (once a second request has confirmed the first, `Observed`) ...
SLOWER_WEIGHT = 0.6
#: ... and of a faster one: one quick answer does not clear a backend seen slow.
FASTER_WEIGHT = 0.4
#: This process's own evidence fades into the shared live maps' view with this
#: half-life (seconds): a backend avoided for being slow is tried again (`Watch`).
HALF_LIFE_S = 2.0
#: An attempt with no first token (not streamed: no answer) after this many times the
#: time predicted for it is evidence already, before it ends.
LATE_FACTOR = 3.0
#: ... and never sooner than this (seconds): a busy host delays quick answers by tens
#: or hundreds of milliseconds, which says nothing about the backend.
LATE_MIN_S = 0.5
#: Added to the measured and the predicted time of a phase before they are compared
#: (at least; it adapts, see `Observed.slower`): a 6 ms prefill that took 40 ms because
#: the event loop was busy is not "2× slower".
NOISE_MS = 50.0
#: Weight of one sample's deviation in the learnt noise level.
NOISE_WEIGHT = 0.05
#: Effective slowdowns below this are not laid over the snapshot (no rebuild for noise).
MIN_FACTOR = 1.5
#: While an estimate fades, the overlay is re-checked this often (seconds), and rebuilt
#: when it has moved by a STEP.
REFRESH_S = 0.25
STEP = 1.25
#: One request's evidence of a slowdown waits this long (seconds) for another request's
#: to confirm it (`Observed`: one request alone is not believed).
CONFIRM_WITHIN_S = 2 * HALF_LIFE_S
#: Decode speed is measured on streams of at least this many tokens after the first.
MIN_DECODE_TOKENS = 8


@dataclass(slots=True)
class _Slowness:
    """How much slower than the snapshot predicts one backend has been seen to be."""

    ttft: float = 1.0  # × the predicted time to first token (prefill)
    decode: float = 1.0  # × the predicted time per token
    at: float = 0.0  # monotonic time of the last evidence
    trials: int = 0  # requests sent while it fades (see `Observed.watch`)

    def faded(self, now: float) -> tuple[float, float]:
        k = 2.0 ** (-(now - self.at) / HALF_LIFE_S)
        return 1.0 + (self.ttft - 1.0) * k, 1.0 + (self.decode - 1.0) * k


class Observed:
    """This gateway process's own, immediate view of how slow each backend is.

    Every attempt that produced a first token is a sample: its time to first token
    (less the gateway→backend round trip and the predicted queue) against the prefill
    time the engine predicted, and for a stream of at least MIN_DECODE_TOKENS its time
    per token against the predicted one; a whole answer's time against the predicted
    prefill + decode counts for both. A sample is the factor by which the backend was
    slower than the snapshot it was routed on. Estimates move fast towards a slower
    sample (SLOWER_WEIGHT), slowly towards a faster one (FASTER_WEIGHT), and never
    below 1: speed-ups are the shared live maps' business (`backends.resources`, an
    average over every gateway's requests); this view only corrects for slowdowns the
    maps have not caught up with, and it must not turn one lucky answer into a rush.

    Measurements carry noise (a busy event loop, a busy host, the network's jitter):
    both sides of every comparison are padded with the noise level this process has
    seen, an average of how far samples miss their prediction (at least NOISE_MS). A
    busy gateway thus sees a 6 ms prefill that took 40 ms as about as fast as
    predicted, while a 600 ms answer predicted at 60 ms stays clearly slow.

    An attempt still waiting after LATE_FACTOR × its predicted time (LATE_MIN_S at
    least) is evidence already (a lower bound, raised again each time the wait
    doubles): a hung or crawling backend stops receiving requests before the first
    of them ends.

    One answer alone is not believed: for a backend this process does not see as
    slow (its estimate under MIN_FACTOR, no trial in flight), a slow answer from one
    request is held until an answer from a request sent after it is slow too, within
    CONFIRM_WITHIN_S of the first; then the less slow of the two is believed. An
    answer under MIN_FACTOR from a request sent after the held one clears it (answers
    from requests sent before it do not: a backend that has just slowed down is still
    finishing those). Real backends answer the odd request a hundred times late (a
    straggler); believed at once, each would send this process's traffic away from a
    healthy backend for several half-lives, while a backend that really slowed down
    or hung is slow for every request, and the next one confirms it.

    Recovery: an estimate fades back to 1 (the maps' view) with HALF_LIFE_S, so a
    backend avoided for being slow becomes competitive again and is sent a request.
    While that trial is in flight the overlay shows the unfaded estimate, so one
    request (per process) tests it, not a burst; its answer moves the estimate from
    the faded value: a recovered backend gets its traffic back, a still-slow one is
    avoided again for another few half-lives.

    The cost on the hot path: a timer per attempt, a few float operations when it
    ends, and a snapshot rebuild only when an estimate moves past MIN_FACTOR or while
    one fades (at most every REFRESH_S).
    """

    def __init__(
        self, gateway_region: str | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._region = gateway_region
        self._clock = clock
        self._slow: dict[str, _Slowness] = {}
        #: backend → (the request's serial, its ttft and decode factors, when first
        #: seen): one request's evidence of a slowdown, not believed until a later
        #: request's confirms it
        self._alone: dict[str, tuple[int, float, float, float]] = {}
        self._base: Snapshot | None = None
        self._built: Snapshot | None = None
        self._factors: dict[str, tuple[float, float]] = {}
        self._dirty = False
        self._refresh_at = math.inf
        self._rtt: dict[str, float] = {}
        self._builds = 0
        self._built_on: Snapshot | None = None
        #: how far a measurement may miss its prediction by chance, ms (learnt)
        self.noise_ms = NOISE_MS

    # ---------------------------------------------------------------- the overlay

    def overlay(self, base: Snapshot) -> Snapshot:
        """`base` with the effective slowdowns applied (cached; rebuilt when they move)."""
        fresh = not self._slow or self._clock() < self._refresh_at
        if base is self._base and not self._dirty and fresh:
            return self._built or base
        return self._rebuild(base)

    def _rebuild(self, base: Snapshot) -> Snapshot:
        now = self._clock()
        if base is not self._base:
            self._rtt = {}
        self._base, self._dirty = base, False
        factors: dict[str, tuple[float, float]] = {}
        for backend_id, slow in list(self._slow.items()):
            ttft, decode = (slow.ttft, slow.decode) if slow.trials else slow.faded(now)
            if ttft < MIN_FACTOR and decode < MIN_FACTOR:
                if not slow.trials and now - slow.at > 8 * HALF_LIFE_S:
                    del self._slow[backend_id]  # faded out
                continue
            held = self._factors.get(backend_id, (1.0, 1.0))
            factors[backend_id] = (_step(ttft, held[0]), _step(decode, held[1]))
        self._refresh_at = now + REFRESH_S if self._slow else math.inf
        if factors == self._factors and self._built is not None and self._built_on is base:
            return self._built
        self._factors = factors
        self._built_on = base
        if not factors:
            self._built = base
            return base
        backends = [_slowed(b, factors.get(b.id)) for b in base.backends]
        self._builds += 1
        self._built = Snapshot(backends, base.latency, version=f"{base.version}~{self._builds}")
        return self._built

    # ---------------------------------------------------------------- evidence

    def watch(self, attempt: Attempt) -> Watch:
        """Start watching an attempt that has just been sent (`attempt.sent_at`)."""
        assert attempt.choice is not None
        backend_id = attempt.choice.backend_id
        ttft, decode = self._factors.get(backend_id, (1.0, 1.0))
        slow = self._slow.get(backend_id)
        trial = slow is not None
        if slow is not None:
            slow.trials += 1  # a trial of a backend seen slow: hold its estimate meanwhile
            self._dirty = True
        return Watch(self, attempt, ttft, decode, self._rtt_ms(attempt), trial)

    def _rtt_ms(self, attempt: Attempt) -> float:
        """The gateway→backend round trip the attempt's time includes."""
        assert attempt.choice is not None
        backend_id = attempt.choice.backend_id
        rtt = self._rtt.get(backend_id)
        if rtt is None:
            base = self._base
            region = self._region or _gateway_region()
            rtt = 0.0
            if base is not None:
                rtt = base.latency.rtt_ms(region, attempt.choice.region)
                rtt = 0.0 if math.isinf(rtt) else rtt
            self._rtt[backend_id] = rtt
        return rtt

    def slower(self, measured_ms: float, expected_ms: float, *, learn: bool = True) -> float:
        """How many times slower than expected, both padded with the noise level; with
        `learn`, the miss also updates the noise level (capped, so that a slow backend's
        huge misses cannot drown the signal they are)."""
        noise = self.noise_ms
        if learn:
            miss = min(abs(measured_ms - expected_ms), 4 * noise)
            self.noise_ms = max(NOISE_MS, noise + NOISE_WEIGHT * (miss - noise))
        return (max(measured_ms, 0.0) + noise) / (max(expected_ms, 0.0) + noise)

    def sample(
        self, backend_id: str, *, ttft: float | None, decode: float | None, source: int
    ) -> None:
        """Fold one observation (factors over the snapshot's prediction) into the
        estimate; `source` is the serial of the request it came from (in the order
        they were sent; the class docstring: one request alone is not believed)."""
        if ttft is None and decode is None:
            return
        now = self._clock()
        if (ttft or 1.0) < MIN_FACTOR and (decode or 1.0) < MIN_FACTOR:
            held = self._alone.get(backend_id)
            if held is not None and source > held[0]:
                del self._alone[backend_id]  # a later request in time: that was a straggler
            slow = self._slow.get(backend_id)
            if slow is None:
                return  # the common case: about as fast as predicted, nothing to remember
        else:
            believed = self._believed(backend_id, source, ttft or 1.0, decode or 1.0, now)
            if believed is None:
                return
            slow, t, d = believed
            # A phase this answer did not measure (None) stays as it was.
            ttft, decode = (None if ttft is None else t), (None if decode is None else d)
        prior_ttft, prior_decode = slow.faded(now)
        slow.ttft = _moved(prior_ttft, ttft)
        slow.decode = _moved(prior_decode, decode)
        slow.at = now
        self._dirty = True

    def bound(self, backend_id: str, *, ttft: float, decode: float) -> None:
        """An attempt is this late already: the backend is at least this slow. Believed
        at once, unlike an answer (the class docstring): a client is waiting on it, and
        with one request at a time a hung backend would never get a second one."""
        now = self._clock()
        slow = self._slow.setdefault(backend_id, _Slowness(at=now))
        prior_ttft, prior_decode = slow.faded(now)
        slow.ttft = max(prior_ttft, ttft)
        slow.decode = max(prior_decode, decode)
        slow.at = now
        self._dirty = True

    def _believed(
        self, backend_id: str, source: int, ttft: float, decode: float, now: float
    ) -> tuple[_Slowness, float, float] | None:
        """Evidence of a slowdown from request `source`: the estimate to move and the
        factors to move it by, or None while this request alone shows a slowdown of a
        backend not seen slow (held; the class docstring)."""
        slow = self._slow.get(backend_id)
        if slow is not None and (slow.trials or max(slow.faded(now)) >= MIN_FACTOR):
            return slow, ttft, decode  # seen slow already: believed at once
        held = self._alone.get(backend_id)
        if held is not None and now - held[3] > CONFIRM_WITHIN_S:
            held = None  # two stragglers far apart are not a slowdown
        if held is None or held[0] == source:
            if held is None:
                self._alone[backend_id] = (source, ttft, decode, now)
            else:  # the same request, later: its evidence only grows
                self._alone[backend_id] = (
                    source,
                    max(ttft, held[1]),
                    max(decode, held[2]),
                    held[3],
                )
            return None
        del self._alone[backend_id]
        if slow is None:
            slow = self._slow[backend_id] = _Slowness(at=now)
        return slow, min(ttft, held[1]), min(decode, held[2])

    def _trial_over(self, backend_id: str) -> None:
        slow = self._slow.get(backend_id)
        if slow is not None and slow.trials:
            slow.trials -= 1
            self._dirty = True

    def factors(self) -> dict[str, tuple[float, float]]:
        """The slowdowns laid over the current snapshot: backend → (ttft, decode)."""
        return dict(self._factors)


def _step(factor: float, held: float = 1.0) -> float:
    """`factor` rounded to a power of STEP: a fading estimate rebuilds the snapshot a
    handful of times, not at every refresh (a rebuild costs ~50 µs a backend).

    The power laid over already (`held`) stays until `factor` is a whole STEP from it:
    a saturated gateway's own event loop makes every answer somewhat late, and an
    estimate wandering about the boundary between two powers rebuilt the snapshot 36
    times a second (`python -m bench.inprocess --stream`). Below MIN_FACTOR it clears
    at once, as ever."""
    if factor < MIN_FACTOR:
        return 1.0
    if held > 1.0 and abs(math.log(factor / held, STEP)) < 1.0:
        return held
    return STEP ** round(math.log(factor, STEP))


def _moved(prior: float, sample: float | None) -> float:
    if sample is None:
        return prior
    weight = SLOWER_WEIGHT if sample > prior else FASTER_WEIGHT
    return max(1.0, prior + weight * (sample - prior))


def _slowed(b: Backend, factors: tuple[float, float] | None) -> Backend:
    if factors is None:
        return b
    ttft, decode = factors
    p, s = b.profile, b.state
    return replace(
        b,
        state=replace(
            s,
            observed_ttft_ms=(s.observed_ttft_ms or p.ttft_ms) * ttft,
            observed_decode_tokens_per_s=(
                s.observed_decode_tokens_per_s or p.decode_tokens_per_s
            ) / decode,
        ),
    )  # fmt: skip


def _gateway_region() -> str:
    return str(settings.TESSERACT_GATEWAY_REGION)


_SERIALS = itertools.count()


class Watch:
    """One attempt under observation: a late timer while it waits, a sample when it ends."""

    __slots__ = (
        "_attempt", "_decode", "_handle", "_observed", "_rtt_ms", "_serial", "_trial", "_ttft",
    )  # fmt: skip

    def __init__(
        self,
        observed: Observed,
        attempt: Attempt,
        ttft: float,
        decode: float,
        rtt_ms: float,
        trial: bool,
    ) -> None:
        self._observed = observed
        self._attempt = attempt
        self._serial = next(_SERIALS)  # this request's place in the order they were sent
        self._ttft, self._decode = ttft, decode  # the factors its prediction was made with
        self._rtt_ms = rtt_ms
        self._trial = trial
        delay = max(LATE_FACTOR * (self._expected_ms() + observed.noise_ms) / 1000, LATE_MIN_S)
        self._handle: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            delay, self._late, delay
        )

    def _expected_ms(self) -> float:
        """What the first byte was predicted to take, past the round trip: queue + prefill
        (a whole answer: + decode of all its tokens)."""
        a = self._attempt
        assert a.choice is not None
        p = a.choice.prediction
        expected = p.queue_ms + p.prefill_ms
        if not a.call.parsed.stream:
            expected += p.decode_ms
        return expected

    def _late(self, waited_s: float) -> None:
        a = self._attempt
        self._handle = None
        if a.first_at is not None or a.choice is None:
            return
        waited_ms = waited_s * 1000 - self._rtt_ms
        p = a.choice.prediction
        slower = self._observed.slower(waited_ms, self._expected_ms(), learn=False)
        whole = not a.call.parsed.stream
        self._observed.bound(
            a.choice.backend_id,
            ttft=self._ttft * slower,
            decode=self._decode * slower if whole and p.decode_ms > 0 else 1.0,
        )
        self._handle = asyncio.get_running_loop().call_later(waited_s, self._late, 2 * waited_s)

    def close(self) -> None:
        """The attempt is over: fold in what it showed (if it got a first token)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        a = self._attempt
        try:
            if a.first_at is not None and a.choice is not None and a.status != "cancelled":
                self._sample(a)
        finally:
            if self._trial:
                self._trial = False
                if a.choice is not None:
                    self._observed._trial_over(a.choice.backend_id)

    def _sample(self, a: Attempt) -> None:
        assert a.choice is not None
        assert a.first_at is not None
        p = a.choice.prediction
        first_ms = (a.first_at - a.sent_at) * 1000 - self._rtt_ms - p.queue_ms
        if not a.call.parsed.stream:
            # A whole answer: one factor for prefill and the decode of its tokens.
            n = a.output_tokens
            max_out = a.call.parsed.route.max_output_tokens
            if n is None or max_out <= 0:
                return
            expected = p.prefill_ms + p.decode_ms * n / max_out
            slower = self._observed.slower(first_ms, expected)
            self._observed.sample(
                a.choice.backend_id,
                ttft=self._ttft * slower,
                decode=self._decode * slower,
                source=self._serial,
            )
            return
        ttft = self._ttft * self._observed.slower(first_ms, p.prefill_ms)
        decode = None
        n = a.output_tokens if a.output_tokens is not None else a.counted_chunks
        max_out = a.call.parsed.route.max_output_tokens
        if a.done_at is not None and n - 1 >= MIN_DECODE_TOKENS and max_out > 0:
            span_ms = (a.done_at - a.first_at) * 1000
            expected = p.decode_ms * (n - 1) / max_out
            decode = self._decode * self._observed.slower(span_ms, expected)
        self._observed.sample(a.choice.backend_id, ttft=ttft, decode=decode, source=self._serial)


#: A read of everyone's in-flight counts older than this (seconds; Redis went away) is
#: no longer laid over the live maps' own count.
SHARED_STALE_S = 2.0


@dataclass(slots=True)
class _SharedRead:
    """Everyone's in-flight counts as one read found them (`InFlight.read`)."""

    #: model → backend → (holding a slot, waiting for one) then (`livestate.occupancy`
    #: of every gateway's count, this process's part exact)
    by_model: dict[str, dict[str, tuple[float, float]]]
    #: gateway processes with requests in flight, this one included
    gateways: int
    at: float


class InFlight:
    """Requests this process has sent to each backend and not yet finished, and
    everyone's as this process last read them (`share_inflight`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._counts: defaultdict[str, int] = defaultdict(int)
        self._by_model: defaultdict[str, set[str]] = defaultdict(set)
        self._clock = clock
        self._shared: _SharedRead | None = None  # the last read of everyone's counts
        self._live: Mapping[str, int] | None = None  # without one: the live maps' read ...
        self._at_read: dict[str, int] = {}  # ... and this process's counts at the read

    def start(self, backend_id: str, model: str) -> None:
        self._counts[backend_id] += 1
        self._by_model[model].add(backend_id)

    def finish(self, backend_id: str) -> None:
        self._counts[backend_id] -= 1

    def read(
        self,
        per_process: Mapping[str, Mapping[str, int]],
        me: str,
        snapshot: Snapshot,
        live: LiveMaps | None = None,
    ) -> None:
        """Take everyone's in-flight counts as just read from Redis (`per_process`:
        process → backend → count). This process's own entry there is as old as its
        last publication; its count now is exact, and stands in for it."""
        mine = self.counts()
        others: dict[str, int] = {}
        gateways = 1  # this one, about to send if it has nothing in flight yet
        for process, counts in per_process.items():
            if process == me or not counts:
                continue
            gateways += 1
            for slug, n in counts.items():
                others[slug] = others.get(slug, 0) + n
        deployments = live.deployments if live is not None else {}
        by_model: dict[str, dict[str, tuple[float, float]]] = {}
        for b in snapshot.backends:
            shared = others.get(b.id, 0) + mine.get(b.id, 0)
            load = livestate.occupancy(shared, deployments.get(b.id))
            by_model.setdefault(b.model, {})[b.id] = load
        self._shared = _SharedRead(by_model, gateways, self._clock())
        self._at_read = mine

    def apply(
        self,
        snapshot: Snapshot,
        model: str,
        org_id: int | None = None,
        *,
        live: LiveMaps | None = None,
    ) -> Snapshot:
        """The snapshot with `model`'s in-flight counts as this process can best tell.

        The last read of everyone's counts (`read`, every `INFLIGHT_PUBLISH_S`) gives each
        backend's count then; failing a recent one, the snapshot's count, every
        gateway's as of the live read `live`. Since then this process knows what it sent
        and saw finish, and takes that change for its share of everyone's
        (`routing.engine.projected_in_flight`).
        """
        shared = self._shared
        if shared is not None and self._clock() - shared.at > SHARED_STALE_S:
            shared = self._shared = None  # Redis is away: back to the live maps' count
            self._live = None
        # (the read's own counts, not the maps: a rest laid over them is no new read)
        read = live.inflight if live is not None else None
        if shared is None and read is not self._live:
            self._live = read
            self._at_read = {slug: n for slug, n in self._counts.items() if n}
        ids = self._by_model.get(model, ())
        base = shared.by_model.get(model) if shared is not None else None
        if not ids and not base:
            return snapshot
        load: dict[str, tuple[float, float]] = {}  # laid over `base`
        if shared is not None:
            gateways = shared.gateways
        else:
            gateways = live.gateways if live is not None else 1
        for i in ids:
            at_read = self._at_read.get(i, 0)
            count = self._counts[i]
            if base is not None and i in base:
                if count == at_read:
                    continue
                was, queued = base[i]
            else:
                try:
                    state = snapshot.backend(i).state
                except KeyError:  # it left the catalog (its private cluster was removed)
                    continue
                was, queued = state.in_flight, state.queued
            # the projection is on everyone's requests at the backend, queued or not
            total = projected_in_flight(was + queued, count, at_read, gateways)
            queued = min(queued, total)
            load[i] = (total - queued, queued)
        return snapshot.with_load(load, models=(model,), org_id=org_id, base=base)

    def counts(self) -> dict[str, int]:
        return {slug: n for slug, n in self._counts.items() if n > 0}


async def share_inflight(
    inflight: InFlight, redis: Any, process: str, holder: WorldHolder | None = None
) -> None:
    """Keep this process's in-flight counts in Redis for every other gateway to see, and
    read theirs (into `inflight`, with `holder`'s world) as often."""
    last: dict[str, int] | None = None
    last_at = 0.0
    while True:
        await asyncio.sleep(livestate.INFLIGHT_PUBLISH_S)
        counts = inflight.counts()
        now = time.monotonic()
        try:
            if counts != last or now - last_at >= livestate.INFLIGHT_TTL_S / 3:
                await livestate.ainflight_publish(redis, process, counts)
                last, last_at = counts, now
            world = holder.current if holder is not None else None
            if world is not None:
                per_process = await livestate.aread_inflight(redis)
                inflight.read(per_process, process, world.snapshot, world.live)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("could not share or read in-flight counts; retrying")


def connect_redis(url: str) -> Any:
    """The gateway's Redis client (`redis.asyncio`): a command that finds its pooled
    connection closed (Redis restarted) reconnects and is sent again, up to three
    times, instead of failing the request that happened to draw that connection.

    (A command whose reply was lost after Redis ran it then runs twice: harmless for
    what goes this way — affinity, the live maps, health. The hot path's admissions
    and usage records go through the client's own auto-pipelined connection,
    `accounts.autopipe`, which never sends a written command twice: a request whose
    admission was cut off gets a 503, and its usage record goes to the spool.)
    """
    from redis.exceptions import ConnectionError, TimeoutError

    return redis_client.connect_async(url, retry_on_error=[ConnectionError, TimeoutError])


async def listen_for_world_changes(holder: WorldHolder, redis_url: str) -> None:
    """Reload the catalog, or re-read the live maps, whenever the control plane says so."""
    world_channel, live_channel = WORLD_CHANNEL.encode(), livestate.CHANNEL.encode()
    backoff = 0.1
    while True:
        try:
            client = redis_client.connect_async(redis_url)
            async with await redis_client.pubsub_async(client) as pubsub:
                await pubsub.subscribe(world_channel, live_channel)
                holder.invalidate()  # changes may have been missed while away
                holder.listening.set()
                backoff = 0.1
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    if message["channel"] == live_channel:
                        holder.live_soon()
                    else:
                        await holder.reload_soon()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("world listener lost Redis; retrying in %.1fs", backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
