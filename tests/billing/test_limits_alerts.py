"""Budget alerts: owners are emailed at 50%, 80% and 100% of the monthly cap, once each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from django.core import mail

from accounts import services
from billing import alerts
from billing.models import BudgetAlert, UsageEvent
from billing.subscriptions import budget_set

NOV = datetime(2026, 11, 10, tzinfo=UTC)


def _charge(org, amount: str, at: datetime = NOV) -> None:
    UsageEvent.objects.create(
        request_id=uuid.uuid4().hex, org=org, endpoint="chat.completions", model="m",
        served_model="m", deployment="d", region="r", cluster="c", chip="x", input_tokens=1,
        output_tokens=1, usage_source="upstream", cost_usd=Decimal("0"),
        charge_usd=Decimal(amount), created_at=at,
    )  # fmt: skip


def test_owners_are_emailed_once_at_each_threshold_of_the_month(db, alice, bob):
    acme = services.organization_create(name="Acme", owner=alice)
    other = services.organization_create(name="Other", owner=bob)
    budget_set(org=acme, monthly_budget_usd=Decimal("100.00"))
    _charge(acme, "49.99")
    _charge(other, "1.00")  # Free's $10 cap: 10%, nothing to say
    assert alerts.budget_alerts_send(now=NOV) == []

    _charge(acme, "0.01")  # exactly 50%
    assert [a.threshold_pct for a in alerts.budget_alerts_send(now=NOV)] == [50]
    assert alerts.budget_alerts_send(now=NOV) == []  # once
    [message] = mail.outbox
    assert message.to == ["alice@example.com"]
    assert "50% of its monthly budget" in message.subject
    assert "$50.00" in message.body

    _charge(acme, "55.00")  # 105%: 80 and 100 at once
    assert [a.threshold_pct for a in alerts.budget_alerts_send(now=NOV)] == [80, 100]
    assert "refused (HTTP 429, insufficient_quota)" in mail.outbox[-1].body
    assert len(mail.outbox) == 3

    # A new month starts over.
    december = datetime(2026, 12, 2, tzinfo=UTC)
    _charge(acme, "60.00", at=december)
    assert [a.threshold_pct for a in alerts.budget_alerts_send(now=december)] == [50]
    assert BudgetAlert.objects.filter(org=acme).count() == 4
    assert not BudgetAlert.objects.filter(org=other).exists()
