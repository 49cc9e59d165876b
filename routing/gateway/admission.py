"""Admission: rate limits and budgets, one Redis round trip per request (`billing.limits`).

`Admission.admit` runs after the plan is made (routing is in memory) and before any
backend is called: a refused request calls no backend and meters nothing. It answers
    403 account_suspended      the org is suspended (dunning; the reason is said)
    429 rate_limit_exceeded    requests or tokens per minute, with Retry-After
    429 insufficient_quota     the worst-case charge does not fit the org's or the
                               key's monthly budget (the cap, the spend, the reset date)
and otherwise returns a `Ticket`: the reservation, and the x-ratelimit-* headers every
answer carries. `settlement` turns the ticket and the usage record into the settle
script's call, which the usage publisher runs in the XADD's pipeline.

Both price a backend as the drain does (`rate`): the organization's own private cluster
at the tier's platform fee (per request and per token; it has no provider cost), a
public one at the operators' list price for its model when one is in force, else at its
provider cost with the tier's margin. The reservation covers the dearest candidate at
the rate in force and at any list price already scheduled to replace it (a request may
complete after the change); the settlement charges the rate in force when the request
completed, as the drain does, so the settled spend is the charge the drain stores. The
sums are integers of pico-dollars (`limits.tariff`): exact, and cheap per request.

`TESSERACT_LIMITS=0` switches rate limits and budgets off (suspension still applies):
for the benchmark's "off" run only.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings

from backends.snapshot import Endpoint, World
from billing import limits, metering, rating
from routing.engine import Plan
from routing.errors import BudgetExceeded, PermissionDenied, RateLimited
from routing.gateway.attempt import Call
from routing.gateway.db import off_loop

_NO_RETRY = [(b"x-should-retry", b"false")]


@dataclass(frozen=True, slots=True)
class Ticket:
    keys: Sequence[str]
    verdict: limits.Verdict
    limits: limits.Limits
    tokens: int
    reserve_nano: int
    headers: list[tuple[bytes, bytes]]


def cost(endpoint: Endpoint) -> rating.Price:
    """The deployment's cost as the catalog stores it (6 decimal places, via str)."""
    return _cost(endpoint.price_input_per_mtok, endpoint.price_output_per_mtok)


def rate(endpoint: Endpoint, at: float) -> limits.Rate:
    """How a request this backend serves and that completes at `at` is billed
    (`billing.rating.PriceBook.rate`): a private cluster's at the platform fee, else at
    the model's list price in force then, else at its cost with the margin."""
    if endpoint.org_id is not None:
        return limits.PLATFORM_FEE
    listed = None
    for since, price in endpoint.list_prices:  # oldest first
        if since > at:
            break
        listed = price
    return cost(endpoint) if listed is None else limits.Listed(listed)


def rates_from(endpoint: Endpoint, at: float) -> list[limits.Rate]:
    """Every way a request admitted at `at` may be billed, however late it completes:
    the rate in force now and each list price an operator has scheduled after."""
    now = rate(endpoint, at)
    if now is limits.PLATFORM_FEE:
        return [now]
    return [now, *(limits.Listed(price) for since, price in endpoint.list_prices if since > at)]


@functools.lru_cache(maxsize=4096)
def _cost(input_per_mtok: float, output_per_mtok: float) -> rating.Price:
    return rating.Price(Decimal(str(input_per_mtok)), Decimal(str(output_per_mtok)))


class _Tariffs:
    """`limits.tariff` per (rate, tier margin, platform fee), remembered: the hot path
    prices every candidate of every request. Keyed by value, so a new price in the
    catalog is a new entry; cleared when it grows past what a catalog could fill."""

    MAX = 4096

    def __init__(self) -> None:
        self._by_terms: dict[tuple[Decimal, rating.PlatformFee], dict[limits.Rate, limits.Tariff]]
        self._by_terms = {}
        self._size = 0

    def of(self, rate: limits.Rate, lim: limits.Limits) -> limits.Tariff:
        terms = (lim.margin_pct, lim.platform_fee)
        known = self._by_terms.get(terms)
        if known is None:
            known = self._by_terms[terms] = {}
        tariff = known.get(rate)
        if tariff is None:
            if self._size >= self.MAX:
                self._by_terms, self._size = {terms: known}, 0
                known.clear()
            tariff = known[rate] = limits.tariff(rate, lim)
            self._size += 1
        return tariff


class Admission:
    def __init__(self, redis: Any, *, enabled: bool | None = None) -> None:
        self.redis = redis
        self.scripts = limits.Scripts(redis)
        self.tariffs = _Tariffs()
        self.enabled = settings.TESSERACT_LIMITS if enabled is None else enabled

    async def admit(self, call: Call, plan: Plan, world: World) -> Ticket | None:
        key = call.key
        lim = limits.of(key)
        if lim.suspended_reason is not None:
            error = PermissionDenied(
                f"This organization's API access is suspended: {lim.suspended_reason} "
                "Paying the outstanding invoice restores it at once.",
                code="account_suspended",
            )
            error.extra_headers = list(_NO_RETRY)
            raise error
        if not self.enabled:
            return None
        r = call.parsed.route
        tokens = r.input_tokens + r.max_output_tokens
        now = time.time()
        worst = 0  # pico-dollars: what the dearest candidate could charge
        for choice in plan.choices:
            for candidate in rates_from(world.endpoints[choice.backend_id], now):
                tariff = self.tariffs.of(candidate, lim)
                charge = limits.pico_charge(
                    tariff, input_tokens=r.input_tokens, output_tokens=r.max_output_tokens
                )
                worst = max(worst, charge)
        reserve = limits.nano_up(worst)
        month = limits.month_at(now)
        keys = limits.redis_keys(org_id=key.org_id, key_id=key.id, month=month)
        verdict = await limits.admit(self.scripts, keys, lim, tokens=tokens, reserve_nano=reserve)
        if verdict.status in (limits.SEED_ORG, limits.SEED_KEY):
            # The month's counter is missing (a new month, or Redis lost it): rebuild it
            # from the stored charges, once, then ask again.
            org_nano, key_nano = await off_loop(limits.stored_spend)(
                org_id=key.org_id, key_id=key.id, month=month
            )
            await limits.seed(self.redis, keys, org_nano=org_nano, key_nano=key_nano)
            verdict = await limits.admit(
                self.scripts, keys, lim, tokens=tokens, reserve_nano=reserve
            )
        headers = limits.headers(verdict)
        status = verdict.status
        if status in (limits.RPM_ORG, limits.RPM_KEY, limits.TPM_ORG, limits.TPM_KEY):
            whose = "organization" if status in (limits.RPM_ORG, limits.TPM_ORG) else "API key"
            if status in (limits.RPM_ORG, limits.RPM_KEY):
                what = f"requests per minute ({verdict.requests_limit})"
            else:
                what = f"tokens per minute ({verdict.tokens_limit}; this request counts {tokens})"
            rate_error = RateLimited(
                f"Rate limit reached for this {whose}: {what}. "
                f"Try again in {limits.reset_text(verdict.reset_ms)}.",
                retry_after_s=max(1, math.ceil(verdict.reset_ms / 1000)),
            )
            rate_error.extra_headers = headers
            raise rate_error
        if status in (limits.BUDGET_ORG, limits.BUDGET_KEY):
            org_budget = status == limits.BUDGET_ORG
            cap = lim.org_cap_usd if org_budget else lim.key_cap_usd
            spent = limits.from_nano(
                verdict.org_spend_nano if org_budget else verdict.key_spend_nano
            )
            _, reset = limits.month_bounds(month)
            worst_usd = limits.from_nano(reserve)
            budget_error = BudgetExceeded(
                f"This request could cost up to ${worst_usd:.6f}, which does not fit the "
                f"{'organization' if org_budget else 'API key'}'s monthly budget: "
                f"cap ${cap:.2f}, spent (and reserved) ${spent:.6f} this month. "
                f"The budget resets on {reset:%Y-%m-%d} 00:00 UTC; an owner can raise it.",
            )
            budget_error.extra_headers = headers + _NO_RETRY
            raise budget_error
        return Ticket(keys, verdict, lim, tokens, reserve, headers)

    def settlement(
        self, ticket: Ticket | None, endpoint: Endpoint | None, record: metering.UsageRecord
    ) -> tuple[Any, Sequence[str], list[Any]] | None:
        """The settle script's call: the actual charge (the drain's rule: the platform
        fee on a private cluster, else cost with margin) replaces the reservation;
        unused tokens go back. Nothing served costs nothing, fee included."""
        if ticket is None:
            return None
        actual = 0
        if endpoint is not None and (record.input_tokens or record.output_tokens):
            tariff = self.tariffs.of(rate(endpoint, record.created_at), ticket.limits)
            actual = limits.nano_up(
                limits.pico_charge(
                    tariff, input_tokens=record.input_tokens, output_tokens=record.output_tokens
                )
            )
        args = limits.settle_args(
            ticket.verdict,
            reserved_tokens=ticket.tokens,
            actual_tokens=record.input_tokens + record.output_tokens,
            reserve_nano=ticket.reserve_nano,
            actual_nano=actual,
        )
        return self.scripts.settle, ticket.keys, args
