from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.models import Membership, User
from backends.models import Deployment, Region, RegionLatency
from dashboards.forms import ApiKeyCreateForm, InvitationForm


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


def _member(request: HttpRequest, org_slug: str, permission: str = "view") -> Membership:
    """The signed-in user's membership of the org, or 404 (see `access_membership`)."""
    user = request.user
    assert isinstance(user, User)  # login_required ran first
    return selectors.access_membership(user=user, org_slug=org_slug, permission=permission)


def _org_page(
    request: HttpRequest, membership: Membership, form: ApiKeyCreateForm, status: int = 200
) -> HttpResponse:
    context = {
        "org": membership.org,
        "membership": membership,
        "keys": selectors.api_key_list(org=membership.org),
        "form": form,
    }
    return render(request, "dashboards/org.html", context, status=status)


@login_required
def org_dashboard(request: HttpRequest, org_slug: str) -> HttpResponse:
    membership = _member(request, org_slug)
    return _org_page(request, membership, ApiKeyCreateForm())


@login_required
@require_POST
def api_key_create(request: HttpRequest, org_slug: str) -> HttpResponse:
    membership = _member(request, org_slug, "manage_keys")
    form = ApiKeyCreateForm(request.POST)
    if not form.is_valid():
        return _org_page(request, membership, form, status=400)
    try:
        issued = services.api_key_create(
            org=membership.org,
            created_by=membership.user,
            **form.cleaned_data,
        )
    except services.AccountsError as exc:
        form.add_error(None, str(exc))
        return _org_page(request, membership, form, status=400)
    # The plaintext is rendered into this one response and never stored.
    response = render(
        request, "dashboards/key_created.html", {"org": membership.org, "issued": issued}
    )
    response["Cache-Control"] = "no-store"
    return response


@login_required
@require_POST
def api_key_revoke(request: HttpRequest, org_slug: str, key_id: int) -> HttpResponse:
    membership = _member(request, org_slug, "manage_keys")
    key = selectors.access_api_key(org=membership.org, key_id=key_id)
    services.api_key_revoke(api_key=key, by=membership.user)
    messages.success(request, f"Key {key.display_prefix} revoked.")
    return redirect("dashboards:org", org_slug=org_slug)


def _members_page(
    request: HttpRequest, membership: Membership, form: InvitationForm, status: int = 200
) -> HttpResponse:
    context = {
        "org": membership.org,
        "membership": membership,
        "members": selectors.member_list(org=membership.org),
        "invitations": (
            selectors.invitation_open_list(org=membership.org)
            if membership.can("manage_members")
            else []
        ),
        "form": form,
    }
    return render(request, "dashboards/members.html", context, status=status)


@login_required
def members(request: HttpRequest, org_slug: str) -> HttpResponse:
    return _members_page(request, _member(request, org_slug), InvitationForm())


@login_required
@require_POST
def invitation_create(request: HttpRequest, org_slug: str) -> HttpResponse:
    membership = _member(request, org_slug, "manage_members")
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
        {"org": membership.org, "invitation": issued.invitation, "link": link},
    )
    response["Cache-Control"] = "no-store"
    return response
