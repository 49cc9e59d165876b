"""What `route()` returns: a ranked plan, and why every other candidate lost.

Reason codes (machine-readable, stable; `Exclusion.code`, `Infeasibility.code`):

    model_not_served  no backend serves the model at all (infeasible only)
    not_loaded        the model is not loaded on this backend
    drained           the backend is drained by an operator (kill switch)
    provider_out      its provider rejected our credential, has none, or is disabled
    cooling           its provider answered 429: it rests until the Retry-After
    down              health is DOWN
    compliance        a required certification is missing
    residency         jurisdiction / country / region not allowed
    price             blended price above the request's max price
    capacity          the backend's queue is full
    unreachable       no RTT known from the client to the backend's region
    sla_ttft          predicted TTFT above max_ttft_ms
    sla_latency       predicted end-to-end latency above max_latency_ms
    outranked         feasible, but the strategy preferred others

An infeasible plan's code says whose move it is. A policy code (`POLICY_CODES`) or an
SLA code: no backend of the catalog could serve the request as asked, even healthy
(the client must ask differently). An outage code (`OUTAGE_CODES`): backends the
policy allows exist, but every one of them is out right now (`Infeasibility.unavailable`
names them; the code is their most common reason, `capacity` if any is merely full):
the same request can succeed later.

`Plan.to_dict()` is the JSON body of `POST /v1/route`; infinities become null.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

HARD_CODES = (
    "not_loaded", "drained", "provider_out", "cooling", "down", "compliance", "residency",
    "price", "capacity", "unreachable",
)  # fmt: skip
SLA_CODES = ("sla_ttft", "sla_latency")
#: What the request's policy asks for (an empty match is the client's to change).
POLICY_CODES = ("compliance", "residency", "price", "unreachable")
#: Why a backend the policy allows cannot take a request now (ours, and temporary).
OUTAGE_CODES = ("not_loaded", "drained", "provider_out", "cooling", "down", "capacity")


def _num(x: float | None, nd: int = 3) -> float | None:
    if x is None or math.isinf(x) or math.isnan(x):
        return None
    return round(float(x), nd)


class Prediction(NamedTuple):
    """Where the time goes, ms.

    ttft = health·(rtt + prefill) + queue; total = ttft + health·decode.
    """

    rtt_ms: float
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    ttft_ms: float
    total_ms: float


class Choice(NamedTuple):
    """One ranked candidate. A NamedTuple: immutable, and cheap to build on the hot path."""

    backend_id: str
    model: str
    region: str
    prediction: Prediction
    price_per_mtok: float  # blended over this request's tokens
    cost_usd: float  # predicted cost of this request at list price
    score: float  # the strategy's own number (lower is better), for explanations
    meets_sla: bool

    def predicted(self) -> dict:
        """The prediction, rounded for a response (`to_dict()["predicted"]`)."""
        return {k: _num(v) for k, v in self.prediction._asdict().items()}

    def to_dict(self) -> dict:
        return {
            "backend_id": self.backend_id,
            "model": self.model,
            "region": self.region,
            "predicted": self.predicted(),
            "price_per_mtok": _num(self.price_per_mtok, 6),
            "cost_usd": _num(self.cost_usd, 9),
            "score": _num(self.score, 9),
            "meets_sla": self.meets_sla,
        }


class Exclusion(NamedTuple):
    backend_id: str
    code: str
    detail: str

    def to_dict(self) -> dict:
        return {"backend_id": self.backend_id, "code": self.code, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Infeasibility:
    """Nothing could serve the request as asked: the binding constraint, and how close we got.

    `best_*` are over the policy-allowed backends (compliance, residency, health,
    drain, price pass; capacity and SLA ignored); None when there is none.
    `unavailable`: for an outage code, the backends the policy allows, all out now.
    """

    model: str
    code: str
    detail: str
    best_ttft_ms: float | None = None
    best_total_ms: float | None = None
    best_backend_id: str | None = None
    unavailable: tuple[str, ...] = ()

    @property
    def outage(self) -> bool:
        """Backends the policy allows exist, but all are out now (retry later)."""
        return self.code in OUTAGE_CODES

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "code": self.code,
            "detail": self.detail,
            "best_ttft_ms": _num(self.best_ttft_ms),
            "best_total_ms": _num(self.best_total_ms),
            "best_backend_id": self.best_backend_id,
            "unavailable": list(self.unavailable),
        }


@dataclass(frozen=True, slots=True)
class Degradation:
    """The plan serves less than was asked, in a way the request allowed."""

    kind: str  # "fallback_model" | "relaxed_deadline"
    from_model: str
    to_model: str
    reason: Infeasibility  # why the request as asked could not be served

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "from_model": self.from_model,
            "to_model": self.to_model,
            "reason": self.reason.to_dict(),
        }


class Plan:
    """Primary, ordered fallbacks, and the reason each other candidate lost.

    `status` is "ok", "degraded" or "infeasible". `exclusions` are computed on first
    access (a decision must not pay for 500 sentences nobody reads). `hold_ms` > 0:
    the strategy would rather the gateway held the request that long and routed it
    again than send it now (`Strategy.hold_ms`); the primary is where it goes if not.
    """

    __slots__ = (
        "_exclusions",
        "_explain",
        "considered",
        "degraded",
        "fallbacks",
        "hold_ms",
        "infeasible",
        "model",
        "primary",
        "snapshot_version",
        "status",
        "strategy",
    )  # fmt: skip

    def __init__(
        self,
        *,
        status: str,
        strategy: str,
        model: str,
        snapshot_version: int | str,
        primary: Choice | None,
        fallbacks: tuple[Choice, ...],
        considered: int,
        degraded: Degradation | None = None,
        infeasible: Infeasibility | None = None,
        explain: Callable[[], tuple[Exclusion, ...]] | None = None,
        hold_ms: float = 0.0,
    ) -> None:
        self.status = status
        self.strategy = strategy
        self.model = model
        self.snapshot_version = snapshot_version
        self.primary = primary
        self.fallbacks = fallbacks
        self.considered = considered
        self.degraded = degraded
        self.infeasible = infeasible
        self.hold_ms = hold_ms
        self._explain = explain
        self._exclusions: tuple[Exclusion, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.primary is not None

    @property
    def choices(self) -> tuple[Choice, ...]:
        return (() if self.primary is None else (self.primary,)) + self.fallbacks

    @property
    def exclusions(self) -> tuple[Exclusion, ...]:
        if self._exclusions is None:
            self._exclusions = self._explain() if self._explain else ()
        return self._exclusions

    def reason_for(self, backend_id: str) -> Exclusion | None:
        for e in self.exclusions:
            if e.backend_id == backend_id:
                return e
        return None

    def to_dict(self) -> dict:
        return {
            "status": self.status,
            "strategy": self.strategy,
            "model": self.model,
            "snapshot_version": self.snapshot_version,
            "considered": self.considered,
            "hold_ms": self.hold_ms,
            "primary": None if self.primary is None else self.primary.to_dict(),
            "fallbacks": [c.to_dict() for c in self.fallbacks],
            "degraded": None if self.degraded is None else self.degraded.to_dict(),
            "infeasible": None if self.infeasible is None else self.infeasible.to_dict(),
            "excluded": [e.to_dict() for e in self.exclusions],
        }

    def __repr__(self) -> str:
        first = self.primary.backend_id if self.primary else None
        n = len(self.fallbacks)
        return f"<Plan {self.status} {self.strategy} {self.model} primary={first} +{n}>"
