"""SLA tiers: seeded, one per organization from its creation, changes kept as history."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from accounts import services as account_services
from billing import selectors, subscriptions, tiers
from billing.models import BillingAccount, SlaTier, TierChange


def test_the_migration_seeds_free_pro_and_enterprise_with_the_documented_values(db):
    for defaults in tiers.DEFAULT_TIERS:
        tier = SlaTier.objects.get(slug=defaults.slug)
        for name, value in defaults.fields().items():
            assert getattr(tier, name) == value, (defaults.slug, name)


def test_a_new_organization_starts_on_the_free_tier_with_its_history(acme):
    account = BillingAccount.objects.get(org=acme)
    assert account.tier.slug == "free"
    assert account.monthly_cap_usd == Decimal("10")
    [change] = TierChange.objects.for_org(acme)
    assert change.tier.slug == "free"
    assert change.effective_at == acme.created_at


def test_an_organization_gets_an_account_even_if_an_operator_deleted_the_free_tier(alice):
    SlaTier.objects.filter(slug="free").delete()
    org = account_services.organization_create(name="Initech", owner=alice)
    assert selectors.billing_account(org=org).tier.price_margin_pct == tiers.FREE.price_margin_pct


def test_a_tier_change_applies_to_limits_at_once_and_is_kept_as_history(acme, alice):
    pro = SlaTier.objects.get(slug="pro")
    at = datetime.now(UTC)
    subscriptions.tier_change(org=acme, tier=pro, changed_by=alice, at=at)
    account = selectors.billing_account(org=acme)
    assert account.tier == pro
    assert account.tier.requests_per_minute == 1000
    history = list(TierChange.objects.for_org(acme).values_list("tier__slug", "effective_at"))
    assert history[-1] == ("pro", at)
    assert len(history) == 2


def test_changing_to_the_same_tier_records_nothing(acme):
    free = SlaTier.objects.get(slug="free")
    subscriptions.tier_change(org=acme, tier=free)
    assert TierChange.objects.for_org(acme).count() == 1


def test_an_owner_budget_overrides_the_tier_cap_and_none_restores_it(acme):
    subscriptions.budget_set(org=acme, monthly_budget_usd=Decimal("250"))
    assert selectors.billing_account(org=acme).monthly_cap_usd == Decimal("250")
    subscriptions.budget_set(org=acme, monthly_budget_usd=None)
    assert selectors.billing_account(org=acme).monthly_cap_usd == Decimal("10")
    with pytest.raises(subscriptions.BillingError):
        subscriptions.budget_set(org=acme, monthly_budget_usd=Decimal("-1"))


def test_tier_history_is_scoped_to_its_tenant(acme, globex):
    assert {c.org for c in TierChange.objects.for_org(globex)} == {globex}


def _operator_in_the_admin():
    """A superuser signed in and past the second factor, as the admin requires."""
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from accounts.models import User
    from tests.conftest import PASSWORD, verified

    ops = User.objects.create_superuser("ops@example.com", PASSWORD)
    TOTPDevice.objects.create(user=ops, name="phone", confirmed=True)
    return verified(ops)


def test_an_operator_edits_a_tier_in_the_admin_and_its_organizations_get_the_new_limit(acme):
    from django.forms.models import model_to_dict

    client = _operator_in_the_admin()
    free = SlaTier.objects.get(slug="free")
    form = {k: "" if v is None else v for k, v in model_to_dict(free).items()}
    form.pop("stripe_plan_id", None)
    form["requests_per_minute"] = 7
    response = client.post(f"/admin/billing/slatier/{free.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert selectors.billing_account(org=acme).tier.requests_per_minute == 7
    form["requests_per_minute"] = -1  # refused by the form, nothing changes
    refused = client.post(f"/admin/billing/slatier/{free.pk}/change/", form)
    assert refused.status_code == 200
    assert SlaTier.objects.get(pk=free.pk).requests_per_minute == 7


def test_operators_read_every_webhook_and_stripe_push_outcome_in_the_admin(acme):
    from billing.models import StripeEvent, StripeSyncRecord

    StripeEvent.objects.create(
        event_id="evt_123", type="invoice.payment_failed", org=acme, outcome="dunning started"
    )
    StripeSyncRecord.objects.create(org=acme, action="push_invoice", outcome="retried")
    client = _operator_in_the_admin()
    events = client.get("/admin/billing/stripeevent/").content.decode()
    assert "evt_123" in events
    assert "dunning started" in events
    pushes = client.get("/admin/billing/stripesyncrecord/").content.decode()
    assert "push_invoice" in pushes
    assert "retried" in pushes
