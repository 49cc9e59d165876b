from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection, transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts import redis_client, selectors, services
from accounts.models import Membership, Role, User
from backends import selectors as catalog_selectors
from backends import services as catalog
from backends.models import Deployment, Region, RegionLatency
from dashboards.forms import InvitationForm, PrivateClusterForm, PrivateDeploymentForm
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
        redis_client.connect(settings.REDIS_URL, socket_timeout=1).ping()
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
    services.api_key_revoke(api_key=key, by=membership.user)
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
        form.add_error(exc.field if exc.field in form.fields else None, str(exc))
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
        **nav_context(membership, "clusters"),
        "can_manage": membership.can("manage_clusters"),
        "clusters": catalog_selectors.private_cluster_list(org=membership.org),
        "form": form or PrivateClusterForm(),
        "deployment_form": deployment_form or PrivateDeploymentForm(),
    }
    return render(request, "dashboards/clusters.html", context, status=status)


@org_view()
def clusters(request: HttpRequest, membership: Membership) -> HttpResponse:
    if request.method != "POST":
        return _clusters_page(request, membership)
    if not membership.can("manage_clusters"):
        raise Http404("No such organization.")  # as `access_membership` answers
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
    return redirect("dashboards:clusters", org_slug=membership.org.slug)


@org_view("manage_clusters")
@require_POST
def private_deployment_create(
    request: HttpRequest, membership: Membership, slug: str
) -> HttpResponse:
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
    return redirect("dashboards:clusters", org_slug=membership.org.slug)


@org_view("manage_clusters")
@require_POST
def private_cluster_delete(request: HttpRequest, membership: Membership, slug: str) -> HttpResponse:
    cluster = catalog_selectors.access_private_cluster(org=membership.org, slug=slug)
    catalog.private_cluster_delete(cluster)
    messages.success(request, f"Cluster {cluster.name} removed.")
    return redirect("dashboards:clusters", org_slug=membership.org.slug)
