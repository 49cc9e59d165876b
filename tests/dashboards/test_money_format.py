"""Amounts of money on the pages: cents where there are cents, and a spend under a cent
shown as what it is, never as $0.00."""

from decimal import Decimal

import pytest

from dashboards.templatetags.money import usd, usd_exact


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0"), "$0.00"),
        (Decimal("1234.5"), "$1,234.50"),
        (Decimal("0.01"), "$0.01"),
        (Decimal("0.0149"), "$0.01"),
        (Decimal("0.000432118"), "$0.000432"),
        (Decimal("0.0000120"), "$0.000012"),
        (Decimal("0.0099999"), "$0.01"),  # rounds up to a cent
        (Decimal("-2.5"), "-$2.50"),
        (Decimal("-0.00031"), "-$0.00031"),
        (0.25, "$0.25"),
        (None, "—"),
    ],
)
def test_an_amount_shows_cents_or_its_first_three_digits_under_a_cent(amount, shown):
    assert usd(amount) == shown


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (Decimal("0.000001234"), "$0.000001234"),  # a charge, to the nano-dollar
        (Decimal("9.10000E-7"), "$0.00000091"),
        (Decimal("3.900000"), "$3.9"),  # a unit price as stored
        (Decimal("12"), "$12"),
        (Decimal("1200"), "$1,200"),  # normalize() gives 1.2E+3; shown in full
        (Decimal("1234.5670"), "$1,234.567"),  # thousands separated, as `usd` does
        (Decimal("-0.5"), "-$0.5"),
        (Decimal("-0"), "$0"),
        (0.1, "$0.1"),  # a float as it reads, not its binary expansion
        (None, "—"),
    ],
)
def test_an_exact_amount_shows_every_digit_it_has_and_no_more(amount, shown):
    assert usd_exact(amount) == shown
