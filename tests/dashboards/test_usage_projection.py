"""The billing page's projected month: this month's spend at its pace so far."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from dashboards.templatetags.money import usd
from dashboards.usage import projected_month

#: Noon on 16 November: half of a 30-day month gone.
HALF_NOVEMBER = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)


def test_the_projection_is_the_spend_so_far_at_its_pace_over_the_whole_month():
    assert projected_month(Decimal("10.00"), HALF_NOVEMBER) == Decimal("20.00")


def test_a_projection_under_a_cent_is_not_rounded_to_nothing():
    """Two days of test traffic at $0.0000931 project to about $0.0014 for the month:
    the page says so, as it says the spend so far, not $0.00 under it."""
    second_of_december = datetime(2026, 12, 3, 0, 0, tzinfo=UTC)
    projected = projected_month(Decimal("0.0000931"), second_of_december)
    assert projected > Decimal("0.0000931")
    assert usd(projected) == "$0.00144"
