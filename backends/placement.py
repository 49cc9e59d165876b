"""Placement, the service: gather the planner's inputs, then record or apply its plan.

The decision itself (which model to load where, which copy to unload, and why) is the
pure `backends.planner`; its module docstring states the rules. This module is what
surrounds it, and is kept thin:

* **Inputs.** Demand by (client region × model) and the requests each deployment served,
  from `billing.UsageEvent` over the last `TESSERACT_PLACEMENT_WINDOW_S`; the catalog's
  deployments as planner `Site`s and each cluster's capacity; the RTT map the gateways
  route on (the catalog's, with the live probe measurements from Redis over it); the
  `PlacementAction` history (cooldowns, cold starts still running).
* **Decisions out.** `placement_run()` (the Celery task `backends.tasks.placement`
  calls it) plans and — as `ControlSettings.placement_mode` says — either records the
  proposals as recommendations, or applies them through each backend's control API and
  records what happened; an applied action sets `Deployment.loaded`, whose post_save
  signal tells every gateway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import Count
from django.db.models.fields.json import KT
from django.utils import timezone
from redis.exceptions import LockError

from backends import livestate
from backends.models import Cluster, ControlSettings, Deployment, Health, PlacementAction
from backends.planner import (
    LOAD,
    Action,
    LastAction,
    Plan,
    Room,
    RttMap,
    Rules,
    Site,
    accelerators_for,
    placement_plan,
    unrecorded,
)
from backends.snapshot import load_world
from backends.world import cold_start_s
from billing.models import UsageEvent

logger = logging.getLogger(__name__)

#: How long one control call may take; the task's time limit covers a few dozen.
CONTROL_TIMEOUT_S = 5.0
#: Two runs never overlap (beat can fire while a slow run is still applying).
LOCK_KEY = "tesseract:placement:lock"
LOCK_TIMEOUT_S = 120


# --------------------------------------------------------------------------- inputs


def demand_by_region(*, since: datetime, default_region: str) -> dict[tuple[str, str], int]:
    """(client region, model) -> requests since `since`, across every tenant.

    A control-plane aggregate, never shown to a tenant: it names no organisation.
    Requests served by an organization's private cluster are its own traffic, not
    demand for the public mesh, and are left out.
    """
    private = Deployment.objects.exclude(cluster__organization=None).values("slug")
    rows = (
        UsageEvent.objects.filter(created_at__gte=since)
        .exclude(deployment__in=private)
        .values("model", client_region=KT("constraints__client_region"))
        .annotate(requests=Count("id"))
        .order_by()
    )
    out: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["client_region"] or default_region, row["model"])
        out[key] = out.get(key, 0) + row["requests"]
    return out


def served_by_deployment(*, since: datetime) -> dict[str, int]:
    """Deployment slug -> requests since `since` that ran on it (any tenant)."""
    rows = (
        UsageEvent.objects.filter(created_at__gte=since)
        .exclude(deployment="")
        .values_list("deployment")
        .annotate(requests=Count("id"))
        .order_by()
    )
    return dict(rows)


def sites_from_catalog() -> tuple[list[Site], dict[str, int], dict[str, Deployment]]:
    """The planner's view of every public deployment, each cluster's capacity, and the rows.

    Private clusters are their organizations' own: placement never loads or unloads
    a model there, nor counts on them to serve public demand.
    """
    deployments = {
        d.slug: d
        for d in Deployment.objects.public()
        .select_related("cluster__region", "chip", "model")
        .order_by("slug")
    }
    sites = []
    for d in deployments.values():
        parameters_b = float(d.model.parameters_b)
        sites.append(
            Site(
                slug=d.slug,
                cluster=d.cluster.slug,
                region=d.cluster.region.slug,
                model=d.model.slug,
                loaded=d.loaded,
                slots=d.concurrency_slots,
                accelerators=accelerators_for(parameters_b, d.chip.memory_gb),
                cold_start_s=cold_start_s(parameters_b),
                routable=not (
                    d.drained
                    or d.cluster.drained
                    or d.cluster.region.drained
                    or d.health == Health.DOWN
                ),
            )
        )
    capacity = dict(Cluster.objects.public().values_list("slug", "accelerators"))
    return sites, capacity, deployments


def last_actions(*, since: datetime) -> dict[str, LastAction]:
    """Each deployment's latest applied or failed action since `since`."""
    out: dict[str, LastAction] = {}
    rows = (
        PlacementAction.objects.filter(
            created_at__gte=since,
            status__in=[PlacementAction.Status.APPLIED, PlacementAction.Status.FAILED],
        )
        .order_by("-created_at", "-pk")
        .values_list("deployment__slug", "kind", "status", "created_at", "applied_at")
    )
    for slug, kind, status, created_at, applied_at in rows:
        if slug not in out:
            at = applied_at or created_at
            out[slug] = LastAction(kind=kind, status=status, at=at.timestamp())
    return out


def latency_map(client: Any) -> RttMap:
    """The RTT map the gateways route on: the catalog's, with probe measurements over it."""
    return load_world().with_live(livestate.read(client)).snapshot.latency


def standing_recommendations(*, since: datetime) -> list[tuple[str, str]]:
    """(deployment slug, kind) of proposals recommended since `since` that stand: still
    waiting for an operator, or dismissed by one (not proposed again in the cooldown)."""
    return list(
        PlacementAction.objects.filter(
            status__in=[PlacementAction.Status.RECOMMENDED, PlacementAction.Status.DISMISSED],
            created_at__gte=since,
        ).values_list("deployment__slug", "kind")
    )


def control_url(deployment: Deployment) -> str | None:
    """`{base}/d/<slug>/control` from an endpoint `{base}/d/<slug>/v1`; None where the
    backend has no control API (a provider's OpenAI-compatible endpoint)."""
    if deployment.adapter != Deployment.Adapter.SIMULATOR:
        return None
    base = deployment.endpoint_url.rstrip("/")
    if not base.endswith("/v1"):
        return None
    return base[: -len("/v1")] + "/control"


# --------------------------------------------------------------------------- decisions out


@dataclass
class PlacementRun:
    mode: str
    plan: Plan | None = None
    #: what this run recorded
    recorded: list[PlacementAction] = field(default_factory=list)
    #: proposals already standing as recommendations (recommend mode), not recorded again
    standing: list[str] = field(default_factory=list)
    #: another run held the lock
    busy: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "busy": self.busy,
            "actions": [
                {"deployment": a.deployment.slug, "kind": a.kind, "status": a.status}
                for a in self.recorded
            ],
            "standing": self.standing,
            "held": list(self.plan.held) if self.plan else [],
            "deferred": list(self.plan.deferred) if self.plan else [],
        }


def placement_run(
    *,
    client: Any,
    now: datetime | None = None,
    http: httpx.Client | None = None,
    rules: Rules | None = None,
) -> PlacementRun:
    """Plan placement from the last window of demand, then record or apply it.

    Safe to run twice, and concurrently: a Redis lock lets one run at a time, and a
    second run finds the first one's actions in its history (cooldown) or its
    recommendations standing.
    """
    mode = ControlSettings.current().placement_mode
    lock = client.lock(LOCK_KEY, timeout=LOCK_TIMEOUT_S, blocking=False)
    if not lock.acquire():
        return PlacementRun(mode=mode, busy=True)
    try:
        return _run(client=client, mode=mode, now=now or timezone.now(), http=http, rules=rules)
    finally:
        try:
            lock.release()
        except LockError:  # expired meanwhile: nothing to release
            logger.warning("the placement lock expired before the run ended")


def _run(
    *, client: Any, mode: str, now: datetime, http: httpx.Client | None, rules: Rules | None
) -> PlacementRun:
    rules = rules or Rules(window_s=float(settings.TESSERACT_PLACEMENT_WINDOW_S))
    sites, capacity, deployments = sites_from_catalog()
    horizon = max(rules.cooldown_s, max((s.cold_start_s for s in sites), default=0.0))
    since = now - timedelta(seconds=rules.window_s)
    plan = placement_plan(
        demand=demand_by_region(since=since, default_region=settings.TESSERACT_GATEWAY_REGION),
        served=served_by_deployment(since=since),
        sites=sites,
        capacity=capacity,
        rtt=latency_map(client),
        history=last_actions(since=now - timedelta(seconds=horizon)),
        now=now.timestamp(),
        rules=rules,
        home_region=settings.TESSERACT_GATEWAY_REGION,
    )
    run = PlacementRun(mode=mode, plan=plan)
    if mode != ControlSettings.PlacementMode.APPLY:
        standing = standing_recommendations(since=now - timedelta(seconds=rules.cooldown_s))
        fresh, run.standing = unrecorded(plan.actions, standing)
        for action in fresh:
            run.recorded.append(
                _record(deployments[action.slug], action, PlacementAction.Status.RECOMMENDED, now)
            )
        return run

    room = Room.of(sites, capacity)
    by_slug = {s.slug: s for s in sites}
    own_http = http is None
    http = http or httpx.Client(timeout=CONTROL_TIMEOUT_S)
    try:
        for action in plan.actions:
            site, deployment = by_slug[action.slug], deployments[action.slug]
            status: str
            if action.kind == LOAD and not room.fits(site):
                # An unload this load was counting on failed.
                status, note = PlacementAction.Status.FAILED, "not applied: no free capacity left"
            else:
                status, note = _apply(deployment, action.kind == LOAD, http)
            if status == PlacementAction.Status.APPLIED:
                room.applied(site, action.kind)
            run.recorded.append(_record(deployment, action, status, now, note=note))
    finally:
        if own_http:
            http.close()
    return run


def _apply(deployment: Deployment, load: bool, http: httpx.Client) -> tuple[str, str]:
    """Ask the backend to load or unload; (status, what it said)."""
    url = control_url(deployment)
    if url is None:
        return (
            PlacementAction.Status.FAILED,
            f"not applied: a {deployment.get_adapter_display()} backend has no control API; "
            "load or unload it at the provider, then set `loaded` in the catalog",
        )
    try:
        response = http.post(url, json={"loaded": load}, timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        state = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return PlacementAction.Status.FAILED, f"not applied: the control API failed ({exc})"
    availability = state.get("availability", "?") if isinstance(state, dict) else "?"
    if (availability in ("loading", "ready")) != load:
        return (
            PlacementAction.Status.FAILED,
            f"not applied: the backend reports {availability!r} after the request",
        )
    return PlacementAction.Status.APPLIED, f"applied: the backend reports {availability!r}"


def _record(
    deployment: Deployment, action: Action, status: str, now: datetime, *, note: str = ""
) -> PlacementAction:
    """Record one action; an applied one also sets `Deployment.loaded`.

    `save()`, not `queryset.update()`: the post_save signal announces the catalog change,
    so every gateway re-reads which copies are loaded (once, when this commits).
    """
    with transaction.atomic():
        if status == PlacementAction.Status.APPLIED:
            deployment.loaded = action.kind == LOAD
            deployment.save(update_fields=["loaded"])
        return PlacementAction.objects.create(
            deployment=deployment,
            kind=action.kind,
            status=status,
            reason=f"{action.reason}. {note[:1].upper()}{note[1:]}." if note else action.reason,
            benefit=action.benefit,
            demand=action.demand,
            created_at=now,
            applied_at=timezone.now() if status == PlacementAction.Status.APPLIED else None,
        )


# --------------------------------------------------------------------------- operators decide


def recommendation_apply(
    action: PlacementAction, *, http: httpx.Client | None = None
) -> PlacementAction:
    """An operator applies a standing recommendation now, as apply mode would have.

    The row is locked while the backend is asked, so two operators cannot apply it
    twice; its status becomes applied or failed (with what the backend said), and an
    applied action sets `Deployment.loaded` (every gateway hears of it). A load that no
    longer fits its cluster's accelerators fails without calling the backend.
    ValueError when the recommendation is no longer standing.
    """
    own_http = http is None
    http = http or httpx.Client(timeout=CONTROL_TIMEOUT_S)
    try:
        with transaction.atomic():
            row = _standing(action)
            deployment = Deployment.objects.select_related("cluster").get(pk=row.deployment_id)
            load = row.kind == LOAD
            status: str
            if load and not _fits(deployment.slug):
                status, note = PlacementAction.Status.FAILED, "not applied: no free capacity left"
            else:
                status, note = _apply(deployment, load, http)
            if status == PlacementAction.Status.APPLIED:
                deployment.loaded = load
                deployment.save(update_fields=["loaded"])
                row.applied_at = timezone.now()
            row.status = status
            row.reason = f"{row.reason} {note[:1].upper()}{note[1:]} (by an operator)."
            row.save(update_fields=["status", "reason", "applied_at"])
            return row
    finally:
        if own_http:
            http.close()


def recommendation_dismiss(action: PlacementAction) -> PlacementAction:
    """An operator turns a standing recommendation down: the planner does not propose it
    again while it is in its cooldown. ValueError when it is no longer standing."""
    with transaction.atomic():
        row = _standing(action)
        row.status = PlacementAction.Status.DISMISSED
        row.save(update_fields=["status"])
        return row


def _standing(action: PlacementAction) -> PlacementAction:
    row = PlacementAction.objects.select_for_update().get(pk=action.pk)
    if row.status != PlacementAction.Status.RECOMMENDED:
        raise ValueError(f"this recommendation is already {row.get_status_display().lower()}")
    return row


def _fits(slug: str) -> bool:
    sites, capacity, _ = sites_from_catalog()
    site = next(s for s in sites if s.slug == slug)
    return Room.of(sites, capacity).fits(site)
