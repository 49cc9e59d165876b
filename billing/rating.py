"""Rating: what a request costs the tenant. Pure functions on plain data (no Django).

The rules, in one place:

* **Our price** for a request, in USD per 1M tokens, input and output apart, is the
  operator's list price for the served model when one is in force at the request's
  completion, else the provider's cost for the deployment that served it × (1 + the
  margin of the organization's tier in force at that moment). A price is a rate: it is
  stated to a millionth of a dollar per 1M tokens (rounded half-up there, once).
* **A request's charge** = input tokens × input price / 1M + output tokens × output
  price / 1M, kept with every digit (at most 12 decimal places: a 6-place rate divided
  by 1M). It is computed once, by the usage drain, and stored on the `UsageEvent`, so
  a later change of price or tier never rewrites history.
* **A private cluster** (an organization's own deployment) is not billed at provider
  prices, nor at a list price: its requests pay the platform fee of the tier in force,
  `fee per request + tokens × fee per 1M tokens / 1M` (input and output alike).
* **Failed and cancelled requests** are charged for the tokens the backend actually
  produced and counted, nothing more: the gateway records zero tokens for a request
  that failed before its first token, and the tokens streamed so far for one that
  failed or was cancelled midway.
* **Rounding** happens once per invoice line, half-up to the cent (`round_cents`), on
  the exact sum of the line's charges. Nothing is rounded per request.

`Decimal` end to end: no amount of money ever passes through a float.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

MTOK = Decimal(1_000_000)
RATE_QUANTUM = Decimal("0.000001")
CHARGE_QUANTUM = Decimal("1e-12")
CENT = Decimal("0.01")
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal


@dataclass(frozen=True, slots=True)
class Charge:
    """A rated request: the price applied (None when none could be found) and the charge."""

    price: Price | None
    amount: Decimal
    basis: str  # "list", "margin", "platform-fee", "recorded-cost" or "nothing-served"
    #: the platform fee per request included in `amount` (private clusters only)
    per_request: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PlatformFee:
    """What a tier charges for a request served by the organization's own cluster."""

    per_request: Decimal
    per_mtok: Decimal

    def charge(self, input_tokens: int, output_tokens: int) -> Decimal:
        """Exact, like `charge`: the request fee plus every token at the per-1M fee."""
        return self.per_request + (input_tokens + output_tokens) * self.per_mtok / MTOK


def with_margin(cost: Price, margin_pct: Decimal) -> Price:
    """The provider's cost × (1 + margin/100), each rate rounded half-up to 1e-6."""
    factor = 1 + Decimal(margin_pct) / 100
    return Price(
        (cost.input_per_mtok * factor).quantize(RATE_QUANTUM, ROUND_HALF_UP),
        (cost.output_per_mtok * factor).quantize(RATE_QUANTUM, ROUND_HALF_UP),
    )


def charge(price: Price, input_tokens: int, output_tokens: int) -> Decimal:
    """Exact: no rounding (at most 12 decimal places for 6-place rates)."""
    return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / MTOK


def round_cents(amount: Decimal) -> Decimal:
    """Half-up to the cent: 0.005 → 0.01, 0.0049999 → 0.00, -0.005 → -0.01."""
    return amount.quantize(CENT, ROUND_HALF_UP)


def in_force(
    history: Sequence[tuple[float, object]], at: float, *, extend_back: bool
) -> object | None:
    """The value of a (since, value) history sorted by `since`, in force at `at`.

    `extend_back`: before the first entry the first entry applies (an account's tier
    applies to usage recorded in the instant before its first row); else nothing does.
    """
    i = bisect.bisect_right([since for since, _ in history], at) - 1
    if i < 0:
        return history[0][1] if history and extend_back else None
    return history[i][1]


@dataclass(frozen=True)
class PriceBook:
    """Everything rating needs for one batch of usage, loaded in a few queries.

    `costs`: deployment slug → provider cost. `margins`: org id → [(since, margin %)]
    sorted by time. `list_prices`: model slug → [(since, Price)] sorted by time.
    `private`: the slugs of private clusters' deployments; `fees`: org id →
    [(since, PlatformFee)] sorted by time. Times are unix seconds.
    """

    costs: Mapping[str, Price] = field(default_factory=dict)
    margins: Mapping[int, Sequence[tuple[float, Decimal]]] = field(default_factory=dict)
    list_prices: Mapping[str, Sequence[tuple[float, Price]]] = field(default_factory=dict)
    default_margin_pct: Decimal = ZERO
    private: frozenset[str] = frozenset()
    fees: Mapping[int, Sequence[tuple[float, PlatformFee]]] = field(default_factory=dict)
    default_fee: PlatformFee = PlatformFee(ZERO, ZERO)

    def margin(self, *, org_id: int, at: float) -> Decimal:
        margin = in_force(self.margins.get(org_id, ()), at, extend_back=True)
        return self.default_margin_pct if margin is None else Decimal(str(margin))

    def platform_fee(self, *, org_id: int, at: float) -> PlatformFee:
        fee = in_force(self.fees.get(org_id, ()), at, extend_back=True)
        return fee if isinstance(fee, PlatformFee) else self.default_fee

    def price(self, *, org_id: int, deployment: str, model: str, at: float) -> Charge | None:
        """Our price at `at` (as a zero charge naming its basis), or None if unknown."""
        listed = in_force(self.list_prices.get(model, ()), at, extend_back=False)
        if isinstance(listed, Price):
            return Charge(listed, ZERO, "list")
        cost = self.costs.get(deployment)
        if cost is None:
            return None
        return Charge(with_margin(cost, self.margin(org_id=org_id, at=at)), ZERO, "margin")

    def rate(
        self,
        *,
        org_id: int,
        deployment: str,
        model: str,
        at: float,
        input_tokens: int,
        output_tokens: int,
        recorded_cost_usd: Decimal = ZERO,
    ) -> Charge:
        """Rate one request. `model` is the served model; `recorded_cost_usd` the
        provider cost the gateway computed, used only when the deployment has left the
        catalog (then our charge is that cost × (1 + margin), and no unit price)."""
        if input_tokens == 0 and output_tokens == 0:
            return Charge(None, ZERO, "nothing-served")
        if deployment in self.private:
            fee = self.platform_fee(org_id=org_id, at=at)
            return Charge(
                Price(fee.per_mtok, fee.per_mtok),
                fee.charge(input_tokens, output_tokens),
                "platform-fee",
                per_request=fee.per_request,
            )
        priced = self.price(org_id=org_id, deployment=deployment, model=model, at=at)
        if priced is not None and priced.price is not None:
            return Charge(
                priced.price, charge(priced.price, input_tokens, output_tokens), priced.basis
            )
        factor = 1 + self.margin(org_id=org_id, at=at) / 100
        amount = (recorded_cost_usd * factor).quantize(CHARGE_QUANTUM, ROUND_HALF_UP)
        return Charge(None, amount, "recorded-cost")
