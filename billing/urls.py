from django.urls import path

from billing import views, webhooks

app_name = "billing"

urlpatterns = [
    path("billing/stripe/webhook", webhooks.stripe_webhook, name="stripe_webhook"),
    path("orgs/<slug:org_slug>/invoices/", views.invoice_list, name="invoices"),
    path("orgs/<slug:org_slug>/invoices/<str:number>/", views.invoice_detail, name="invoice"),
    path("orgs/<slug:org_slug>/invoices/<str:number>/pdf", views.invoice_pdf, name="invoice_pdf"),
]
