from django.urls import path

from billing import webhooks

app_name = "billing"

urlpatterns = [
    path("billing/stripe/webhook", webhooks.stripe_webhook, name="stripe_webhook"),
]
