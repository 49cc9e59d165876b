from django.urls import path

from dashboards import console, org_pages, views

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
    # The developer dashboard: every page is an `@org_view` (dashboards.scoping).
    path("orgs/<slug:org_slug>/", org_pages.overview, name="org"),
    path("orgs/<slug:org_slug>/usage/", org_pages.usage_page, name="usage"),
    path("orgs/<slug:org_slug>/map/", org_pages.world_map, name="map"),
    path("orgs/<slug:org_slug>/requests/", org_pages.request_log, name="requests"),
    path(
        "orgs/<slug:org_slug>/requests/<str:request_id>/",
        org_pages.request_detail,
        name="request",
    ),
    path("orgs/<slug:org_slug>/explain/", org_pages.route_explainer, name="explain"),
    path("orgs/<slug:org_slug>/keys/", org_pages.keys, name="keys"),
    path("orgs/<slug:org_slug>/keys/<int:key_id>/limits/", org_pages.key_limits, name="key_limits"),
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
    path("orgs/<slug:org_slug>/members/", views.members, name="members"),
    path("orgs/<slug:org_slug>/members/invite/", views.invitation_create, name="invitation_create"),
    path(
        "orgs/<slug:org_slug>/members/<int:member_id>/role/", views.member_role, name="member_role"
    ),
    path(
        "orgs/<slug:org_slug>/members/<int:member_id>/remove/",
        views.member_remove,
        name="member_remove",
    ),
    path("orgs/<slug:org_slug>/billing/", org_pages.billing, name="billing"),
    path("orgs/<slug:org_slug>/invoices/", org_pages.invoice_list, name="invoices"),
    path("orgs/<slug:org_slug>/invoices/<str:number>/", org_pages.invoice_detail, name="invoice"),
    path(
        "orgs/<slug:org_slug>/invoices/<str:number>/pdf",
        org_pages.invoice_pdf,
        name="invoice_pdf",
    ),
    path("orgs/<slug:org_slug>/quickstart/", org_pages.quickstart, name="quickstart"),
]
