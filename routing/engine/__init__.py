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
    LATE_QUEUE_FACTOR,
    NO_DEADLINE_MS,
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
from .mesh import ModelIndex, Snapshot, projected_in_flight
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
    DEFAULT_STRATEGY,
    FINISH_BAND_SHARE,
    HOLD_CAP_MS,
    HOLD_LOOSE,
    HOLD_STEP_MS,
    LATE_REACH_MIN_MS,
    LATE_REACH_SHARE,
    SAFETY_SHARE,
    SPREAD_WHEN_FREE,
    STRATEGIES,
    Strategy,
    get_strategy,
)

__all__ = [
    "BASELINES",
    "DEFAULT_STRATEGY",
    "DEGRADED_FACTOR",
    "FINISH_BAND_SHARE",
    "HOLD_CAP_MS",
    "HOLD_LOOSE",
    "HOLD_STEP_MS",
    "LATE_QUEUE_FACTOR",
    "LATE_REACH_MIN_MS",
    "LATE_REACH_SHARE",
    "NO_DEADLINE_MS",
    "OUTAGE_CODES",
    "OUT_COOLING",
    "OUT_PROVIDER",
    "POLICY_CODES",
    "SAFETY_SHARE",
    "SPREAD_WHEN_FREE",
    "STRATEGIES",
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
    "projected_in_flight",
    "route",
]
