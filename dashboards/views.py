from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.models import Membership, Role, User
from backends.models import Deployment, Region, RegionLatency
from dashboards.forms import InvitationForm
from dashboards.scoping import nav_context, org_view


def health(request: HttpRequest) -> JsonResponse:
    """Liveness and readiness: the database, Redis, and the size of the loaded world."""
    import redis
    from django.conf import settings

    checks: dict[str, object] = {}
    ok = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
        checks["world"] = {
            "regions": Region.objects.count(),
            "deployments": Deployment.objects.count(),
            "latency_pairs": RegionLatency.objects.count(),
        }
    except Exception as exc:
        ok, checks["database"] = False, f"error: {exc.__class__.__name__}"
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1).ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        ok, checks["redis"] = False, f"error: {exc.__class__.__name__}"
    return JsonResponse(
        {"status": "ok" if ok else "degraded", "checks": checks}, status=200 if ok else 503
    )


@login_required
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    assert isinstance(user, User)
    orgs = selectors.organization_list(user=user)
    if len(orgs) == 1:
        return redirect("dashboards:org", org_slug=orgs[0].slug)
    return render(request, "dashboards/home.html", {"orgs": orgs})


def _members_page(
    request: HttpRequest,
    membership: Membership,
    form: InvitationForm,
    status: int = 200,
    error: str = "",
) -> HttpResponse:
    can_invite = membership.can("manage_members")
    context = {
        **nav_context(membership, "members"),
        "error": error,
        "roles": Role.choices,
        "members": selectors.member_list(org=membership.org),
        "invitations": selectors.invitation_open_list(org=membership.org) if can_invite else [],
        "can_invite": can_invite,
        "form": form,
    }
    return render(request, "dashboards/members.html", context, status=status)


@org_view("manage_keys")
@require_POST
def api_key_revoke(request: HttpRequest, membership: Membership, key_id: int) -> HttpResponse:
    key = selectors.access_api_key(org=membership.org, key_id=key_id)
    services.api_key_revoke(api_key=key)
    messages.success(request, f"Key {key.display_prefix} revoked.")
    return redirect("dashboards:keys", org_slug=membership.org.slug)


@org_view()
def members(request: HttpRequest, membership: Membership) -> HttpResponse:
    return _members_page(request, membership, InvitationForm())


@org_view("manage_members")
@require_POST
def invitation_create(request: HttpRequest, membership: Membership) -> HttpResponse:
    form = InvitationForm(request.POST)
    if not form.is_valid():
        return _members_page(request, membership, form, status=400)
    try:
        issued = services.invitation_create(
            org=membership.org,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
            invited_by=membership.user,
        )
    except services.AccountsError as exc:
        form.add_error(None, str(exc))
        return _members_page(request, membership, form, status=400)
    link = request.build_absolute_uri(
        reverse("accounts:invitation_accept", kwargs={"token": issued.token})
    )
    response = render(
        request,
        "dashboards/invitation_created.html",
        {**nav_context(membership, "members"), "invitation": issued.invitation, "link": link},
    )
    response["Cache-Control"] = "no-store"
    return response


def _may_change(membership: Membership, target: Membership, role: str | None) -> str:
    """Why `membership` may not give `target` this role (None: remove it); "" if it may.
    Owners alone manage owners."""
    if membership.role != Role.OWNER and (target.role == Role.OWNER or role == Role.OWNER):
        return "Only an owner can change an owner, or make someone an owner."
    return ""


def _member_change(
    request: HttpRequest, membership: Membership, error: str, change: Any, done: str
) -> HttpResponse:
    """Run `change` unless there is already an `error`; a refusal renders the page
    with it (400, nothing changed), success goes back to the members."""
    if not error:
        try:
            change()
        except services.AccountsError as exc:
            error = str(exc)
    if error:
        return _members_page(request, membership, InvitationForm(), status=400, error=error)
    messages.success(request, done)
    return redirect("dashboards:members", org_slug=membership.org.slug)


@org_view("manage_members")
@require_POST
def member_role(request: HttpRequest, membership: Membership, member_id: int) -> HttpResponse:
    target = selectors.access_member(org=membership.org, membership_id=member_id)
    role = request.POST.get("role", "")
    if role not in Role.values:
        return _member_change(request, membership, f"Unknown role {role!r}.", None, "")
    return _member_change(
        request,
        membership,
        _may_change(membership, target, role),
        lambda: services.membership_role_set(membership=target, role=role),
        f"{target.user.email} is now {Role(role).label.lower()}.",
    )


@org_view("manage_members")
@require_POST
def member_remove(request: HttpRequest, membership: Membership, member_id: int) -> HttpResponse:
    target = selectors.access_member(org=membership.org, membership_id=member_id)
    return _member_change(
        request,
        membership,
        _may_change(membership, target, None),
        lambda: services.membership_remove(membership=target),
        f"{target.user.email} was removed from {membership.org.name}.",
    )
