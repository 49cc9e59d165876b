from django.urls import path

from dashboards import console, views

app_name = "dashboards"

urlpatterns = [
    path("", views.home, name="home"),
    path("console/", console.maps, name="console"),
    path("console/maps.json", console.maps_json, name="console_maps"),
    path("console/latency/", console.latency, name="console_latency"),
    path("console/placement/", console.placement, name="console_placement"),
    path(
        "console/placement/<int:action_id>/<str:decision>",
        console.placement_decide,
        name="console_placement_decide",
    ),
    path("console/tenants/", console.tenants, name="console_tenants"),
    path("console/audit/", console.audit, name="console_audit"),
    # Deployment slugs carry the model's version ("...--llama-3.1-8b-instruct"): a
    # `slug` converter refuses the dot, so these take any single path segment.
    path("console/deployments/<str:slug>/fault", console.fault, name="console_fault"),
    path("console/<str:kind>/<str:slug>/drain", console.drain, name="console_drain"),
    path("orgs/<slug:org_slug>/", views.org_dashboard, name="org"),
    path("orgs/<slug:org_slug>/members/", views.members, name="members"),
    path("orgs/<slug:org_slug>/members/invite/", views.invitation_create, name="invitation_create"),
    path("orgs/<slug:org_slug>/keys/", views.api_key_create, name="api_key_create"),
    path("orgs/<slug:org_slug>/clusters/", views.clusters, name="clusters"),
    path(
        "orgs/<slug:org_slug>/clusters/<str:slug>/deployments/",
        views.private_deployment_create,
        name="private_deployment_create",
    ),
    path(
        "orgs/<slug:org_slug>/clusters/<str:slug>/delete/",
        views.private_cluster_delete,
        name="private_cluster_delete",
    ),
    path(
        "orgs/<slug:org_slug>/keys/<int:key_id>/revoke/",
        views.api_key_revoke,
        name="api_key_revoke",
    ),
]
