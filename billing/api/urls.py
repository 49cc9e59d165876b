from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from billing.api import views

app_name = "api"

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("v1/org", views.OrgView.as_view(), name="org"),
    path("v1/org/budget", views.BudgetView.as_view(), name="budget"),
    path("v1/keys", views.KeyListView.as_view(), name="keys"),
    path("v1/keys/<int:key_id>/revoke", views.KeyRevokeView.as_view(), name="key_revoke"),
    path("v1/keys/<int:key_id>/limits", views.KeyLimitsView.as_view(), name="key_limits"),
    path("v1/usage", views.UsageListView.as_view(), name="usage"),
    path("v1/usage/daily", views.UsageDailyView.as_view(), name="usage_daily"),
    path("v1/invoices", views.InvoiceListView.as_view(), name="invoices"),
    path("v1/invoices/<str:number>", views.InvoiceDetailView.as_view(), name="invoice"),
    path("v1/invoices/<str:number>/pdf", views.InvoicePdfView.as_view(), name="invoice_pdf"),
]
