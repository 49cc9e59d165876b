"""Proof-of-residency downloads (`audit:request_proof`, `audit:month_proof`, `audit:verifier`)."""

from django.urls import path

from accounts import audit_views

app_name = "audit"

urlpatterns = [
    path(
        "orgs/<slug:org_slug>/proof/requests/<str:request_id>/",
        audit_views.request_proof,
        name="request_proof",
    ),
    path(
        "orgs/<slug:org_slug>/proof/months/<str:month>/",
        audit_views.month_proof,
        name="month_proof",
    ),
    path("proof/audit_verify.py", audit_views.verifier, name="verifier"),
]
