"""The operator console: the live maps of the mesh, and the switches to steer it.

Staff only (and, by the 2FA middleware, verified staff). The page polls
`maps.json` every second, so switching a simulated backend's fault shows its health,
load and RTT changing as the control plane notices.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

import httpx
import redis
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_POST

from backends import livestate
from backends.models import (
    ControlSettings,
    Deployment,
    HealthEvent,
    LatencyProbe,
    PlacementAction,
    SessionMove,
)
from backends.services import KINDS, drain_by_slug
from backends.world import INTRA_REGION_RTT_MS

FAULTS = ("none", "slow", "error", "down", "hang")


def staff_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("The console is for Tesseract operators.")
        return view(request, *args, **kwargs)

    return wrapped


@staff_only
def maps(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboards/console_maps.html",
        {"faults": list(FAULTS), "gateway_region": settings.TESSERACT_GATEWAY_REGION},
    )


def _maps_data() -> dict[str, Any]:
    live = livestate.read(redis.Redis.from_url(settings.REDIS_URL))
    region = settings.TESSERACT_GATEWAY_REGION
    latest_probe: dict[int, LatencyProbe] = {}
    for probe in LatencyProbe.objects.order_by("-measured_at")[:500]:
        latest_probe.setdefault(probe.cluster_id, probe)
    rows = []
    deployments = Deployment.objects.select_related("cluster__region", "chip", "model")
    for d in deployments.order_by("cluster__region__name", "slug"):
        state = live.deployments.get(d.slug, livestate.DeploymentLive(health=d.health))
        dst = d.cluster.region.slug
        last = latest_probe.get(d.cluster_id)
        rows.append(
            {
                "slug": d.slug,
                "region": dst,
                "chip": d.chip.slug,
                "model": d.model.slug,
                "health": state.health,
                "loaded": d.loaded if state.loaded is None else state.loaded,
                "drained": d.drained or d.cluster.drained or d.cluster.region.drained,
                "running": state.running,
                "waiting": state.waiting,
                "inflight": live.inflight.get(d.slug, 0),
                "slots": d.concurrency_slots,
                "ttft_profile_ms": round(d.ttft_ms, 1),
                "ttft_observed_ms": state.observed_ttft_ms,
                "rtt_ms": INTRA_REGION_RTT_MS if dst == region else live.rtt.get((region, dst)),
                "probe": None if last is None else last.verdict,
                "simulated": d.adapter == Deployment.Adapter.SIMULATOR,
            }
        )

    def recent(qs: Any, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        return [
            {f: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v)
             for f, v in row.items()}
            for row in qs.values(*fields)[:12]
        ]  # fmt: skip

    return {
        "gateway_region": region,
        "placement_mode": ControlSettings.current().placement_mode,
        "deployments": rows,
        "health_events": recent(
            HealthEvent.objects.all(),
            ("created_at", "deployment__slug", "previous", "current", "source", "reason"),
        ),
        "placement": recent(
            PlacementAction.objects.all(),
            ("created_at", "deployment__slug", "kind", "status", "reason"),
        ),
        "session_moves": recent(
            SessionMove.objects.all(),
            ("created_at", "session_id", "from_deployment", "to_deployment", "reason"),
        ),
        "flagged_probes": recent(
            LatencyProbe.objects.exclude(verdict=LatencyProbe.Verdict.OK),
            ("measured_at", "cluster__slug", "rtt_ms", "floor_ms", "verdict"),
        ),
    }


@staff_only
def maps_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_maps_data())


def _control_url(d: Deployment) -> str:
    base = d.endpoint_url.rstrip("/")
    if d.adapter != Deployment.Adapter.SIMULATOR or not base.endswith("/v1"):
        raise PermissionDenied("Faults can be switched on simulated backends only.")
    return base[: -len("/v1")] + "/control"


@staff_only
@require_POST
def fault(request: HttpRequest, slug: str) -> JsonResponse:
    """Switch a simulated backend's fault (for demonstrations and drills)."""
    d = get_object_or_404(Deployment, slug=slug)
    kind = request.POST.get("fault", "")
    if kind not in FAULTS:
        return JsonResponse({"error": f"fault must be one of {', '.join(FAULTS)}"}, status=400)
    try:
        response = httpx.post(_control_url(d), json={"fault": kind}, timeout=5)
        return JsonResponse(response.json(), status=response.status_code)
    except (httpx.HTTPError, ValueError) as exc:
        return JsonResponse(
            {"error": f"the simulator did not take the switch ({exc.__class__.__name__})"},
            status=502,
        )


def _drained_from_body(body: bytes) -> bool:
    """`{"drained": true|false}`; an empty body drains. ValueError on anything else."""
    if not body.strip():
        return True
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('the body must be JSON, e.g. {"drained": true}') from None
    if not isinstance(data, dict):
        raise ValueError('the body must be a JSON object, e.g. {"drained": true}')
    drained = data.get("drained", True)
    if not isinstance(drained, bool):
        raise ValueError("drained must be true or false")
    return drained


@staff_only
@require_POST
def drain(request: HttpRequest, kind: str, slug: str) -> JsonResponse:
    if kind not in KINDS:
        return JsonResponse({"error": f"kind must be one of {', '.join(KINDS)}"}, status=400)
    try:
        drained = _drained_from_body(request.body)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        target = drain_by_slug(kind, slug, drained=drained, by=str(request.user))
    except KINDS[kind].DoesNotExist:
        return JsonResponse({"error": f"no {kind} named {slug!r}"}, status=404)
    return JsonResponse({"kind": kind, "slug": slug, "drained": target.drained})
