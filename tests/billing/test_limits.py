"""The limits script against a real Redis: exact under concurrency from many clients."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from django.conf import settings

from accounts import autopipe, services
from billing import limits, rating
from billing.models import UsageEvent

LIMITS = limits.Limits("test", 50, None, None, None, None, None, Decimal(0))


def _keys() -> tuple[str, ...]:
    # A fresh org id per test: the windows and counters of other tests never interfere.
    return limits.redis_keys(org_id=10**9 + uuid.uuid4().int % 10**6, key_id=7, month="2026-11")


async def _admit_many(lim: limits.Limits, keys: list[str], n: int, reserve: int, clients: int = 4):
    """`n` admissions at once, spread over `clients` connections (as many processes)."""
    pool = [aioredis.Redis.from_url(settings.REDIS_URL) for _ in range(clients)]
    try:
        scripts = [limits.Scripts(c) for c in pool]
        return await asyncio.gather(
            *(
                limits.admit(scripts[i % clients], keys, lim, tokens=10, reserve_nano=reserve)
                for i in range(n)
            )
        )
    finally:
        for c in pool:
            await c.aclose()


def test_requests_per_minute_are_exact_across_many_clients_at_once():
    keys = _keys()
    verdicts = asyncio.run(_admit_many(LIMITS, keys, 200, 0))
    statuses = [v.status for v in verdicts]
    if any(v.window != verdicts[0].window for v in verdicts):
        pytest.skip("the minute turned during the burst")
    assert statuses.count(limits.OK) == 50
    assert statuses.count(limits.RPM_ORG) == 150
    assert min(v.requests_remaining for v in verdicts) == 0


def test_a_budget_admits_exactly_what_fits_and_a_settlement_frees_the_rest():
    keys = _keys()
    lim = limits.Limits("test", None, None, None, None, Decimal("1.00"), None, Decimal(0))
    reserve = limits.to_nano(Decimal("0.03"))

    async def scenario():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        await limits.seed(client, keys, org_nano=0, key_nano=0)
        verdicts = await _admit_many(lim, keys, 300, reserve)
        spent = int(await client.get(keys[2]))
        # One request finishes having cost 0.01 instead of 0.03: 0.02 comes back.
        ok = next(v for v in verdicts if v.status == limits.OK)
        args = limits.settle_args(
            ok,
            reserved_tokens=10,
            actual_tokens=4,
            reserve_nano=reserve,
            actual_nano=limits.to_nano(Decimal("0.01")),
        )
        await limits.Scripts(client).settle(keys=keys, args=args)
        after = await _admit_many(lim, keys, 5, reserve)
        final = int(await client.get(keys[2]))
        await client.aclose()
        return verdicts, spent, after, final

    verdicts, spent, after, final = asyncio.run(scenario())
    statuses = [v.status for v in verdicts]
    assert statuses.count(limits.OK) == 33  # 33 × 0.03 = 0.99 ≤ 1.00 < 34 × 0.03
    assert statuses.count(limits.BUDGET_ORG) == 267
    assert spent == limits.to_nano(Decimal("0.99"))
    assert [v.status for v in after].count(limits.OK) == 1  # 0.97 + 0.03 = 1.00 fits
    assert final == limits.to_nano(Decimal("1.00"))


def test_a_lost_counter_is_rebuilt_from_stored_charges_so_a_restart_grants_no_second_budget(
    db, alice
):
    org = services.organization_create(name="Acme", owner=alice)
    key = services.api_key_create(org=org, name="k").api_key
    month = limits.month_of(UsageEvent._meta.get_field("created_at").default())
    UsageEvent.objects.create(
        request_id=uuid.uuid4().hex, org=org, api_key=key, endpoint="chat.completions",
        model="m", served_model="m", deployment="d", region="r", cluster="c", chip="x",
        input_tokens=1, output_tokens=1, usage_source="upstream", cost_usd=Decimal("1"),
        charge_usd=Decimal("9.990000000001"),
    )  # fmt: skip
    keys = limits.redis_keys(org_id=org.pk, key_id=key.pk, month=month)
    lim = limits.Limits("test", None, None, None, None, Decimal("10.00"), None, Decimal(0))
    reserve = limits.to_nano(Decimal("0.01"))

    async def before():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        await client.delete(*keys)  # Redis lost everything
        verdict = await limits.admit(
            limits.Scripts(client), keys, lim, tokens=1, reserve_nano=reserve
        )
        await client.aclose()
        return verdict

    async def after(org_nano: int, key_nano: int):
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        await limits.seed(client, keys, org_nano=org_nano, key_nano=key_nano)
        await limits.seed(client, keys, org_nano=0, key_nano=0)  # a late seeder changes nothing
        verdict = await limits.admit(
            limits.Scripts(client), keys, lim, tokens=1, reserve_nano=reserve
        )
        await client.delete(*keys)
        await client.aclose()
        return verdict

    first = asyncio.run(before())
    org_nano, key_nano = limits.stored_spend(org_id=org.pk, key_id=key.pk, month=month)
    second = asyncio.run(after(org_nano, key_nano))
    assert first.status == limits.SEED_ORG  # not admitted on an empty ledger
    assert org_nano == limits.to_nano(Decimal("9.990000000001")) == 9_990_000_001
    assert second.status == limits.BUDGET_ORG
    assert second.org_spend_nano == org_nano


@pytest.mark.parametrize(
    ("ms", "text"), [(20, "20ms"), (1000, "1s"), (1001, "2s"), (59_000, "59s"), (360_000, "6m0s")]
)
def test_resets_read_like_openai_s(ms, text):
    assert limits.reset_text(ms) == text


def charge(rate: limits.Rate, lim: limits.Limits, *, input_tokens: int, output_tokens: int):
    """What the gateway's tariff charges, in dollars, to compare with the drain's rule."""
    pico = limits.pico_charge(limits.tariff(rate, lim), input_tokens, output_tokens)
    return Decimal(pico).scaleb(-12)


PRO_FEE = rating.PlatformFee(per_request=Decimal("0.0001"), per_mtok=Decimal("0.05"))


def test_a_candidate_is_charged_by_the_drain_s_rule_the_platform_fee_on_a_private_cluster():
    lim = limits.Limits(
        "pro", None, None, None, None, None, None, Decimal("20"), platform_fee=PRO_FEE
    )
    cheap = rating.Price(Decimal("0.01"), Decimal("0.02"))
    own = limits.PLATFORM_FEE  # the org's private cluster: its provider cost is zero
    tokens = {"input_tokens": 1000, "output_tokens": 500}
    assert charge(own, lim, **tokens) == PRO_FEE.charge(1000, 500)
    assert charge(cheap, lim, **tokens) == rating.charge(
        rating.with_margin(cheap, Decimal("20")), 1000, 500
    )


def test_a_list_price_is_charged_as_it_stands_for_every_tier_with_no_margin():
    lim = limits.Limits("pro", None, None, None, None, None, None, Decimal("20"))
    listed = limits.Listed(rating.Price(Decimal("10"), Decimal("30")))
    tokens = {"input_tokens": 1000, "output_tokens": 500}
    assert charge(listed, lim, **tokens) == Decimal("0.025")  # 0.01 + 0.015


def test_charges_are_exact_to_the_stored_digit_and_a_reservation_rounds_up_to_the_nano():
    lim = limits.Limits("pro", None, None, None, None, None, None, Decimal("12.5"))
    cost = rating.Price(Decimal("0.000123"), Decimal("7.654321"))
    ours = rating.with_margin(cost, Decimal("12.5"))
    exact = rating.charge(ours, 3, 7)  # 12 decimal places, as a UsageEvent stores it
    assert charge(cost, lim, input_tokens=3, output_tokens=7) == exact
    t = limits.tariff(cost, lim)
    pico = limits.pico_charge(t, input_tokens=3, output_tokens=7)
    assert limits.nano_up(pico) == limits.to_nano(exact)
    assert [limits.nano_up(p) for p in (0, 1, 1000, 1001)] == [0, 1, 1, 2]


def test_a_rate_finer_than_a_millionth_per_million_tokens_is_refused_not_rounded():
    lim = limits.Limits("pro", None, None, None, None, None, None, Decimal(0))
    with pytest.raises(ValueError, match="finer"):
        limits.tariff(limits.Listed(rating.Price(Decimal("0.0000001"), Decimal(1))), lim)


def test_the_month_of_a_unix_time_turns_at_utc_midnight_on_the_first():
    from datetime import UTC, datetime

    before = datetime(2026, 11, 30, 23, 59, 59, 999000, tzinfo=UTC).timestamp()
    after = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    assert limits.month_at(before) == "2026-11"
    assert limits.month_at(after) == "2026-12"
    assert limits.month_at(before) == "2026-11"  # remembered, never stale


def test_an_org_that_spent_over_a_hundred_thousand_dollars_this_month_is_still_admitted_exactly():
    # Lua prints such numbers as 1.5e+14: the script must answer integers.
    keys = _keys()
    lim = limits.Limits("test", None, None, None, None, Decimal("1000000"), None, Decimal(0))
    spent = limits.to_nano(Decimal("150000.123456789"))

    async def scenario():
        async with _seeded(keys) as (client, scripts):
            await client.set(keys[2], spent)
            return await limits.admit(scripts, keys, lim, tokens=10, reserve_nano=7)

    verdict = asyncio.run(scenario())
    assert verdict.status == limits.OK
    assert verdict.org_spend_nano == spent + 7


def test_the_limits_a_key_loads_carry_its_tier_s_platform_fee(db, alice):
    from billing.models import SlaTier
    from billing.subscriptions import tier_change
    from tests.tiers import ensure_default_tiers

    ensure_default_tiers()
    org = services.organization_create(name="Acme", owner=alice)
    key = services.api_key_create(org=org, name="k").api_key
    tier_change(org=org, tier=SlaTier.objects.get(slug="pro"))
    assert limits.load(key_id=key.pk, org_id=org.pk).platform_fee == PRO_FEE
    tier_change(org=org, tier=SlaTier.objects.get(slug="enterprise"))
    enterprise = limits.load(key_id=key.pk, org_id=org.pk).platform_fee
    assert enterprise == rating.PlatformFee(Decimal("0.00005"), Decimal("0.02"))


UNLIMITED_BUT_BUDGET = limits.Limits(
    "test", None, None, None, None, Decimal("1.00"), None, Decimal(0)
)


@contextlib.asynccontextmanager
async def _seeded(keys):
    """A client and its scripts, on a ledger seeded at zero (deleted afterwards)."""
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    await limits.seed(client, keys, org_nano=0, key_nano=0)
    try:
        yield client, limits.Scripts(client)
    finally:
        await client.delete(*keys)
        await client.aclose()


class _CountingWrites:
    """Records, for each write to Redis on the hot path's connections, how many
    commands it carried."""

    def __init__(self, monkeypatch):
        self.sizes: list[int] = []
        write = autopipe._Connection.write

        def counted(connection, submissions):
            self.sizes.append(sum(s.expected for s in submissions))
            return write(connection, submissions)

        monkeypatch.setattr(autopipe._Connection, "write", counted)


def _admit(scripts, keys, reserve):
    return asyncio.ensure_future(
        limits.admit(scripts, keys, UNLIMITED_BUT_BUDGET, tokens=10, reserve_nano=reserve)
    )


def test_admissions_that_arrive_together_share_one_write_and_each_is_still_exact(monkeypatch):
    keys = _keys()
    reserve = limits.to_nano(Decimal("0.03"))
    writes = _CountingWrites(monkeypatch)

    async def scenario():
        async with _seeded(keys) as (client, scripts):
            await scripts.pipe.submit([("PING",)])  # connected, and counted apart
            verdicts = await asyncio.gather(*(_admit(scripts, keys, reserve) for _ in range(50)))
            return verdicts, int(await client.get(keys[2]))

    verdicts, spent = asyncio.run(scenario())
    assert writes.sizes == [1, 50]  # the PING, then the 50 of one turn in one write
    statuses = [v.status for v in verdicts]
    assert statuses.count(limits.OK) == 33
    assert statuses.count(limits.BUDGET_ORG) == 17
    assert spent == limits.to_nano(Decimal("0.99"))
    # Each admitted request saw its own reservation land: 33 distinct spends.
    assert len({v.org_spend_nano for v in verdicts if v.status == limits.OK}) == 33


def test_admissions_redis_answers_noscript_are_sent_again_once_the_script_is_loaded():
    keys = _keys()

    async def scenario():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        scripts = limits.Scripts(client)
        await client.script_flush()  # as after a Redis restart
        verdicts = await asyncio.gather(
            *(limits.admit(scripts, keys, LIMITS, tokens=10, reserve_nano=0) for _ in range(3))
        )
        await client.delete(*keys)
        await client.aclose()
        return verdicts

    verdicts = asyncio.run(scenario())
    assert [v.status for v in verdicts] == [limits.OK] * 3
    assert sorted(v.requests_remaining for v in verdicts) == [47, 48, 49]


def test_a_caller_that_leaves_while_its_admission_is_in_flight_has_its_reservation_released():
    keys = _keys()
    reserve = limits.to_nano(Decimal("0.03"))

    async def scenario():
        async with _seeded(keys) as (client, scripts):
            await scripts.pipe.submit([("PING",)])  # connected
            first, leaving, staying = (_admit(scripts, keys, reserve) for _ in range(3))
            connection = scripts.pipe._connection
            while len(connection.waiting) < 3:  # all three written, none answered yet
                await asyncio.sleep(0)
            leaving.cancel()
            await asyncio.gather(first, staying)
            while scripts._releasing:  # the release runs once its reply is read
                await asyncio.gather(*scripts._releasing)
            spent = int(await client.get(keys[2]))
            return leaving.cancelled(), spent, await client.hgetall(keys[0])

    cancelled, spent, window = asyncio.run(scenario())
    assert cancelled
    assert spent == 2 * reserve  # the two that stayed; the one that left gave its back
    assert window[b"t"] == b"20"  # its tokens too
    assert window[b"r"] == b"3"  # its request still counts in the minute


def test_a_caller_that_leaves_before_its_admission_is_written_sends_nothing():
    keys = _keys()
    reserve = limits.to_nano(Decimal("0.03"))

    async def scenario():
        async with _seeded(keys) as (client, scripts):
            await scripts.pipe.submit([("PING",)])  # connected
            leaving, staying = _admit(scripts, keys, reserve), _admit(scripts, keys, reserve)
            await asyncio.sleep(0)  # both submitted; the turn's write not made yet
            leaving.cancel()
            await staying
            return int(await client.get(keys[2])), await client.hgetall(keys[0])

    spent, window = asyncio.run(scenario())
    assert spent == reserve
    assert window[b"r"] == b"1"  # the one that left never reached Redis


def test_an_event_loop_that_ended_mid_admission_leaves_nothing_that_blocks_the_next_one():
    keys = _keys()
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    scripts = limits.Scripts(client)

    async def ended_mid_admission():
        await scripts.pipe.submit([("PING",)])
        scripts.pipe.submit([("BLPOP", keys[0] + ":never", 0)])  # never answered

    async def next_loop():
        try:
            return await asyncio.wait_for(
                limits.admit(scripts, keys, LIMITS, tokens=10, reserve_nano=0), timeout=30
            )
        finally:
            await client.delete(*keys)
            await client.aclose()

    asyncio.run(ended_mid_admission())
    verdict = asyncio.run(next_loop())
    assert verdict.status == limits.OK
    assert verdict.requests_remaining == 49


def test_a_tier_s_new_platform_fee_reaches_every_gateway_s_cached_keys_at_once(
    db, alice, bob, monkeypatch, django_capture_on_commit_callbacks
):
    """A fee edited (or a tier changed) republishes the keys it prices, so no gateway
    keeps reserving at the old fee."""
    from accounts import keycache
    from billing.models import SlaTier
    from billing.subscriptions import tier_change
    from tests.tiers import ensure_default_tiers

    ensure_default_tiers()
    published: list[str] = []
    monkeypatch.setattr(keycache, "publish_change", published.append)
    acme = services.organization_create(name="Acme", owner=alice)
    initech = services.organization_create(name="Initech", owner=bob)
    alices = services.api_key_create(org=acme, name="k").api_key
    bobs = services.api_key_create(org=initech, name="k").api_key
    pro = SlaTier.objects.get(slug="pro")
    with django_capture_on_commit_callbacks(execute=True):
        tier_change(org=acme, tier=pro)
    assert published == [alices.lookup]

    published.clear()
    pro.private_cluster_fee_per_request_usd = Decimal("0.0002")
    with django_capture_on_commit_callbacks(execute=True):
        pro.save()
    assert published == [alices.lookup]  # bob's org is not on Pro
    assert limits.load(key_id=alices.pk, org_id=acme.pk).platform_fee.per_request == Decimal(
        "0.0002"
    )
    assert bobs.lookup not in published


def test_a_served_request_s_record_is_appended_exactly_when_its_admission_admits_it():
    """`ADMIT_RECORD`, many clients at once: what fits the budget is admitted with its
    record, to the nano-dollar; what does not is refused and leaves no record."""
    keys = _keys()
    stream = f"test:admit-record:{uuid.uuid4().hex}"
    lim = limits.Limits("test", None, None, None, None, Decimal("1.00"), None, Decimal(0))
    cost = limits.to_nano(Decimal("0.03"))

    async def scenario():
        pool = [aioredis.Redis.from_url(settings.REDIS_URL) for _ in range(4)]
        client = pool[0]
        await limits.seed(client, keys, org_nano=0, key_nano=0)
        await client.script_flush()  # as after a Redis restart: loaded again, sent again
        scripts = [limits.Scripts(c) for c in pool]
        args = limits.admit_args(lim, tokens=10, reserve_nano=cost)
        verdicts = await asyncio.gather(
            *(
                scripts[i % 4].admit_record(keys, args, stream, b"record-%d" % i).verdict()
                for i in range(60)
            )
        )
        records = await client.xrange(stream)
        spent = int(await client.get(keys[2]))
        window = await client.hgetall(keys[0])
        await client.delete(stream, *keys)
        for c in pool:
            await c.aclose()
        return verdicts, records, spent, window

    verdicts, records, spent, window = asyncio.run(scenario())
    admitted = [i for i, v in enumerate(verdicts) if v.status == limits.OK]
    assert len(admitted) == 33  # 33 × 0.03 = 0.99 ≤ 1.00 < 34 × 0.03
    assert {v.status for v in verdicts} == {limits.OK, limits.BUDGET_ORG}
    assert sorted(r[b"r"] for _, r in records) == sorted(b"record-%d" % i for i in admitted)
    assert spent == 33 * cost  # charged what it cost: nothing reserved, nothing to settle
    assert window[b"r"] == b"33"
    assert window[b"t"] == b"330"


def test_a_served_request_whose_budget_counter_is_missing_is_asked_to_seed_and_not_recorded():
    keys = _keys()
    stream = f"test:admit-record:{uuid.uuid4().hex}"
    lim = limits.Limits("test", None, None, None, None, Decimal("1.00"), None, Decimal(0))

    async def scenario():
        client = aioredis.Redis.from_url(settings.REDIS_URL)
        args = limits.admit_args(lim, tokens=10, reserve_nano=5)
        verdict = await limits.Scripts(client).admit_record(keys, args, stream, b"r").verdict()
        length = await client.xlen(stream)
        await client.aclose()
        return verdict, length

    verdict, length = asyncio.run(scenario())
    assert verdict.status == limits.SEED_ORG
    assert length == 0
