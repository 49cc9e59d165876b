"""Tesseract's routing engine: a pure function from (snapshot, request) to a plan.

Standard library and numpy only — never Django, DRF, Channels, Celery or Redis.

    from routing.engine import Backend, LatencyMap, Profile, Request, Snapshot, route
    plan = route(snapshot, request)            # strategy="deadline" by default
    plan.primary.backend_id, plan.fallbacks, plan.exclusions, plan.to_dict()

Modules: `inputs` (the input types), `mesh` (Snapshot and its per-model indexes),
`router` (`route()`: filters, prediction, SLA filter, degradation, explanations),
`decision` (one request's masks and predictions), `strategies` (the registry),
`plan` (the output and the reason codes).
"""

from .decision import Decision
from .inputs import (
    DEGRADED_FACTOR,
    OUT_COOLING,
    OUT_PROVIDER,
    Backend,
    Health,
    LatencyMap,
    LiveState,
    Profile,
    ProfileFigures,
    Request,
    build_backend,
    great_circle_km,
    physical_rtt_floor_ms,
)
from .mesh import ModelIndex, Snapshot
from .plan import (
    OUTAGE_CODES,
    POLICY_CODES,
    Choice,
    Degradation,
    Exclusion,
    Infeasibility,
    Plan,
    Prediction,
)
from .router import route
from .strategies import (
    BASELINES,
    CONTENTION_FROM,
    DEFAULT_STRATEGY,
    RESERVE_BY_PRIORITY,
    SAFETY_SHARE,
    STRATEGIES,
    TIE_MS,
    TIE_SHARE,
    TIE_SHARE_CONTENDED,
    Strategy,
    get_strategy,
    tie_band_ms,
)

__all__ = [
    "BASELINES",
    "CONTENTION_FROM",
    "DEFAULT_STRATEGY",
    "DEGRADED_FACTOR",
    "OUTAGE_CODES",
    "OUT_COOLING",
    "OUT_PROVIDER",
    "POLICY_CODES",
    "RESERVE_BY_PRIORITY",
    "SAFETY_SHARE",
    "STRATEGIES",
    "TIE_MS",
    "TIE_SHARE",
    "TIE_SHARE_CONTENDED",
    "Backend",
    "Choice",
    "Decision",
    "Degradation",
    "Exclusion",
    "Health",
    "Infeasibility",
    "LatencyMap",
    "LiveState",
    "ModelIndex",
    "Plan",
    "Prediction",
    "Profile",
    "ProfileFigures",
    "Request",
    "Snapshot",
    "Strategy",
    "build_backend",
    "get_strategy",
    "great_circle_km",
    "physical_rtt_floor_ms",
    "route",
    "tie_band_ms",
]
