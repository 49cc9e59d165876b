from django.urls import path

from dashboards import console, views

app_name = "dashboards"

urlpatterns = [
    path("", views.home, name="home"),
    path("console/", console.maps, name="console"),
    path("console/maps.json", console.maps_json, name="console_maps"),
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
