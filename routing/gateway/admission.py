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
from collections.abc import Iterable, Mapping, Sequence
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
    world: World  # the catalog it was priced in


def cost(endpoint: Endpoint) -> rating.Price:
    """The deployment's cost as the catalog stores it (6 decimal places, via str)."""
    return _cost(endpoint.price_input_per_mtok, endpoint.price_output_per_mtok)


def rate(endpoint: Endpoint, at: float) -> limits.Rate:
    """How a request this backend serves and that completes at `at` is billed
    (`billing.rating.PriceBook.rate`): a private cluster's at the platform fee, else at
    the model's list price in force then, else at its cost with the margin."""
    if endpoint.org_id is not None:
        return limits.PLATFORM_FEE
    listed = rating.in_force(endpoint.list_prices, at, extend_back=False)
    return limits.Listed(listed) if isinstance(listed, rating.Price) else cost(endpoint)


@functools.lru_cache(maxsize=4096)
def _cost(input_per_mtok: float, output_per_mtok: float) -> rating.Price:
    return rating.Price(Decimal(str(input_per_mtok)), Decimal(str(output_per_mtok)))


#: A request's record is written this long after its deadline at the latest (the
#: stream is cut at the deadline; the record follows): how far ahead a reservation
#: looks for list prices scheduled to start.
RECORD_SLACK_S = 5.0


class _Tariffs:
    """Each backend's tariffs for a tier's terms (margin, platform fee), remembered for
    the catalog they were read from (its endpoints: the live maps laid over it every
    second keep them): the hot path prices every candidate of every request.

    An entry holds the tariff in force and the list prices scheduled after it; it
    serves from when that tariff started until the next scheduled one starts."""

    def __init__(self) -> None:
        self._endpoints: Mapping[str, Endpoint] | None = None
        self._books: dict[tuple[Decimal, rating.PlatformFee], dict[str, _Entry]] = {}

    def _book(self, endpoints: Mapping[str, Endpoint], lim: limits.Limits) -> dict[str, _Entry]:
        if endpoints is not self._endpoints:
            self._endpoints, self._books = endpoints, {}
        terms = (lim.margin_pct, lim.platform_fee)
        book = self._books.get(terms)
        if book is None:
            book = self._books[terms] = {}
        return book

    def _entry(
        self, endpoints: Mapping[str, Endpoint], lim: limits.Limits, backend_id: str, at: float
    ) -> _Entry:
        book = self._book(endpoints, lim)
        entry = book.get(backend_id)
        if entry is None or not entry[2] <= at < entry[3]:
            endpoint = endpoints[backend_id]
            starts = [since for since, _ in endpoint.list_prices]
            scheduled: tuple[tuple[float, limits.Tariff], ...] = ()
            if endpoint.org_id is None:  # a private cluster pays its fee, listed or not
                scheduled = tuple(
                    (since, limits.tariff(limits.Listed(price), lim))
                    for since, price in endpoint.list_prices
                    if since > at
                )
            entry = book[backend_id] = (
                limits.tariff(rate(endpoint, at), lim),
                scheduled,
                max((t for t in starts if t <= at), default=-math.inf),
                min((t for t in starts if t > at), default=math.inf),
            )
        return entry

    def worst(
        self,
        endpoints: Mapping[str, Endpoint],
        lim: limits.Limits,
        backend_ids: Iterable[str],
        now: float,
        ends_by: float,
        *,
        input_tokens: int,
        output_tokens: int,
    ) -> int:
        """The most (pico-dollars) a request admitted `now` may be charged on any of
        these backends if it completes by `ends_by`."""
        worst = 0
        for backend_id in backend_ids:
            in_force, scheduled, _, _ = self._entry(endpoints, lim, backend_id, now)
            per_request, per_input, per_output = in_force  # limits.pico_charge, inline
            charge = per_request + input_tokens * per_input + output_tokens * per_output
            if charge > worst:
                worst = charge
            for since, tariff in scheduled:  # rarely any
                if since <= ends_by:
                    worst = max(worst, limits.pico_charge(tariff, input_tokens, output_tokens))
        return worst

    def in_force(
        self, endpoints: Mapping[str, Endpoint], lim: limits.Limits, backend_id: str, at: float
    ) -> limits.Tariff:
        """The tariff of a request that completed at `at`."""
        return self._entry(endpoints, lim, backend_id, at)[0]


#: the tariff in force; the list prices scheduled after it (start, tariff); from; until
_Entry = tuple[limits.Tariff, tuple[tuple[float, limits.Tariff], ...], float, float]


class Admission:
    def __init__(self, redis: Any, *, enabled: bool | None = None) -> None:
        self.redis = redis
        self.scripts = limits.Scripts(redis)
        self.tariffs = _Tariffs()
        self.enabled = settings.TESSERACT_LIMITS if enabled is None else enabled

    async def admit(self, call: Call, plan: Plan, world: World, deadline_s: float) -> Ticket | None:
        """`deadline_s`: how long the request may run (a list price scheduled to start
        by then is reserved for)."""
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
        worst = self.tariffs.worst(
            world.endpoints,
            lim,
            (c.backend_id for c in plan.choices),
            now,
            now + deadline_s + RECORD_SLACK_S,
            input_tokens=r.input_tokens,
            output_tokens=r.max_output_tokens,
        )
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
        return Ticket(keys, verdict, lim, tokens, reserve, headers, world)

    def settlement(
        self,
        ticket: Ticket | None,
        endpoint: Endpoint | None,
        record: metering.UsageRecord,
        catalog: Mapping[str, Endpoint] | None = None,
    ) -> tuple[Any, Sequence[str], list[Any]] | None:
        """The settle script's call: the actual charge (the drain's rule, `rate`, at the
        record's completion) replaces the reservation; unused tokens go back. Nothing
        served costs nothing, fee included. `catalog`: the gateway's endpoints now (a
        list price written while the request ran is in it), else those it was
        admitted with."""
        if ticket is None:
            return None
        actual = 0
        if endpoint is not None and (record.input_tokens or record.output_tokens):
            endpoints: Mapping[str, Endpoint] = ticket.world.endpoints
            if catalog is not None and endpoint.backend_id in catalog:
                endpoints = catalog
            tariff = self.tariffs.in_force(
                endpoints, ticket.limits, endpoint.backend_id, record.created_at
            )
            actual = limits.nano_up(
                limits.pico_charge(tariff, record.input_tokens, record.output_tokens)
            )
        args = limits.settle_args(
            ticket.verdict,
            reserved_tokens=ticket.tokens,
            actual_tokens=record.input_tokens + record.output_tokens,
            reserve_nano=ticket.reserve_nano,
            actual_nano=actual,
        )
        return self.scripts.settle, ticket.keys, args
