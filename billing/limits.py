"""Rate limits and budgets on the hot path: one atomic Redis script per request.

**What admission needs rides in the resolved key.** `load` reads the org's tier (its
limits, margin and platform fee), its budget, the key's own limits and the suspension
once, when the key cache loads a key (`accounts.keycache`, through the loader hook this
app registers in `ready()`); a change to any of them (a tier edited or changed
included) republishes the org's keys on the key cache's channel
(`keys_changed`), so every gateway process drops them within milliseconds. The
deployment's cost is in the world snapshot. The hot path itself never queries.

**Rate limits: fixed one-minute windows on Redis's clock.** A window is the minute of
`TIME` on the Redis server (`floor(unix / 60)`), so every gateway process counts in the
same window whatever its own clock says, and the counters are exact across any number
of processes: one script checks and increments them atomically. Per scope (the org,
and the key) one hash holds `w` (the window), `r` (requests) and `t` (tokens). A
request counts 1 request and its worst-case tokens (estimated input + `max_tokens`, as
OpenAI counts them); on completion the unused tokens are given back if the window is
still the same. Fixed windows allow a burst of twice the limit across a minute
boundary; they are what OpenAI's reset headers describe and cost two hash reads.

**Budgets: reserve the worst case, settle the actual.** Spend lives in Redis per org and
per key and month (`...:spend:{org:N}:YYYY-MM:org`), in nano-dollars (1e-9 USD, an
integer: exact in Lua's doubles up to $9M). Admission reserves the request's worst-case
charge (the dearest candidate's, rounded up to the nano-dollar) if
`spend + reserve <= cap`, in the same script as the rate limits, so no two requests
can both take the last dollar. The worst case is the most any one of the plan's
candidates would charge for the request's tokens by the drain's rule (`tariff`): a
public deployment the operators' list price for its model (`Listed`) in force, or one
scheduled to start before the request must end, else its provider cost with the tier's
margin; the organization's own private cluster (`PLATFORM_FEE`; no provider cost) the
tier's platform fee, per request plus per token. The fee rides in the limits
(`Limits.platform_fee`, loaded with the tier) and list prices in the world snapshot, so
pricing stays off the DB. The sums are integers of pico-dollars (`tariff`,
`pico_charge`): exact. Settlement (`settle_args`, run in the usage XADD's pipeline)
replaces the reservation with the actual charge (the tariff in force when the request
completed, for the candidate that served it), rounded up to the nano-dollar, so the
live spend is what the drain stores, above it by less than a nano-dollar a request;
a failed or cancelled request releases everything but the tokens it was served.

**Or, for a served request, check the actual and record it in one step.** A request
the gateway admits once served (`routing.gateway.admission.Admission.defer`: a
non-streamed one, with room to spare) runs `ADMIT_RECORD`: the same check, counting the
tokens it used and the charge it cost instead of the worst case, and, only if it admits,
the request's usage record appended to the stream in the same atomic step. Nothing is
reserved or settled, and a refusal meters nothing.

**A Redis restart cannot grant a second budget.** A spend counter that is missing while
a cap applies makes the script answer "seed me" instead of admitting: the gateway then
reads the month's stored charges from the database (off the event loop, once per org
and month, like a key-cache miss), writes them with `SET NX` (a concurrent seeder
cannot double it) and asks again. The counters expire 40 days after their last write,
well after their month. Reservations of a gateway killed mid-request are not released
until the month ends (they only ever make the budget stricter).

Every key carries its org's hash tag (`{org:42}`), so the script's keys share one slot
on Redis Cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from typing import Any, Literal, NamedTuple

from redis.exceptions import NoScriptError

from accounts import autopipe
from billing import rating

logger = logging.getLogger(__name__)

NANO = Decimal("1e-9")
SPEND_TTL_MS = 40 * 24 * 3600 * 1000
WINDOW_TTL_MS = 120_000

# Admission outcomes (the script's first value).
OK = 0
RPM_ORG, RPM_KEY, TPM_ORG, TPM_KEY = 1, 2, 3, 4
BUDGET_ORG, BUDGET_KEY = 5, 6
SEED_ORG, SEED_KEY = 7, 8
#: the outcomes that refuse the request
REFUSALS = frozenset({RPM_ORG, RPM_KEY, TPM_ORG, TPM_KEY, BUDGET_ORG, BUDGET_KEY})


NO_FEE = rating.PlatformFee(rating.ZERO, rating.ZERO)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _cap(value: Decimal | None) -> int:
    return -1 if value is None else to_nano(value)


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits in force, as the gateway needs them (None: no limit)."""

    tier: str
    org_rpm: int | None
    org_tpm: int | None
    key_rpm: int | None
    key_tpm: int | None
    org_cap_usd: Decimal | None
    key_cap_usd: Decimal | None
    margin_pct: Decimal
    suspended_reason: str | None = None
    #: what a request served by the org's own private cluster pays (the tier's)
    platform_fee: rating.PlatformFee = NO_FEE
    #: the tier's deadline on the first token of requests that set none (what its
    #: latency objective counts): their place in a deadline-ordered backend queue
    default_ttft_ms: int | None = None
    #: the admit script's limit arguments (`admit_args`), worked out once with the
    #: limits: the hot path reads them per request (a cache keyed by these fields
    #: would hash its Decimals every time)
    limit_args: tuple[int, int, int, int, int, int] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        args = (
            _limit(self.org_rpm),
            _limit(self.key_rpm),
            _limit(self.org_tpm),
            _limit(self.key_tpm),
            _cap(self.org_cap_usd),
            _cap(self.key_cap_usd),
        )
        object.__setattr__(self, "limit_args", args)


UNLIMITED = Limits("none", None, None, None, None, None, None, rating.ZERO)


def load(*, key_id: int, org_id: int) -> Limits:
    """Two indexed queries, made only when the key cache loads a key."""
    from billing.models import ApiKeyLimits, BillingAccount

    account = BillingAccount.objects.select_related("tier").filter(org_id=org_id).first()
    own = ApiKeyLimits.objects.filter(api_key_id=key_id).first()
    if account is None:
        return UNLIMITED
    tier = account.tier
    suspended = None
    if account.suspended_at is not None:
        suspended = account.suspended_reason or "The organization is suspended."
    return Limits(
        tier=tier.slug,
        org_rpm=tier.requests_per_minute,
        org_tpm=tier.tokens_per_minute,
        key_rpm=own.requests_per_minute if own else None,
        key_tpm=own.tokens_per_minute if own else None,
        org_cap_usd=account.monthly_cap_usd,
        key_cap_usd=own.monthly_budget_usd if own else None,
        margin_pct=tier.price_margin_pct,
        suspended_reason=suspended,
        platform_fee=rating.PlatformFee(
            tier.private_cluster_fee_per_request_usd, tier.private_cluster_fee_per_mtok_usd
        ),
        default_ttft_ms=tier.default_ttft_ms,
    )


def with_limits(key: Any) -> Any:
    """The key cache's loader hook: the resolved key, with its limits attached."""
    return dataclasses.replace(key, limits=load(key_id=key.id, org_id=key.org_id))


def of(key: Any) -> Limits:
    limits = getattr(key, "limits", None)
    return limits if isinstance(limits, Limits) else UNLIMITED


def keys_changed(*, org_id: int | None = None, tier_id: int | None = None) -> None:
    """After commit: every gateway process reloads the keys of an org (or of every org on
    a tier), so a new limit, budget or suspension applies at once."""
    from django.db import transaction

    from accounts import keycache
    from accounts.models import ApiKey

    keys = ApiKey.objects.all()
    if org_id is not None:
        keys = keys.filter(org_id=org_id)
    if tier_id is not None:
        keys = keys.filter(org__billing_account__tier_id=tier_id)
    lookups = list(keys.values_list("lookup", flat=True))

    def publish() -> None:
        for lookup in lookups:
            keycache.publish_change(lookup)

    transaction.on_commit(publish)


# --------------------------------------------------------------------------- money


def to_nano(amount: Decimal) -> int:
    """Rounded up: the ledger never holds less than was charged."""
    return int((amount / NANO).to_integral_value(ROUND_CEILING))


def from_nano(units: int) -> Decimal:
    return Decimal(units) * NANO


@functools.lru_cache(maxsize=4096)
def _with_margin(cost: rating.Price, margin_pct: Decimal) -> rating.Price:
    return rating.with_margin(cost, margin_pct)


def price(cost: rating.Price, limits: Limits) -> rating.Price:
    """Our price (`billing.rating.with_margin`, memoized: the hot path asks it per request)."""
    return _with_margin(cost, limits.margin_pct)


class Billing(enum.Enum):
    PLATFORM_FEE = "platform-fee"


@dataclass(frozen=True, slots=True)
class Listed:
    """An operator's list price for the served model (`billing.models.ListPrice`): the
    price itself, for every tier, with no margin on top."""

    price: rating.Price


#: A candidate billed at the tier's platform fee: the organization's own private cluster
#: (`billing.rating.PriceBook.rate`), whatever its provider cost.
PLATFORM_FEE = Billing.PLATFORM_FEE
#: How a candidate is billed: its provider cost (with the tier's margin), a list price,
#: or the fee.
Rate = rating.Price | Listed | Literal[Billing.PLATFORM_FEE]

#: On the hot path charges are integers of pico-dollars (1e-12 USD, the last digit a
#: stored charge keeps): rates are stated to 1e-6 USD per 1M tokens (`billing.models`),
#: so a token costs a whole number of them, and every charge is exact.
PICO_PER_NANO = 1000
#: pico-dollars: per request, per input token, per output token
Tariff = tuple[int, int, int]


def _pico(usd: Decimal, *, per_mtok: bool = False) -> int:
    units = usd.scaleb(6 if per_mtok else 12)
    if units != units.to_integral_value():
        raise ValueError(f"{usd} USD is finer than the rates' 1e-6 per 1M tokens")
    return int(units)


def tariff(rate: Rate, limits: Limits) -> Tariff:
    """What a candidate charges, by the drain's rule (`billing.rating`): the platform fee
    for a private cluster, a list price as it stands, our price (cost with the tier's
    margin) for the rest."""
    if rate is PLATFORM_FEE:
        fee = limits.platform_fee
        per_token = _pico(fee.per_mtok, per_mtok=True)
        return _pico(fee.per_request), per_token, per_token
    ours = rate.price if isinstance(rate, Listed) else price(rate, limits)
    return 0, _pico(ours.input_per_mtok, per_mtok=True), _pico(ours.output_per_mtok, per_mtok=True)


def pico_charge(tariff: Tariff, input_tokens: int, output_tokens: int) -> int:
    """A charge in pico-dollars: exact."""
    per_request, per_input, per_output = tariff
    return per_request + input_tokens * per_input + output_tokens * per_output


def nano_up(pico: int) -> int:
    """Pico- to nano-dollars, rounded up (as `to_nano` rounds)."""
    return -(-pico // PICO_PER_NANO)


def month_of(now: datetime) -> str:
    return f"{now.year:04d}-{now.month:02d}"  # strftime costs µs on every admission


_month: tuple[float, float, str] = (0.0, 0.0, "")


def month_at(unix_s: float) -> str:
    """`month_of` a unix time (UTC), remembered until the month ends: the hot path's."""
    global _month
    start, end, month = _month
    if not start <= unix_s < end:
        month = month_of(datetime.fromtimestamp(unix_s, UTC))
        first, following = month_bounds(month)
        _month = (first.timestamp(), following.timestamp(), month)
    return month


def month_bounds(month: str) -> tuple[datetime, datetime]:
    year, mon = (int(p) for p in month.split("-"))
    start = datetime(year, mon, 1, tzinfo=UTC)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
    return start, end


# --------------------------------------------------------------------------- Redis


@functools.lru_cache(maxsize=4096)
def redis_keys(*, org_id: int, key_id: int | None, month: str) -> tuple[str, str, str, str]:
    """rate windows (org, key), spend (org, key): one hash tag, one Cluster slot."""
    tag = f"{{org:{org_id}}}"
    key = f"key:{key_id}" if key_id is not None else "key:-"
    return (
        f"tesseract:rl:{tag}:org",
        f"tesseract:rl:{tag}:{key}",
        f"tesseract:spend:{tag}:{month}:org",
        f"tesseract:spend:{tag}:{month}:{key}",
    )


_ADMIT_CHECK = """
-- KEYS: rate org, rate key, spend org, spend key
-- ARGV: org_rpm key_rpm org_tpm key_tpm tokens org_cap key_cap reserve window_ttl (-1: no limit)
local now = redis.call('TIME')
local secs = tonumber(now[1])
local window = math.floor(secs / 60)
local reset_ms = (window + 1) * 60000 - (secs * 1000 + math.floor(tonumber(now[2]) / 1000))
local org_rpm, key_rpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local org_tpm, key_tpm = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(ARGV[5])
local org_cap, key_cap, reserve = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local org_r, org_t, key_r, key_t = 0, 0, 0, 0
local v = redis.call('HMGET', KEYS[1], 'w', 'r', 't')
if tonumber(v[1]) == window then org_r, org_t = tonumber(v[2]) or 0, tonumber(v[3]) or 0 end
v = redis.call('HMGET', KEYS[2], 'w', 'r', 't')
if tonumber(v[1]) == window then key_r, key_t = tonumber(v[2]) or 0, tonumber(v[3]) or 0 end
local status = 0
if org_rpm >= 0 and org_r + 1 > org_rpm then status = 1
elseif key_rpm >= 0 and key_r + 1 > key_rpm then status = 2
elseif org_tpm >= 0 and org_t + tokens > org_tpm then status = 3
elseif key_tpm >= 0 and key_t + tokens > key_tpm then status = 4
end
local spend = redis.call('MGET', KEYS[3], KEYS[4])
local org_spend, key_spend = spend[1], spend[2]
if status == 0 then
  if org_cap >= 0 and not org_spend then status = 7
  elseif key_cap >= 0 and not key_spend then status = 8
  elseif org_cap >= 0 and tonumber(org_spend) + reserve > org_cap then status = 5
  elseif key_cap >= 0 and tonumber(key_spend) + reserve > key_cap then status = 6
  end
end
local add_r, add_t, reserved_org, reserved_key = 0, 0, 0, 0
if status == 0 then
  add_r, add_t = 1, tokens
  -- one write per window hash; the expiry is set when a window starts
  redis.call('HSET', KEYS[1], 'w', window, 'r', org_r + 1, 't', org_t + tokens)
  if org_r == 0 then redis.call('PEXPIRE', KEYS[1], ARGV[9]) end
  redis.call('HSET', KEYS[2], 'w', window, 'r', key_r + 1, 't', key_t + tokens)
  if key_r == 0 then redis.call('PEXPIRE', KEYS[2], ARGV[9]) end
  -- a spend counter exists only once seeded (SET NX PX: its expiry)
  if org_spend then org_spend, reserved_org = redis.call('INCRBY', KEYS[3], reserve), 1 end
  if key_spend then key_spend, reserved_key = redis.call('INCRBY', KEYS[4], reserve), 1 end
end
"""

_ADMIT_ANSWER = """
-- the tighter of the org's and the key's windows (-1: neither has a limit)
local function tighter(a_lim, a_used, b_lim, b_used, add)
  local a_rem, b_rem = a_lim - a_used - add, b_lim - b_used - add
  local lim, rem = a_lim, a_rem
  if a_lim < 0 or (b_lim >= 0 and b_rem < a_rem) then lim, rem = b_lim, b_rem end
  if lim < 0 then return -1, -1 end
  if rem < 0 then rem = 0 end
  return lim, rem
end
local rl, rr = tighter(org_rpm, org_r, key_rpm, key_r, add_r)
local tl, tr = tighter(org_tpm, org_t, key_tpm, key_t, add_t)
-- spends as integers: Lua's tostring prints 1.5e+14 from $150,000 on
return {status, window, rl, rr, tl, tr, reset_ms,
        tonumber(org_spend) or 0, tonumber(key_spend) or 0, reserved_org, reserved_key}
"""

#: Admission: the rate windows counted and the worst case reserved, or the refusal.
ADMIT = _ADMIT_CHECK + _ADMIT_ANSWER

#: Admission at completion (`Scripts.admit_record`): the same check, counting what the
#: request used and charging what it cost, and, if admitted, its usage record appended
#: to the stream in the same atomic step (KEYS[5]: the stream; ARGV[11]: the record).
ADMIT_RECORD = (
    _ADMIT_CHECK
    + """
if status == 0 then redis.call('XADD', KEYS[5], '*', 'r', ARGV[11]) end
"""
    + _ADMIT_ANSWER
)

SETTLE = """
-- KEYS: as ADMIT. ARGV: window, tokens_delta, reserved_org, reserved_key, reserve, actual
for i = 1, 2 do
  if redis.call('HGET', KEYS[i], 'w') == ARGV[1] then
    redis.call('HINCRBY', KEYS[i], 't', ARGV[2])
  end
  if redis.call('EXISTS', KEYS[2 + i]) == 1 then
    if ARGV[2 + i] == '1' then
      redis.call('INCRBY', KEYS[2 + i], tonumber(ARGV[6]) - tonumber(ARGV[5]))
    else
      redis.call('INCRBY', KEYS[2 + i], ARGV[6])
    end
  end
end
return 1
"""


class Verdict(NamedTuple):
    """What the script said: the outcome, the windows' state (for the headers) and the
    reservation to settle."""

    status: int
    window: int
    requests_limit: int
    requests_remaining: int
    tokens_limit: int
    tokens_remaining: int
    reset_ms: int
    org_spend_nano: int
    key_spend_nano: int
    reserved_org: bool
    reserved_key: bool

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Verdict:
        """Integers all (`int` on the spends: the script's numbers, whatever their type)."""
        status, window, rl, rr, tl, tr, reset, org_spend, key_spend, org, key = reply
        return cls(
            status, window, rl, rr, tl, tr, reset, int(org_spend), int(key_spend),
            org == 1, key == 1,
        )  # fmt: skip


class Scripts:
    """The two scripts, registered once per client (EVALSHA, reloaded on NOSCRIPT).

    **Admissions are auto-pipelined** through the client's pipe (`accounts.autopipe`):
    the admissions (and usage records) of one turn of the event loop leave together in
    one write, and each resolves as soon as its reply is read; a lone request pays one
    round trip and nothing more. Each script still runs atomically on its own: batching
    changes nothing of what one admission sees. A caller cancelled before its admission
    is written sends nothing; one cancelled after (the client left) has what it reserved
    released as soon as the reply arrives, as a request that produced nothing (its
    request stays counted in its window). One whose connection is lost mid-reply is like
    any command cut off: whether it ran is unknown, and what it may have reserved stays
    until its month ends (stricter, never looser).
    """

    def __init__(self, redis: Any) -> None:
        self.redis = redis
        self.pipe = autopipe.pipe_for(redis)
        self.admit = redis.register_script(ADMIT)
        self.admit_with_record = redis.register_script(ADMIT_RECORD)
        self.settle = redis.register_script(SETTLE)
        self._releasing: set[asyncio.Task[None]] = set()

    def admit_submit(self, keys: Sequence[str], args: Sequence[int]) -> asyncio.Future[list[Any]]:
        """Send the admit script with everything else of this turn; its reply (an
        error as an instance: NOSCRIPT is the caller's to handle) when read."""
        command = ("EVALSHA", self.admit.sha, len(keys), *keys, *args)
        return self.pipe.submit([command], orphan=functools.partial(self._orphaned, keys, args))

    async def admit_verdict(self, keys: Sequence[str], args: Sequence[int]) -> Verdict:
        """The admit script's answer, sent with everything else of this turn."""
        (reply,) = await self.admit_submit(keys, args)
        if isinstance(reply, Exception):
            if not isinstance(reply, NoScriptError):
                raise reply
            await self.redis.script_load(ADMIT)  # Redis restarted, or flushed its scripts
            (reply,) = await self.admit_submit(keys, args)
            if isinstance(reply, Exception):
                raise reply
        return Verdict.from_reply(reply)

    def admit_record(
        self, keys: Sequence[str], args: Sequence[int], stream: str, record: bytes
    ) -> Recorded:
        """Send the admission of a request that has been served (`ADMIT_RECORD`), with
        everything else of this turn: its record is in the stream if, and only if, the
        answer admits it."""
        return Recorded(self, keys, args, stream, record)

    def _orphaned(self, keys: Sequence[str], args: Sequence[int], replies: list[Any]) -> None:
        """The reply of an admission whose caller left while it was in flight."""
        (reply,) = replies
        if isinstance(reply, Exception):
            return
        verdict = Verdict.from_reply(reply)
        if verdict.status != OK:
            return
        task = asyncio.ensure_future(self._release(keys, args, verdict))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release(self, keys: Sequence[str], args: Sequence[int], verdict: Verdict) -> None:
        """Give back all an abandoned admission took (its tokens, its reservation)."""
        tokens, reserve = args[4], args[7]
        release = settle_args(
            verdict, reserved_tokens=tokens, actual_tokens=0, reserve_nano=reserve, actual_nano=0
        )
        try:
            await self.settle(keys=keys, args=release)
        except Exception:  # stricter, never looser: the reservation expires with its month
            logger.warning("could not release an abandoned admission on %s", keys[0], exc_info=True)


class Recorded:
    """A served request's admission with its record (`Scripts.admit_record`), sent:
    the last command sent for it, so that whoever sees it through (the request, or a
    task of its own when the client leaves) never sends it twice. Its reply is
    shielded: once written, it runs whoever waits."""

    __slots__ = ("args", "keys", "record", "reply", "scripts", "stream")
    reply: asyncio.Future[list[Any]]

    def __init__(
        self,
        scripts: Scripts,
        keys: Sequence[str],
        args: Sequence[int],
        stream: str,
        record: bytes,
    ) -> None:
        self.scripts, self.keys, self.args, self.stream, self.record = (
            scripts, keys, args, stream, record,
        )  # fmt: skip
        self.send()

    def send(self) -> None:
        """Send it (again: after NOSCRIPT, or once a missing counter is seeded)."""
        script = self.scripts.admit_with_record
        command = ("EVALSHA", script.sha, len(self.keys) + 1, *self.keys, self.stream,
                   *self.args, self.record)  # fmt: skip
        self.reply = self.scripts.pipe.submit([command])

    async def verdict(self) -> Verdict:
        """The answer; a script Redis had lost is loaded and sent again."""
        while True:
            (reply,) = await asyncio.shield(self.reply)
            if not isinstance(reply, NoScriptError):
                break
            await self.scripts.redis.script_load(ADMIT_RECORD)
            self.send()
        if isinstance(reply, Exception):
            raise reply
        return Verdict.from_reply(reply)


async def admit(
    scripts: Scripts,
    keys: Sequence[str],
    limits: Limits,
    *,
    tokens: int,
    reserve_nano: int,
) -> Verdict:
    args = admit_args(limits, tokens=tokens, reserve_nano=reserve_nano)
    return await scripts.admit_verdict(keys, args)


#: where the caps (nano-dollars, -1: none) are in `admit_args`
ARG_ORG_CAP, ARG_KEY_CAP = 5, 6


def admit_args(limits: Limits, *, tokens: int, reserve_nano: int) -> tuple[int, ...]:
    """The admit script's arguments (after its keys)."""
    org_rpm, key_rpm, org_tpm, key_tpm, org_cap, key_cap = limits.limit_args
    return (
        org_rpm,
        key_rpm,
        org_tpm,
        key_tpm,
        tokens,
        org_cap,
        key_cap,
        reserve_nano,
        WINDOW_TTL_MS,
        SPEND_TTL_MS,
    )


def settle_args(
    verdict: Verdict,
    *,
    reserved_tokens: int,
    actual_tokens: int,
    reserve_nano: int,
    actual_nano: int,
) -> list[Any]:
    return [
        verdict.window,
        actual_tokens - reserved_tokens,
        int(verdict.reserved_org),
        int(verdict.reserved_key),
        reserve_nano,
        actual_nano,
    ]


async def seed(redis: Any, keys: Sequence[str], *, org_nano: int, key_nano: int) -> None:
    """Write the month's stored spend where the counter is missing (NX: never twice)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(keys[2], org_nano, nx=True, px=SPEND_TTL_MS)
        pipe.set(keys[3], key_nano, nx=True, px=SPEND_TTL_MS)
        await pipe.execute()


def stored_spend(*, org_id: int, key_id: int | None, month: str) -> tuple[int, int]:
    """The month's charges stored so far, for the org and the key, in nano-dollars."""
    from django.db.models import Sum

    from billing.models import UsageEvent

    start, end = month_bounds(month)
    month_usage = UsageEvent.objects.filter(
        org_id=org_id, created_at__gte=start, created_at__lt=end
    )
    org_total = month_usage.aggregate(s=Sum("charge_usd"))["s"] or rating.ZERO
    key_total = rating.ZERO
    if key_id is not None:
        key_total = (
            month_usage.filter(api_key_id=key_id).aggregate(s=Sum("charge_usd"))["s"] or rating.ZERO
        )
    return to_nano(org_total), to_nano(key_total)


def reset_text(ms: int) -> str:
    """OpenAI's duration format: 20ms, 1s, 6m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = -(-ms // 1000)
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 60}m{seconds % 60}s"


def headers(verdict: Verdict) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers for the tighter of the org's and the key's window."""
    out: list[tuple[bytes, bytes]] = []
    reset = reset_text(verdict.reset_ms).encode()
    for kind, limit, remaining in (
        (b"requests", verdict.requests_limit, verdict.requests_remaining),
        (b"tokens", verdict.tokens_limit, verdict.tokens_remaining),
    ):
        if limit < 0:
            continue
        out += [
            (b"x-ratelimit-limit-" + kind, b"%d" % limit),
            (b"x-ratelimit-remaining-" + kind, b"%d" % remaining),
            (b"x-ratelimit-reset-" + kind, reset),
        ]
    return out
