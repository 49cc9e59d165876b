"""The operator console: the mesh, the latency map, placement, the kill switch, tenants
and the log of what operators did.

Operators only: staff, and — unless `TESSERACT_STAFF_REQUIRE_2FA` is off — verified
with their second factor in this session (the 2FA middleware sends them to verify
first; `operator_only` refuses anyone it let through by mistake). Pages are rendered
on the server; the overview follows the live maps over a WebSocket
(`dashboards.live`), and `maps.json` serves the same rows to scripts.

Every action an operator takes here is written with its reason through
`accounts.operator_actions.record_operator_action`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

import httpx
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import redis_client
from accounts.models import User
from accounts.operator_actions import REASON_MAX, record_operator_action
from backends import livestate
from backends.models import (
    ControlSettings,
    Deployment,
    HealthEvent,
    LatencyProbe,
    PlacementAction,
    Region,
    SessionMove,
)
from backends.placement import recommendation_apply, recommendation_dismiss
from backends.services import KINDS, drain_by_slug
from billing import stripe_client
from dashboards import console_data

FAULTS = ("none", "slow", "error", "down", "hang")


def is_operator(user: Any) -> bool:
    """Staff, verified with a second factor in this session where that is required."""
    if not (isinstance(user, User) and user.is_active and user.is_staff):
        return False
    if not settings.TESSERACT_STAFF_REQUIRE_2FA:
        return True
    verified = getattr(user, "is_verified", None)  # set by django-otp's OTPMiddleware
    return bool(verified and verified())


def operator_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not is_operator(request.user):
            raise PermissionDenied("The console is for Tesseract operators.")
        return view(request, *args, **kwargs)

    return wrapped


#: the console's sections, for its navigation
SECTIONS = (
    ("dashboards:console", "Mesh"),
    ("dashboards:console_latency", "Latency"),
    ("dashboards:console_placement", "Placement"),
    ("dashboards:console_tenants", "Tenants"),
    ("dashboards:console_audit", "Operator log"),
)


def _operator(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # operator_only let only operators in
    return user


def _page(request: HttpRequest, template: str, section: str, **context: Any) -> HttpResponse:
    context.update(sections=SECTIONS, section=section, reason_max=REASON_MAX)
    return render(request, template, context)


def _live() -> livestate.LiveMaps:
    return livestate.read(redis_client.connect(settings.REDIS_URL))


@operator_only
@require_GET
def maps(request: HttpRequest) -> HttpResponse:
    """The overview: the mesh on the map, every deployment, the health timeline."""
    region = settings.TESSERACT_GATEWAY_REGION
    statics = console_data.deployments_static()
    live = _live()
    rows = [console_data.deployment_row(s, live, region) for s in statics]
    return _page(
        request,
        "dashboards/console_maps.html",
        "dashboards:console",
        faults=list(FAULTS),
        gateway_region=region,
        placement_mode=ControlSettings.current().get_placement_mode_display(),
        rows=rows,
        counters=console_data.counters(rows),
        mesh_map=console_data.mesh_map(statics, rows),
        health_events=console_data.health_timeline(),
        health_strips=console_data.health_strips(),
        regions=Region.objects.prefetch_related("clusters").order_by("name"),
    )


def _maps_data() -> dict[str, Any]:
    region = settings.TESSERACT_GATEWAY_REGION
    live = _live()
    rows = [console_data.deployment_row(s, live, region) for s in console_data.deployments_static()]

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
        "counters": console_data.counters(rows),
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


@operator_only
def maps_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_maps_data())


@operator_only
@require_GET
def latency(request: HttpRequest) -> HttpResponse:
    every_region = request.GET.get("rows") == "all"
    return _page(
        request,
        "dashboards/console_latency.html",
        "dashboards:console_latency",
        matrix=console_data.latency_matrix(_live(), every_region=every_region),
        every_region=every_region,
        flagged=list(
            LatencyProbe.objects.exclude(verdict=LatencyProbe.Verdict.OK)
            .select_related("src_region", "cluster")
            .order_by("-measured_at")[:20]
        ),
    )


# --------------------------------------------------------------------------- simulator faults


def _control_url(d: Deployment) -> str:
    base = d.endpoint_url.rstrip("/")
    if d.adapter != Deployment.Adapter.SIMULATOR or not base.endswith("/v1"):
        raise PermissionDenied("Faults can be switched on simulated backends only.")
    return base[: -len("/v1")] + "/control"


@operator_only
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


# --------------------------------------------------------------------------- kill switch


def _reason(raw: Any) -> str:
    """The operator's reason, required: ValueError when missing, blank or too long."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("say why: a reason is required")
    if len(raw.strip()) > REASON_MAX:
        raise ValueError(f"the reason must be at most {REASON_MAX} characters")
    return raw.strip()


def _drain_request(request: HttpRequest) -> tuple[bool, str, bool]:
    """(drained, reason, is_json) from a JSON body `{"drained": true, "reason": "…"}` or
    the confirmation form; ValueError on anything else."""
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ValueError(
                'the body must be JSON, e.g. {"drained": true, "reason": "…"}'
            ) from None
        if not isinstance(data, dict):
            raise ValueError(
                'the body must be a JSON object, e.g. {"drained": true, "reason": "…"}'
            )
        drained = data.get("drained", True)
        if not isinstance(drained, bool):
            raise ValueError("drained must be true or false")
        return drained, _reason(data.get("reason")), True
    value = request.POST.get("drained", "true")
    if value not in ("true", "false"):
        raise ValueError("drained must be true or false")
    return value == "true", _reason(request.POST.get("reason")), False


def _drain_target(kind: str, slug: str) -> Any:
    return get_object_or_404(KINDS[kind], slug=slug)


@operator_only
def drain(request: HttpRequest, kind: str, slug: str) -> HttpResponse:
    """The kill switch. GET: the confirmation page. POST: drain or undrain, with a reason
    that the operator-action log keeps with who and when."""
    if kind not in KINDS:
        return JsonResponse({"error": f"kind must be one of {', '.join(KINDS)}"}, status=400)
    if request.method == "GET":
        target = _drain_target(kind, slug)
        affected = _affected(kind, target)
        return _page(
            request,
            "dashboards/console_drain.html",
            "dashboards:console",
            kind=kind,
            target=target,
            affected=affected,
            drain_next=not target.drained,
        )
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "GET, POST"})
    try:
        drained, reason, is_json = _drain_request(request)
    except ValueError as exc:
        if request.content_type != "application/json":
            messages.error(request, f"Nothing changed: {exc}.")
            return redirect("dashboards:console_drain", kind=kind, slug=slug)
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        with transaction.atomic():
            target = drain_by_slug(kind, slug, drained=drained, by=_operator(request).email)
            entry = record_operator_action(
                _operator(request),
                "drain" if drained else "undrain",
                f"{kind}:{slug}",
                reason,
                details={"drained": drained},
            )
    except KINDS[kind].DoesNotExist:
        return JsonResponse({"error": f"no {kind} named {slug!r}"}, status=404)
    if is_json:
        return JsonResponse(
            {"kind": kind, "slug": slug, "drained": target.drained, "audit_id": entry.pk}
        )
    verb = "Drained" if drained else "Undrained"
    messages.success(request, f"{verb} {kind} {slug}. Recorded in the operator log.")
    return redirect("dashboards:console")


def _affected(kind: str, target: Any) -> int:
    """How many deployments the switch reaches."""
    if kind == "deployment":
        return 1
    field = "cluster" if kind == "cluster" else "cluster__region"
    return Deployment.objects.filter(**{field: target}).count()


# --------------------------------------------------------------------------- placement


@operator_only
@require_GET
def placement(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "dashboards/console_placement.html",
        "dashboards:console_placement",
        placement_mode=ControlSettings.current().get_placement_mode_display(),
        recommendations=console_data.placement_recommendations(),
        history=console_data.placement_history(),
    )


@operator_only
@require_POST
def placement_decide(request: HttpRequest, action_id: int, decision: str) -> HttpResponse:
    """Apply or dismiss one standing recommendation; the decision is logged with its reason."""
    if decision not in ("apply", "dismiss"):
        raise Http404("A recommendation is applied or dismissed.")
    action = get_object_or_404(PlacementAction.objects.select_related("deployment"), pk=action_id)
    reason = (request.POST.get("reason") or "").strip()
    if len(reason) > REASON_MAX:
        messages.error(
            request, f"Nothing changed: the reason must be at most {REASON_MAX} characters."
        )
        return redirect("dashboards:console_placement")
    try:
        if decision == "apply":
            outcome = recommendation_apply(action)
        else:
            outcome = recommendation_dismiss(action)
    except ValueError as exc:
        messages.error(request, f"Nothing changed: {exc}.")
        return redirect("dashboards:console_placement")
    record_operator_action(
        _operator(request),
        f"placement.{decision}",
        f"deployment:{action.deployment.slug}",
        reason or f"{decision} the recommendation to {action.kind}",
        details={"placement_action": action.pk, "kind": action.kind, "status": outcome.status},
    )
    if outcome.status == PlacementAction.Status.FAILED:
        messages.error(request, f"Not applied: {outcome.reason}")
    else:
        messages.success(
            request, f"{outcome.get_status_display()}: {action.kind} {action.deployment.slug}."
        )
    return redirect("dashboards:console_placement")


# --------------------------------------------------------------------------- tenants, log


@operator_only
@require_GET
def tenants(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "dashboards/console_tenants.html",
        "dashboards:console_tenants",
        tenants=console_data.tenant_rows(),
        month=console_data.month_start(),
        stripe_enabled=stripe_client.enabled(),
    )


@operator_only
@require_GET
def audit(request: HttpRequest) -> HttpResponse:
    return _page(
        request,
        "dashboards/console_audit.html",
        "dashboards:console_audit",
        actions=console_data.operator_actions(),
    )
