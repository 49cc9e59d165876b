"""`{{ amount|usd }}`: an amount of US dollars as the pages show it.

From a cent up, to the cent with thousands separated ($1,234.50). Under a cent, to
three significant digits ($0.000432): a month of test traffic costs fractions of a
cent, and $0.00 would say that it cost nothing. The exact figure (a request's charge
to the nano-dollar) is shown where it is asked for, on the request's own page.
"""

from __future__ import annotations

from decimal import Decimal

from django import template

register = template.Library()

CENT = Decimal("0.01")


@register.filter
def usd(amount: Decimal | float | int | None) -> str:
    if amount is None:
        return "—"
    value = _decimal(amount)
    sign, size = ("-" if value < 0 else ""), abs(value)
    if not size or size >= CENT:
        return f"{sign}${size:,.2f}"
    # Three significant digits: the first digit's place, then two more.
    places = 2 - size.adjusted()
    text = f"{size:.{places}f}"
    return f"{sign}${text.rstrip('0')}"


@register.filter
def usd_exact(amount: Decimal | float | int | None) -> str:
    """Every digit the amount has and no trailing zero: a request's charge to the
    nano-dollar ($0.000001234), a unit price as stored ($3.9 per 1M tokens); thousands
    separated as `usd` does."""
    if amount is None:
        return "—"
    value = _decimal(amount)
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value).normalize():,f}"


def _decimal(amount: Decimal | float | int) -> Decimal:
    """A float as it reads (0.1), not as its binary expansion."""
    return Decimal(str(amount)) if isinstance(amount, float) else Decimal(amount)
