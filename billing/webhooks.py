"""POST /billing/stripe/webhook: Stripe's events, signature verified, each handled once."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing import stripe_client
from billing.dunning import stripe_event_handle

logger = logging.getLogger(__name__)


@csrf_exempt  # Stripe signs the body instead: the signature is the authentication
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    if not settings.STRIPE_WEBHOOK_SECRET:
        return JsonResponse(
            {"error": "Stripe webhooks are not configured (local-only)."}, status=404
        )
    try:
        event = stripe_client.webhook_event(request.body, request.headers.get("Stripe-Signature"))
    except (stripe_client.SignatureVerificationError, ValueError):
        logger.warning("refused a Stripe webhook with a bad signature or body")
        return JsonResponse({"error": "Bad signature."}, status=400)
    record, handled = stripe_event_handle(event)
    return JsonResponse({"id": record.event_id, "handled": handled, "outcome": record.outcome})
