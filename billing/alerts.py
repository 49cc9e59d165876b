"""Budget alerts: an email to the org's owners when its month's charges cross 50%, 80%
and 100% of its monthly cap, each once per month (`BudgetAlert` is unique per org,
month and threshold, so two workers racing send one email).

The spend compared is what the drain has stored (`UsageEvent.charge_usd`), the
authoritative record; a Celery beat task runs the check every minute
(`billing.money_tasks.budget_alerts`). Email goes through Django's email framework
(the console backend unless EMAIL_BACKEND says otherwise).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone

from billing import limits
from billing.models import BillingAccount, BudgetAlert, UsageEvent

logger = logging.getLogger(__name__)

THRESHOLDS = (50, 80, 100)


def budget_alerts_send(*, now: datetime | None = None) -> list[BudgetAlert]:
    """Send what is due this month; returns the alerts sent by this call."""
    from billing.stripe_sync import owner_emails

    now = now or timezone.now()
    month = limits.month_of(now)
    start, end = limits.month_bounds(month)
    spend = dict(
        UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end)
        .values("org_id")
        .annotate(total=Sum("charge_usd"))
        .values_list("org_id", "total")
    )
    sent: list[BudgetAlert] = []
    accounts = BillingAccount.objects.filter(org_id__in=spend).select_related("org", "tier")
    for account in accounts:
        cap = account.monthly_cap_usd
        total = spend.get(account.org_id) or Decimal(0)
        if not cap or cap <= 0:
            continue
        due = [t for t in THRESHOLDS if total * 100 >= cap * t]
        if not due:
            continue
        done = set(
            BudgetAlert.objects.filter(org_id=account.org_id, month=month).values_list(
                "threshold_pct", flat=True
            )
        )
        for threshold in due:
            if threshold in done:
                continue
            try:
                with transaction.atomic():
                    alert = BudgetAlert.objects.create(
                        org=account.org,
                        month=month,
                        threshold_pct=threshold,
                        spend_usd=total,
                        cap_usd=cap,
                        sent_at=now,
                    )
            except IntegrityError:
                continue  # another worker sent it
            org = account.org
            send_mail(
                subject=f"Tesseract: {org.name} has used {threshold}% of its monthly budget",
                message=(
                    f"{org.name} has been charged ${total:.2f} in {month}, {threshold}% or more "
                    f"of its ${cap:.2f} monthly budget.\n\n"
                    + (
                        "Requests that do not fit the budget are refused (HTTP 429, "
                        "insufficient_quota) until it resets on "
                        f"{end:%Y-%m-%d} or an owner raises it."
                        if threshold >= 100
                        else "At 100%, requests that do not fit are refused until the "
                        f"budget resets on {end:%Y-%m-%d}; an owner can raise it."
                    )
                ),
                from_email=None,
                recipient_list=owner_emails(org),
            )
            logger.info("budget alert: %s at %s%% of %s in %s", org, threshold, cap, month)
            sent.append(alert)
    return sent
