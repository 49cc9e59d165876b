from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import selectors, services
from accounts.models import Membership, User
from backends import selectors as catalog_selectors
from backends import services as catalog
from backends.models import Deployment, Region, RegionLatency
from dashboards.forms import (
    ApiKeyCreateForm,
    InvitationForm,
    PrivateClusterForm,
    PrivateDeploymentForm,
)


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


# --------------------------------------------------------------------------- private clusters
# The organization's own clusters (bring your own deployment); the same services as the
# management API (`backends/api/clusters.py`). Members see them; owners change them.


def _clusters_page(
    request: HttpRequest,
    membership: Membership,
    form: PrivateClusterForm | None = None,
    deployment_form: PrivateDeploymentForm | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "org": membership.org,
        "membership": membership,
        "can_manage": membership.can("manage_clusters"),
        "clusters": catalog_selectors.private_cluster_list(org=membership.org),
        "form": form or PrivateClusterForm(),
        "deployment_form": deployment_form or PrivateDeploymentForm(),
    }
    return render(request, "dashboards/clusters.html", context, status=status)


@login_required
def clusters(request: HttpRequest, org_slug: str) -> HttpResponse:
    if request.method != "POST":
        return _clusters_page(request, _member(request, org_slug))
    membership = _member(request, org_slug, "manage_clusters")
    form = PrivateClusterForm(request.POST)
    if not form.is_valid():
        return _clusters_page(request, membership, form, status=400)
    data = dict(form.cleaned_data)
    auth = {k: data.pop(k) for k in ("credential", "auth_style", "auth_header")}
    try:
        with transaction.atomic():
            cluster = catalog.private_cluster_create(org=membership.org, **data)
            if auth["credential"] or auth["auth_style"] != "bearer":
                catalog.private_cluster_auth_set(
                    cluster,
                    credential=auth["credential"] or None,
                    auth_style=auth["auth_style"],
                    auth_header=auth["auth_header"],
                )
    except catalog.PrivateClusterError as exc:
        form.add_error(None, str(exc))
        return _clusters_page(request, membership, form, status=400)
    messages.success(request, f"Cluster {cluster.name} registered.")
    return redirect("dashboards:clusters", org_slug=org_slug)


@login_required
@require_POST
def private_deployment_create(request: HttpRequest, org_slug: str, slug: str) -> HttpResponse:
    membership = _member(request, org_slug, "manage_clusters")
    cluster = catalog_selectors.access_private_cluster(org=membership.org, slug=slug)
    form = PrivateDeploymentForm(request.POST)
    if not form.is_valid():
        return _clusters_page(request, membership, deployment_form=form, status=400)
    try:
        catalog.private_deployment_create(cluster=cluster, **form.cleaned_data)
    except catalog.PrivateClusterError as exc:
        form.add_error(None, str(exc))
        return _clusters_page(request, membership, deployment_form=form, status=400)
    messages.success(request, f"{form.cleaned_data['model'].slug} added to {cluster.name}.")
    return redirect("dashboards:clusters", org_slug=org_slug)


@login_required
@require_POST
def private_cluster_delete(request: HttpRequest, org_slug: str, slug: str) -> HttpResponse:
    membership = _member(request, org_slug, "manage_clusters")
    cluster = catalog_selectors.access_private_cluster(org=membership.org, slug=slug)
    catalog.private_cluster_delete(cluster)
    messages.success(request, f"Cluster {cluster.name} removed.")
    return redirect("dashboards:clusters", org_slug=org_slug)
