"""Tiers for tests: the seeded ones, and one whose limits no test reaches by accident."""

from __future__ import annotations

from decimal import Decimal

from accounts.models import Organization
from billing.models import SlaTier
from billing.subscriptions import budget_set, tier_change
from billing.tiers import DEFAULT_TIERS, ENTERPRISE


def ensure_default_tiers() -> None:
    for defaults in DEFAULT_TIERS:
        fields = defaults.fields()
        SlaTier.objects.get_or_create(slug=fields.pop("slug"), defaults=fields)


def unlimited(org: Organization) -> None:
    """Put `org` on a tier with limits and a budget far out of reach: for tests of
    routing and metering that send many requests, not of limits (those set their own)."""
    fields = {
        **ENTERPRISE.fields(),
        "slug": "tests-unlimited",
        "name": "Tests (unreachable limits)",
        "requests_per_minute": 2_000_000_000,  # (a PositiveIntegerField: 32 bits)
        "tokens_per_minute": 2_000_000_000,
    }
    fields.pop("slug")
    tier, _ = SlaTier.objects.get_or_create(slug="tests-unlimited", defaults=fields)
    tier_change(org=org, tier=tier)
    budget_set(org=org, monthly_budget_usd=Decimal("1000000"))
