"""The route explainer, in process: the same code as `POST /v1/route` (the gateway's
parser and the engine's `route`), on the world as the catalog and the live maps
hold it now. No API key is needed: the signed-in member's page asks, and a dry run
routes nothing and bills nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from accounts import redis_client
from accounts.keycache import ResolvedKey
from backends.snapshot import World, load_world
from billing.models import UsageEvent
from routing.engine import route
from routing.errors import TesseractAPIError
from routing.gateway.core import check_strategy
from routing.gateway.parse import check_regions, parse_body

logger = logging.getLogger(__name__)

#: A key with no defaults: the explainer shows the policy exactly as entered.
_NO_KEY = ResolvedKey(
    id=0,
    org_id=0,
    org_slug="",
    lookup="",
    digest="",
    scopes=frozenset({"route"}),
    expires_at=None,
    revoked=False,
    default_regions=(),
    default_compliance=(),
    default_max_latency_ms=None,
    default_max_ttft_ms=None,
)


class ExplainError(Exception):
    """The request cannot be routed as entered (the gateway's 400 message)."""


def _world() -> World:
    world = load_world()
    try:
        from backends import livestate

        client = redis_client.connect(settings.REDIS_URL, socket_timeout=1)
        world = world.with_live(livestate.read(client))
    except Exception:  # the catalog alone still explains, as the gateway would route
        logger.warning("explainer: live maps unavailable; using the catalog alone")
    return world


def dry_run(body: dict[str, Any], *, world: World | None = None) -> dict[str, Any]:
    """The plan for `body` (a `/v1/route` body) as `/v1/route` answers it."""
    try:
        parsed = parse_body("route", body, [], _NO_KEY)
        strategy = check_strategy(parsed.strategy)
        world = world or _world()  # read only for a request that parsed
        check_regions(parsed, world.snapshot)
    except TesseractAPIError as exc:
        raise ExplainError(exc.message) from None
    plan = route(world.snapshot, parsed.route, strategy)
    result = plan.to_dict()
    result["ranked"] = [c for c in [result["primary"], *result["fallbacks"]] if c]
    return result


_OPTIONS = (
    "compliance",
    "jurisdictions",
    "countries",
    "regions",
    "max_ttft_ms",
    "max_latency_ms",
    "priority",
    "client_region",
    "allow_relaxed_deadline",
    "prefer_cost_over_latency",
)


@dataclass
class Why:
    """Why a stored request's backend won, recomputed from what was stored."""

    plan: dict[str, Any] | None
    rank: int | None  # where the served backend stands in today's plan (1 = first)
    error: str = ""
    computed_at: datetime | None = None


def why_it_won(event: UsageEvent, *, world: World | None = None) -> Why:
    """Route the stored request again — its model, its tokens and its constraints as
    routed — on the mesh as it is now. The served backend's rank and the reasons the
    others lose are today's; the page says so (the stored facts are shown beside)."""
    tesseract = {k: event.constraints[k] for k in _OPTIONS if k in event.constraints}
    body: dict[str, Any] = {
        "model": event.model,
        "input_tokens": event.input_tokens,
        "max_tokens": max(event.output_tokens, 1),
        "tesseract": tesseract,
    }
    try:
        plan = dry_run(body, world=world)
    except ExplainError as exc:
        return Why(plan=None, rank=None, error=str(exc))
    ids = [c["backend_id"] for c in plan["ranked"]]
    rank = ids.index(event.deployment) + 1 if event.deployment in ids else None
    return Why(plan=plan, rank=rank, computed_at=datetime.now(UTC))
