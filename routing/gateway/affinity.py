"""Session affinity: keep a conversation on the deployment that holds its context.

`session_id` → the deployment that served the session last and how many tokens of
context it holds, in Redis (`tesseract:affinity:<org>:<session>`, expiring after
`TESSERACT_AFFINITY_TTL_S` of silence), shared by every gateway. Each is read and
written alone, so it carries no hash tag: on Redis Cluster a big org's sessions spread
over every shard instead of piling onto its limits' slot. The engine is told
(`affinity_backend_id`, `cached_prefix_tokens`): that backend skips re-prefilling the
context, every other one pays the recompute.

The rule on top: a session stays where it is whenever that backend meets the
request's deadline, even if another is predicted faster or cheaper; it moves only
when staying would break the deadline (or the backend is excluded: down, drained,
out of policy), and the move is recorded (`SessionMove`) with the reason. The plan
object is reordered in place (it is the request's own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings

from routing.engine import Choice, Plan, Request
from routing.gateway.db import off_loop

logger = logging.getLogger(__name__)

PREFIX = "tesseract:affinity:"


def _key(org_id: int, session_id: str) -> str:
    return f"{PREFIX}{org_id}:{session_id}"


@dataclass(frozen=True, slots=True)
class Held:
    backend_id: str
    context_tokens: int


async def held(redis: Any, org_id: int, session_id: str) -> Held | None:
    raw = await redis.get(_key(org_id, session_id))
    if raw is None:
        return None
    backend_id, _, tokens = raw.decode().rpartition("|")
    return Held(backend_id, int(tokens or 0))


def with_affinity(request: Request, holder: Held | None) -> Request:
    if holder is None:
        return request
    return replace(
        request,
        affinity_backend_id=holder.backend_id,
        cached_prefix_tokens=min(holder.context_tokens, request.input_tokens),
    )


def stay_if_possible(
    plan: Plan, holder: Held | None, rank_holder: Callable[[], Choice | None]
) -> str | None:
    """Put the session's backend first in `plan` when it meets the deadline.

    `rank_holder` predicts the holder alone (for when the plan, which keeps only the
    best few, does not list it). Returns why the session has to move, or None.
    """
    if holder is None or plan.primary is None or plan.primary.backend_id == holder.backend_id:
        return None
    excluded = plan.reason_for(holder.backend_id)
    if excluded is not None and excluded.code != "outranked":  # feasible, merely not first
        return f"{excluded.code}: {excluded.detail}"
    choice = next((c for c in plan.fallbacks if c.backend_id == holder.backend_id), None)
    if choice is None:
        choice = rank_holder()
    if choice is None:
        return "no longer a candidate"
    if not choice.meets_sla:
        return f"staying would miss the deadline (predicted {choice.prediction.ttft_ms:.0f} ms)"
    others = tuple(c for c in plan.choices if c.backend_id != holder.backend_id)
    plan.primary, plan.fallbacks = choice, others[: max(len(plan.fallbacks), 1)]
    return None


async def remember(
    redis: Any, org_id: int, session_id: str, backend_id: str, context_tokens: int
) -> None:
    await redis.set(
        _key(org_id, session_id),
        f"{backend_id}|{context_tokens}",
        ex=settings.TESSERACT_AFFINITY_TTL_S,
    )


def _record_move(org_id: int, session_id: str, src: str, dst: str, reason: str) -> None:
    from backends.models import SessionMove

    SessionMove.objects.create(
        org_id=org_id, session_id=session_id, from_deployment=src, to_deployment=dst,
        reason=reason[:300],
    )  # fmt: skip


async def record_move(org_id: int, session_id: str, src: str, dst: str, reason: str) -> None:
    logger.info("session %s moves %s → %s: %s", session_id, src, dst, reason)
    await off_loop(_record_move)(org_id, session_id, src, dst, reason)
