"""Admission: rate limits and budgets, one Redis round trip per request (`billing.limits`).

An admission is made ready after the plan is made (`prepare`: routing is in memory),
then either sent and waited for before any backend is called (`ask`), or, when this
process's last answer for the key left room to spare, sent beside the first backend
call (`overlap`, then `resolve`; the gateway cuts the call off on a refusal), or, for a
non-streamed request on the same condition, made only once the request is served, in
one atomic step with its usage record (`defer`, then `admit_served`). Every way
nothing is answered or metered before the answer, and a refused request meters
nothing. It answers
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

import asyncio
import functools
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from redis.exceptions import NoScriptError

from accounts import autopipe
from backends.snapshot import Endpoint, World
from billing import limits, metering, rating
from routing.engine import Plan
from routing.errors import BudgetExceeded, PermissionDenied, RateLimited
from routing.gateway import observability
from routing.gateway.attempt import Call
from routing.gateway.db import off_loop

logger = logging.getLogger(__name__)

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
        #: the last limits asked for and their book: hashing a tier's terms (Decimals)
        #: costs more than pricing a candidate, and one key's requests come in runs
        self._last: tuple[limits.Limits | None, dict[str, _Entry]] = (None, {})

    def _book(self, endpoints: Mapping[str, Endpoint], lim: limits.Limits) -> dict[str, _Entry]:
        if endpoints is not self._endpoints:
            self._endpoints, self._books, self._last = endpoints, {}, (None, {})
        last, book = self._last
        if lim is last:
            return book
        terms = (lim.margin_pct, lim.platform_fee)
        book = self._books.setdefault(terms, {})
        self._last = (lim, book)
        return book

    @staticmethod
    def _entry(
        book: dict[str, _Entry],
        endpoints: Mapping[str, Endpoint],
        lim: limits.Limits,
        backend_id: str,
        at: float,
    ) -> _Entry:
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
        book = self._book(endpoints, lim)
        for backend_id in backend_ids:
            in_force, scheduled, _, _ = self._entry(book, endpoints, lim, backend_id, now)
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
        return self._entry(self._book(endpoints, lim), endpoints, lim, backend_id, at)[0]


def _unbounded_output(
    endpoints: Mapping[str, Endpoint], backend_ids: Iterable[str], input_tokens: int, default: int
) -> int:
    """What a request that sets no max_tokens may generate on these backends: up to its
    model's context less its input on the longest of them (the backend decides, not our
    default: a server generates until the end of its window); the default where the
    catalog knows no context."""
    most = default
    for backend_id in backend_ids:
        room = endpoints[backend_id].context_length - input_tokens
        if room > most:
            most = room
    return most


#: the tariff in force; the list prices scheduled after it (start, tariff); from; until
_Entry = tuple[limits.Tariff, tuple[tuple[float, limits.Tariff], ...], float, float]


@dataclass(frozen=True, slots=True)
class Ask:
    """An admission made ready (`Admission.prepare`): what the script is asked."""

    keys: Sequence[str]
    args: tuple[int, ...]  # the script's (`limits.admit_args`)
    limits: limits.Limits
    tokens: int
    reserve_nano: int
    month: str
    org_id: int
    key_id: int
    world: World
    max_tokens_given: bool = True  # else its reserve covers the model's whole context


class Pending:
    """An admission sent and not yet answered, while the backend is called beside it
    (`Admission.overlap`); `Admission.resolve` turns it into the ticket or the refusal."""

    __slots__ = ("ask", "reply")

    def __init__(self, ask: Ask, reply: asyncio.Future[list[Any]]) -> None:
        self.ask, self.reply = ask, reply

    def stops(self) -> bool:
        """The reply is in and the request cannot go on: refused (a rate limit or a
        budget), lost with the connection to Redis, or an error (but NOSCRIPT, which
        is asked again)."""
        if not self.reply.done() or self.reply.cancelled():
            return False
        if self.reply.exception() is not None:
            return True
        (reply,) = self.reply.result()
        if isinstance(reply, Exception):
            return not isinstance(reply, NoScriptError)
        return reply[0] in limits.REFUSALS


#: Overlap only while the last answer left this much of each limit and cap (a share)
#: after the request: near a limit, where another process's requests may already have
#: used the rest, the admission is answered before any backend is called.
OVERLAP_MARGIN = 0.1
#: ... and only on an answer this recent (seconds) ...
OVERLAP_FRESH_S = 2.0
#: ... and only while the process is quiet: at most this many Redis submissions
#: unanswered. A busy process's admissions share round trips (one write per turn of
#: the event loop) and its requests wait behind each other anyway, and overlapping
#: there was measured to cost throughput (`make bench-limits`): it waits.
OVERLAP_QUIET = 2
#: At most this many keys' last answers are kept (stale ones are dropped to make room).
ROOMS_KEPT = 10_000


class _Room:
    """What this process last heard of a key's windows and spends, less what it has
    overlapped since (`Admission.overlap`)."""

    __slots__ = (
        "at",
        "key_spend",
        "org_spend",
        "requests",
        "requests_limit",
        "tokens",
        "tokens_limit",
    )

    def __init__(self, verdict: limits.Verdict, at: float) -> None:
        self.at = at
        self.requests, self.requests_limit = verdict.requests_remaining, verdict.requests_limit
        self.tokens, self.tokens_limit = verdict.tokens_remaining, verdict.tokens_limit
        self.org_spend, self.key_spend = verdict.org_spend_nano, verdict.key_spend_nano


def _keeps_margin(left: int, limit: int) -> bool:
    """`left` of a limit (requests, tokens, nano-dollars) stays at or above its margin
    (-1: no limit)."""
    return limit < 0 or left >= math.ceil(limit * OVERLAP_MARGIN)


class Admission:
    def __init__(self, redis: Any, *, enabled: bool | None = None) -> None:
        self.redis = redis
        self.scripts = limits.Scripts(redis)
        self.tariffs = _Tariffs()
        self.enabled = settings.TESSERACT_LIMITS if enabled is None else enabled
        self.overlapping = settings.TESSERACT_ADMISSION_OVERLAP
        #: admit a served request with its usage record (`defer`): one atomic script
        #: runs both, so one Redis command, not two, on a single server or Sentinel's
        #: master (Cluster keeps the stream in a slot of its own: there it is `overlap`)
        self.deferring = settings.TESSERACT_ADMISSION_DEFER and isinstance(
            self.scripts.pipe, autopipe.AutoPipeline
        )
        self.fresh_s = OVERLAP_FRESH_S
        self.clock = time.monotonic  # when an answer was heard (tests move it)
        self._rooms: dict[tuple[int, int], _Room] = {}
        #: what deferred requests in flight have claimed, per key (requests, tokens,
        #: nano-dollars): Redis has not heard of them, so every answer leaves it out
        self._held: dict[tuple[int, int], list[int]] = {}
        #: served requests' admissions seen through after their clients left
        self._finishing: set[asyncio.Task[Ticket]] = set()

    def prepare(self, call: Call, plan: Plan, world: World, deadline_s: float) -> Ask | None:
        """The admission to send (None: limits are off). A suspended org is refused here.
        `deadline_s`: how long the request may run (a list price scheduled to start by
        then is reserved for)."""
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
        r, parsed = call.parsed.route, call.parsed
        backend_ids = [c.backend_id for c in plan.choices]
        # Rate limits count max_tokens (or the default) for each completion; the budget
        # reserves what the backend may really generate (its context, without max_tokens).
        output_tokens = r.max_output_tokens * parsed.completions
        reserved_output = output_tokens
        if not parsed.max_tokens_given:
            most = _unbounded_output(
                world.endpoints, backend_ids, r.input_tokens, r.max_output_tokens
            )
            reserved_output = most * parsed.completions
        now = time.time()
        worst = self.tariffs.worst(
            world.endpoints,
            lim,
            backend_ids,
            now,
            now + deadline_s + RECORD_SLACK_S,
            input_tokens=r.input_tokens,
            output_tokens=reserved_output,
        )
        month = limits.month_at(now)
        tokens, reserve = r.input_tokens + output_tokens, limits.nano_up(worst)
        return Ask(
            keys=limits.redis_keys(org_id=key.org_id, key_id=key.id, month=month),
            args=limits.admit_args(lim, tokens=tokens, reserve_nano=reserve),
            limits=lim,
            tokens=tokens,
            reserve_nano=reserve,
            month=month,
            org_id=key.org_id,
            key_id=key.id,
            world=world,
            max_tokens_given=parsed.max_tokens_given,
        )

    async def ask(self, ask: Ask) -> Ticket:
        """Send the admission and wait for its answer: the ticket, or the refusal raised."""
        return await self._ticket(ask, await self.scripts.admit_verdict(ask.keys, ask.args))

    def overlap(self, ask: Ask) -> Pending | None:
        """Send the admission without waiting for it, so that the backend is called in
        the same round trip, when this process's last answer for the key left room to
        spare (`OVERLAP_MARGIN`, `OVERLAP_FRESH_S`) and the process is quiet
        (`OVERLAP_QUIET`); else None (ask and wait).

        The answer is as exact as ever, and nothing is served, metered or charged
        before it: what overlapping risks is only the backend's work on a request the
        answer then refuses (the call is cut off as soon as the refusal arrives). Near
        a limit, or for a key not heard of in the last seconds, nothing is risked.
        """
        if not self.overlapping or self.scripts.pipe.unanswered() > OVERLAP_QUIET:
            return None
        if not self.claim_room(ask):
            return None
        observability.overlapped()
        # Queued: it leaves with the turn's write (`accounts.autopipe`), once the
        # backend call is prepared. Written at once instead, before the call was
        # prepared, it measured about 0.04 ms more per sequential request on two shared
        # cores, though its answer was then more often in before the process next
        # waited (bench/results/gateway.md, 2026-11-30 10:03).
        return Pending(ask, self.scripts.admit_submit(ask.keys, ask.args))

    def defer(self, ask: Ask) -> bool:
        """Whether to admit this request only once it has been served, in the same
        atomic step as its usage record (`admit_served`): when this process's last
        answer for the key left room to spare (`claim_room`), as for `overlap`. Only a
        non-streamed request may wait so (nothing of it reaches the client before its
        record), and the gateway asks only for a backend we run, in a process with no
        other request in flight (`Gateway.run`).

        It is as exact as the admission before the call: the check counts what the
        request used and charges what it cost, atomically with every other process's,
        and a refusal meters nothing. What it risks, like `overlap`, is the backend's
        work on a request the answer then refuses (here all of it, and the client waits
        for it): only when other processes used the key's last tenth meanwhile."""
        if not self.deferring or not self.claim_room(ask):
            return False
        held = self._held.setdefault((ask.org_id, ask.key_id), [0, 0, 0])
        held[0] += 1
        held[1] += ask.tokens
        held[2] += ask.reserve_nano
        observability.deferred()
        return True

    def release(self, ask: Ask) -> None:
        """A deferred request is admitted, refused or gone: its claim is no longer held."""
        key = (ask.org_id, ask.key_id)
        held = self._held.get(key)
        if held is None:
            return
        held[0] -= 1
        held[1] -= ask.tokens
        held[2] -= ask.reserve_nano
        if held[0] <= 0:
            del self._held[key]

    async def admit_served(
        self,
        ask: Ask,
        record: metering.UsageRecord,
        endpoint: Endpoint | None,
        catalog: Mapping[str, Endpoint] | None,
    ) -> Ticket:
        """A deferred request's admission (`defer`), now that it has been served: its
        rate windows count the tokens it used and its budgets the charge it cost (the
        drain's, as `settlement` charges), and its record is appended in the same step;
        the ticket, or the refusal raised (nothing metered). Raises Redis's failure too
        (the record is then in the stream if the script ran; nothing was answered)."""
        self.release(ask)
        tokens = record.input_tokens + record.output_tokens
        cost = self._actual_nano(ask.limits, ask.world, endpoint, record, catalog)
        served = Ask(
            keys=ask.keys,
            args=limits.admit_args(ask.limits, tokens=tokens, reserve_nano=cost),
            limits=ask.limits,
            tokens=tokens,
            reserve_nano=cost,
            month=ask.month,
            org_id=ask.org_id,
            key_id=ask.key_id,
            world=ask.world,
        )
        recorded = self.scripts.admit_record(
            served.keys, served.args, metering.STREAM, metering.encode(record)
        )
        try:
            return await self._recorded_ticket(served, recorded)
        except asyncio.CancelledError:
            # The client left while the answer was on its way: what was served is
            # metered all the same if admitted. A task of its own sees it through.
            task = asyncio.ensure_future(self._recorded_ticket(served, recorded))
            self._finishing.add(task)
            task.add_done_callback(self._finished)
            raise

    async def _recorded_ticket(self, served: Ask, recorded: limits.Recorded) -> Ticket:
        verdict = await recorded.verdict()
        if verdict.status in (limits.SEED_ORG, limits.SEED_KEY):
            await self._seed(served)
            recorded.send()
            verdict = await recorded.verdict()
            if verdict.status in (limits.SEED_ORG, limits.SEED_KEY):
                raise RuntimeError(f"the spend counters of {served.keys[2]} vanished twice")
        try:
            return await self._ticket(served, verdict, served=True)
        except (RateLimited, BudgetExceeded):
            observability.deferral_refused()
            raise

    def _finished(self, task: asyncio.Task[Ticket]) -> None:
        self._finishing.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, RateLimited | BudgetExceeded):
            logger.warning("the admission of a served request whose client left failed: %r", exc)

    def claim_room(self, ask: Ask) -> bool:
        """Whether this process's last answer for the key, at most `fresh_s` old, less
        what it has overlapped since, leaves `OVERLAP_MARGIN` of every limit and cap
        after this request; if so, the request is taken off that room."""
        room = self._rooms.get((ask.org_id, ask.key_id))
        if room is None or self.clock() - room.at > self.fresh_s:
            return False
        org_cap, key_cap = ask.args[limits.ARG_ORG_CAP], ask.args[limits.ARG_KEY_CAP]
        if not (
            _keeps_margin(room.requests - 1, room.requests_limit)
            and _keeps_margin(room.tokens - ask.tokens, room.tokens_limit)
            and _keeps_margin(org_cap - room.org_spend - ask.reserve_nano, org_cap)
            and _keeps_margin(key_cap - room.key_spend - ask.reserve_nano, key_cap)
        ):
            return False
        room.requests -= 1
        room.tokens -= ask.tokens
        room.org_spend += ask.reserve_nano
        room.key_spend += ask.reserve_nano
        return True

    async def resolve(self, pending: Pending) -> Ticket:
        """The overlapped admission's ticket, or its refusal raised. Safe to call again
        after a cancellation: the reply is shielded, and stays for the next call."""
        reply = pending.reply
        (raw,) = reply.result() if reply.done() else await asyncio.shield(reply)
        if isinstance(raw, Exception):  # NOSCRIPT (the script did not run), or worse
            if not isinstance(raw, NoScriptError):
                raise raw
            return await self.ask(pending.ask)
        return await self._ticket(pending.ask, limits.Verdict.from_reply(raw))

    def _remember(self, ask: Ask, verdict: limits.Verdict) -> None:
        now = self.clock()
        rooms = self._rooms
        if len(rooms) >= ROOMS_KEPT and (ask.org_id, ask.key_id) not in rooms:
            for key in [k for k, room in rooms.items() if now - room.at > self.fresh_s]:
                del rooms[key]  # the stale: they no longer count
            if len(rooms) >= ROOMS_KEPT:
                return  # this many keys heard of in the last seconds: no room kept
        room = rooms[ask.org_id, ask.key_id] = _Room(verdict, now)
        held = self._held.get((ask.org_id, ask.key_id))
        if held is not None:  # deferred requests in flight: not in the answer yet
            room.requests -= held[0]
            room.tokens -= held[1]
            room.org_spend += held[2]
            room.key_spend += held[2]

    async def _seed(self, ask: Ask) -> None:
        """The month's counter is missing (a new month, or Redis lost it): rebuild it
        from the stored charges (off the event loop), once."""
        org_nano, key_nano = await off_loop(limits.stored_spend)(
            org_id=ask.org_id, key_id=ask.key_id, month=ask.month
        )
        await limits.seed(self.redis, ask.keys, org_nano=org_nano, key_nano=key_nano)

    async def _ticket(self, ask: Ask, verdict: limits.Verdict, *, served: bool = False) -> Ticket:
        """The ticket for the script's answer (seeding and asking again if the month's
        counter is missing), or the refusal it says raised. `served`: the admission of
        a deferred request, counting what it used rather than what it might."""
        if verdict.status in (limits.SEED_ORG, limits.SEED_KEY):
            await self._seed(ask)
            verdict = await self.scripts.admit_verdict(ask.keys, ask.args)
        if self.overlapping or self.deferring:
            self._remember(ask, verdict)
        lim, tokens, reserve = ask.limits, ask.tokens, ask.reserve_nano
        headers = limits.headers(verdict)
        status = verdict.status
        if status in (limits.RPM_ORG, limits.RPM_KEY, limits.TPM_ORG, limits.TPM_KEY):
            tpms = [(t, w) for t, w in ((lim.key_tpm, "API key"), (lim.org_tpm, "organization"))
                    if t is not None]  # fmt: skip
            if not served and tpms and tokens > min(tpms)[0]:
                # No window will ever hold it, whichever limit spoke first: waiting would
                # not help, so say what would.
                tpm, owner = min(tpms)
                too_large = RateLimited(
                    f"This request is too large for this {owner}'s limit of {tpm} tokens "
                    f"per minute: it counts {tokens} (its input, and max_tokens for each "
                    "completion it asks for). Retrying will not help; reduce the input, "
                    "max_tokens or n, or ask for a higher limit."
                )
                too_large.extra_headers = headers + _NO_RETRY
                raise too_large
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
            _, reset = limits.month_bounds(ask.month)
            worst_usd = limits.from_nano(reserve)
            unbounded = "" if ask.max_tokens_given else (
                " (it sets no max_tokens, so as much output as the model's context "
                "allows is reserved; set max_tokens to reserve less)"
            )  # fmt: skip
            budget_error = BudgetExceeded(
                f"This request could cost up to ${worst_usd:.6f}{unbounded}, which does "
                "not fit the "
                f"{'organization' if org_budget else 'API key'}'s monthly budget: "
                f"cap ${cap:.2f}, spent (and reserved) ${spent:.6f} this month. "
                f"The budget resets on {reset:%Y-%m-%d} 00:00 UTC; an owner can raise it.",
            )
            budget_error.extra_headers = headers + _NO_RETRY
            raise budget_error
        return Ticket(ask.keys, verdict, lim, tokens, reserve, headers, ask.world)

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
        actual = self._actual_nano(ticket.limits, ticket.world, endpoint, record, catalog)
        args = limits.settle_args(
            ticket.verdict,
            reserved_tokens=ticket.tokens,
            actual_tokens=record.input_tokens + record.output_tokens,
            reserve_nano=ticket.reserve_nano,
            actual_nano=actual,
        )
        return self.scripts.settle, ticket.keys, args

    def _actual_nano(
        self,
        lim: limits.Limits,
        world: World,
        endpoint: Endpoint | None,
        record: metering.UsageRecord,
        catalog: Mapping[str, Endpoint] | None,
    ) -> int:
        """What the request cost (nano-dollars, rounded up), by the drain's rule at its
        completion. Nothing served costs nothing, fee included. `catalog`: the gateway's
        endpoints now (a list price written while the request ran is in it), else those
        it was admitted with."""
        if endpoint is None or not (record.input_tokens or record.output_tokens):
            return 0
        endpoints: Mapping[str, Endpoint] = world.endpoints
        if catalog is not None and endpoint.backend_id in catalog:
            endpoints = catalog
        tariff = self.tariffs.in_force(endpoints, lim, endpoint.backend_id, record.created_at)
        return limits.nano_up(limits.pico_charge(tariff, record.input_tokens, record.output_tokens))
