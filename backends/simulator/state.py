"""The run-time state of one simulated deployment: slots and queue, faults, model loading.

Everything here runs on the event loop thread; nothing needs a lock.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

from backends.world import DeploymentSpec, WorldSpec, cold_start_s

from .metrics import Metrics
from .persona import Persona
from .protocol import invalid

FAULTS = ("none", "error", "slow", "down", "hang", "rate_limited")


class Slots:
    """Concurrency slots with a queue; `running` and `waiting` feed the metrics.

    Waiting requests are admitted lowest `priority` first, in arrival order among
    equals, as vLLM's priority scheduling does (without its preemption of running
    requests); a request that gives none (0) waits in arrival order with the others.
    A request takes one slot per sequence it computes (`count`, OpenAI's `n`), as vLLM
    runs each choice as a sequence of its own within `max_num_seqs`, and both gauges
    count sequences; a request for more than there are slots takes them all (vLLM
    would run its sequences a few at a time). The head of the queue waits until its
    sequences fit: a smaller request behind it does not overtake it. The capacity can
    change at run time; when it shrinks below the running count, nobody is admitted
    until enough requests finish.
    """

    __slots__ = ("_arrivals", "_waiters", "capacity", "running")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.running = 0  # sequences computing
        #: a heap of (priority, arrival, sequences, future)
        self._waiters: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Sequences waiting for a slot."""
        return sum(count for _, _, count, _ in self._waiters)

    async def acquire(self, priority: int = 0, count: int = 1) -> int:
        """Wait for `count` slots (at most all of them); return how many were taken,
        which the caller gives back to `release`."""
        count = max(1, min(count, self.capacity))
        if self.running + count <= self.capacity and not self._waiters:
            self.running += count
            return count
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._arrivals), count, fut)
        heapq.heappush(self._waiters, entry)
        self._wake()  # it may sort ahead of a head that waits for more than is free
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(count)  # admitted and cancelled in the same tick: give it back
            elif entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
                self._wake()  # it may have held back smaller requests behind it
            raise
        return count

    def release(self, count: int = 1) -> None:
        self.running -= count
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            _, _, count, fut = self._waiters[0]
            if fut.done():  # its waiter is gone (the cancel above removes it, too)
                heapq.heappop(self._waiters)
                continue
            # A request queued for more slots than the capacity has shrunk to goes in
            # once nothing runs, as one that asks for more than there are does.
            fits = self.running + count <= self.capacity
            if not (fits or (self.running == 0 and self.capacity > 0)):
                return
            heapq.heappop(self._waiters)
            self.running += count
            fut.set_result(None)


@dataclass(slots=True)
class Fault:
    kind: str = "none"
    error_rate: float = 1.0
    slow_factor: float = 5.0
    #: a stream ends abruptly after this many tokens (None: never)
    error_after_tokens: int | None = None
    #: a stream stops sending after this many tokens and keeps the connection open
    #: until the client gives up (None: never); a non-streamed request never answers
    stall_after_tokens: int | None = None
    #: "rate_limited": every generation gets 429 with this Retry-After (seconds)
    retry_after_s: float = 1.0


@dataclass
class SimDeployment:
    """One deployment of the world as the simulator serves it."""

    spec: DeploymentSpec
    region: str
    chip: str
    parameters_b: float
    context_length: int
    rtt_ms: float
    slots: Slots
    max_waiting: int
    fault: Fault = field(default_factory=Fault)
    loaded: bool = True
    #: loop time at which a cold start in progress ends
    loading_until: float | None = None
    metrics: Metrics = field(default_factory=Metrics)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    #: behaves like a real provider's API (`persona.py`); None: the plain simulator
    persona: Persona | None = None

    @classmethod
    def build(cls, world: WorldSpec, spec: DeploymentSpec, gateway_region: str) -> SimDeployment:
        cluster = world.clusters[spec.cluster]
        model = world.models[spec.model]
        return cls(
            spec=spec,
            region=cluster.region,
            chip=cluster.chip,
            parameters_b=model.parameters_b,
            context_length=model.context_length,
            rtt_ms=world.rtt_ms(gateway_region, cluster.region),
            slots=Slots(spec.concurrency_slots),
            max_waiting=4 * spec.concurrency_slots,
            rng=random.Random(spec.slug),
        )

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def model_id(self) -> str:
        """The id requests must name and answers carry: the persona's own, or the slug."""
        if self.persona is not None and self.persona.model_id:
            return self.persona.model_id
        return self.spec.model

    @property
    def cold_start_s(self) -> float:
        return cold_start_s(self.parameters_b)

    def availability(self, now: float) -> str:
        """ "ready", "loading" or "unloaded" (a finished cold start is noticed lazily)."""
        if self.loading_until is not None:
            if now < self.loading_until:
                return "loading"
            self.loading_until = None
            self.loaded = True
        return "ready" if self.loaded else "unloaded"

    def ttft_s(self, prompt_tokens: int) -> float:
        """Unscaled model time from admission to the first token."""
        p = self.spec.profile
        return p.ttft_floor_ms / 1000.0 + prompt_tokens / p.prefill_tokens_per_s

    @property
    def token_interval_s(self) -> float:
        return 1.0 / self.spec.profile.decode_tokens_per_s

    # ------------------------------------------------------------------ control

    def apply_control(self, body: Any, *, now: float, time_scale: float) -> None:
        """Apply a control request: `fault` first (it resets the fault), then the rest."""
        if not isinstance(body, dict):
            raise invalid("the control body must be a JSON object")
        known = {
            "fault", "error_rate", "slow_factor", "error_after_tokens", "stall_after_tokens",
            "loaded", "concurrency_slots", "max_waiting", "retry_after_s", "persona",
        }  # fmt: skip
        unknown = set(body) - known
        if unknown:
            raise invalid(f"unknown control fields: {sorted(unknown)}", param=sorted(unknown)[0])
        new = replace(self.fault)
        if "fault" in body:
            if body["fault"] not in FAULTS:
                raise invalid(f"'fault' must be one of {', '.join(FAULTS)}", param="fault")
            new = Fault(kind=body["fault"])
        if "error_rate" in body:
            new.error_rate = _number(body, "error_rate", low=0.0, high=1.0)
        if "slow_factor" in body:
            new.slow_factor = _number(body, "slow_factor", low=0.0, high=math.inf)
        if "error_after_tokens" in body:
            value = body["error_after_tokens"]
            if value is not None:
                value = int(_number(body, "error_after_tokens", low=0, high=math.inf, integer=True))
            new.error_after_tokens = value
        if "stall_after_tokens" in body:
            value = body["stall_after_tokens"]
            if value is not None:
                value = int(_number(body, "stall_after_tokens", low=0, high=math.inf, integer=True))
            new.stall_after_tokens = value
        if "retry_after_s" in body:
            new.retry_after_s = _number(body, "retry_after_s", low=0.0, high=86400.0)
        persona: Persona | bool | None = False  # False: unchanged
        if "persona" in body:
            persona = None if body["persona"] is None else Persona.parse(body["persona"])
        slots = max_waiting = None
        if "concurrency_slots" in body:
            slots = int(_number(body, "concurrency_slots", low=1, high=math.inf, integer=True))
        if "max_waiting" in body:
            max_waiting = int(_number(body, "max_waiting", low=0, high=math.inf, integer=True))
        loaded = body.get("loaded")
        if "loaded" in body and not isinstance(loaded, bool):
            raise invalid("'loaded' must be a boolean", param="loaded", code="invalid_type")

        # Validated: apply.
        self.fault = new
        if persona is not False:
            self.persona = persona  # type: ignore[assignment]
        if slots is not None:
            self.slots.resize(slots)
        if max_waiting is not None:
            self.max_waiting = max_waiting
        if loaded is False:
            self.loaded, self.loading_until = False, None
        elif loaded is True and self.availability(now) == "unloaded":
            self.loading_until = now + self.cold_start_s * time_scale

    def state(self, *, now: float, time_scale: float, gateway_region: str) -> dict[str, Any]:
        p = self.spec.profile
        availability = self.availability(now)
        return {
            "simulator": True,
            "deployment": self.spec.slug,
            "model": self.model,
            "cluster": self.spec.cluster,
            "region": self.region,
            "chip": self.chip,
            "gateway_region": gateway_region,
            "rtt_ms": self.rtt_ms,
            "profile": {
                "ttft_ms": p.ttft_ms,
                "ttft_floor_ms": p.ttft_floor_ms,
                "reference_prompt_tokens": p.reference_prompt_tokens,
                "prefill_tokens_per_s": p.prefill_tokens_per_s,
                "decode_tokens_per_s": p.decode_tokens_per_s,
            },
            "concurrency_slots": self.slots.capacity,
            "running": self.slots.running,
            "waiting": self.slots.waiting,
            "max_waiting": self.max_waiting,
            "fault": {
                "fault": self.fault.kind,
                "error_rate": self.fault.error_rate,
                "slow_factor": self.fault.slow_factor,
                "error_after_tokens": self.fault.error_after_tokens,
                "stall_after_tokens": self.fault.stall_after_tokens,
                "retry_after_s": self.fault.retry_after_s,
            },
            "persona": None if self.persona is None else self.persona.state(),
            "loaded": availability == "ready",
            "availability": availability,
            "loading_remaining_s": (
                round(max(self.loading_until - now, 0.0), 6)
                if self.loading_until is not None
                else None
            ),
            "cold_start_s": self.cold_start_s,
            "time_scale": time_scale,
        }


def _number(body: dict, name: str, *, low: float, high: float, integer: bool = False) -> float:
    value = body[name]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        kind = "an integer" if integer else "a number"
        raise invalid(f"'{name}' must be {kind}", param=name, code="invalid_type")
    if not low <= value <= high:
        raise invalid(f"'{name}' must be between {low} and {high}", param=name)
    return float(value)
