"""The daily usage rollup the dashboard's charts read: exact, idempotent, and never stale."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from accounts import services as accounts_services
from accounts.models import ApiKey
from billing import metering, rollup, services
from billing.models import UsageDay, UsageEvent, UsageRollupDay
from billing.tasks import rollup_usage
from dashboards import usage
from tests.conftest import login
from tests.dashboards.test_org_pages import event


def _yesterday_at(hour: int) -> datetime:
    d = rollup.today() - timedelta(days=1)
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def _stored(org) -> list[tuple]:
    return sorted(
        UsageDay.objects.filter(org=org).values_list(
            "day", "model", "region", "requests", "charge_usd", "errors", "sla_met", "ttft_hist"
        )
    )


def test_a_built_day_sums_exactly_what_the_events_hold_and_building_twice_changes_nothing(
    acme, globex
):
    for i in range(5):
        event(acme, created_at=_yesterday_at(i), charge_usd=Decimal("0.000000000123"))
    event(acme, created_at=_yesterday_at(6), status="error", sla_met=None, ttft_ms=None)
    event(globex, created_at=_yesterday_at(7))
    day = rollup.today() - timedelta(days=1)

    rollup.build_day(day)
    first = _stored(acme)
    rollup.build_day(day)

    assert _stored(acme) == first
    [row] = UsageDay.objects.filter(org=acme)
    assert row.requests == 6
    assert row.errors == 1
    assert row.sla_known == row.sla_met == 5
    assert row.charge_usd == Decimal("0.0002") + 5 * Decimal("0.000000000123")
    assert sum(row.ttft_hist.values()) == 5
    assert UsageDay.objects.filter(org=globex).get().requests == 1


def test_a_day_that_has_not_started_is_never_built(acme):
    with pytest.raises(ValueError, match="not started yet"):
        rollup.build_day(rollup.today() + timedelta(days=1))


def test_the_pages_read_the_same_numbers_from_the_rollup_as_from_the_events(alice, acme):
    for i in range(4):
        event(acme, created_at=_yesterday_at(i), charge_usd=Decimal("1.25"), sla_met=i != 0)
    event(acme, charge_usd=Decimal("2.00"))  # today: always read raw
    period = usage.Period.last_days(7)
    before = usage.totals(usage.rows(acme, period))

    rollup_usage()
    assert UsageRollupDay.objects.filter(day=rollup.today() - timedelta(days=1)).exists()
    after = usage.totals(usage.rows(acme, period))

    assert (after.requests, after.spend, after.sla_met, after.sla_known) == (
        before.requests,
        before.spend,
        before.sla_met,
        before.sla_known,
    )
    assert after.spend == Decimal("7.00")
    page = login(alice).get(f"/orgs/{acme.slug}/usage/?period=7").content.decode()
    assert "$7.00" in page


def _record(org, request_id: str, created_at: datetime, **changes) -> metering.UsageRecord:
    fields: dict = {
        "request_id": request_id,
        "org_id": org.pk,
        "api_key_id": None,
        "created_at": created_at.timestamp(),
        "endpoint": "chat.completions",
        "model": "llama-3.3-70b-instruct",
        "served_model": "llama-3.3-70b-instruct",
        "deployment": "westeurope--h100--llama-3.3-70b-instruct",
        "region": "westeurope",
        "cluster": "weu-1",
        "chip": "h100",
        "stream": False,
        "status": "ok",
        "input_tokens": 10,
        "output_tokens": 5,
        "usage_source": "upstream",
        "cost_usd": "0.0001",
        "ttft_ms": 90.0,
        "sla_met": True,
    }
    return metering.UsageRecord(**{**fields, **changes})


def test_a_late_record_is_added_to_its_built_day_at_once(acme):
    event(acme, created_at=_yesterday_at(1))
    day = rollup.today() - timedelta(days=1)
    rollup.build_day(day)

    services.usage_events_record([_record(acme, "req_late", _yesterday_at(2))])

    assert not UsageRollupDay.objects.get(day=day).dirty
    assert UsageDay.objects.get(org=acme, day=day).requests == 2
    period = usage.Period.last_days(2)
    assert usage.totals(usage.rows(acme, period)).requests == 2
    assert rollup.days_to_build() == [rollup.today()]  # only today, never built yet


def _mixed_records(acme, globex, key_id: int) -> list[metering.UsageRecord]:
    rng = random.Random(14)
    now = timezone.now()
    out = []
    for i in range(60):
        failed = i % 7 == 0
        out.append(
            _record(
                (acme, globex)[i % 2],
                f"req_mix_{i}",
                now - timedelta(hours=rng.choice([0, 0, 0, 30, 60])),
                api_key_id=key_id if i % 2 == 0 and i % 3 == 0 else None,
                model=rng.choice(["llama-3.3-70b-instruct", "mistral-large"]),
                region=rng.choice(["westeurope", "japaneast"]),
                status="error" if failed else rng.choice(["ok", "ok", "cancelled"]),
                input_tokens=rng.randint(1, 5000),
                output_tokens=rng.randint(0, 900),
                ttft_ms=None if failed or i % 11 == 0 else rng.lognormvariate(5, 0.8),
                sla_met=None if failed or i % 13 == 0 else rng.random() < 0.8,
            )
        )
    return out


def _tuples(rows: list[rollup.Row]) -> list[tuple]:
    return sorted(
        (r.day, r.model, r.region, r.api_key_id or 0, r.requests, r.input_tokens,
         r.output_tokens, r.charge_usd, r.errors, r.sla_known, r.sla_met, r.ttft_hist)
        for r in rows
    )  # fmt: skip


def _rollup_of_the_events(org) -> list[tuple]:
    return _tuples(rollup.aggregate(UsageEvent.objects.filter(org=org)).get(org.pk, []))


def _stored_rollup(org) -> list[tuple]:
    return _tuples(rollup.stored_rows(UsageDay.objects.filter(org=org)))


def test_after_a_drain_the_rollup_equals_the_sums_of_the_stored_events(acme, globex):
    key = (
        ApiKey.objects.filter(org=acme).first()
        or accounts_services.api_key_create(org=acme, name="ci").api_key
    )
    records = _mixed_records(acme, globex, key.pk)

    services.usage_events_record(records[:25])
    services.usage_events_record(records[25:])

    for org in (acme, globex):
        assert _stored_rollup(org) == _rollup_of_the_events(org)
        assert _stored_rollup(org)  # not vacuous


def test_a_replayed_batch_does_not_change_the_rollup(acme, globex):
    records = _mixed_records(acme, globex, key_id=0)
    records = [r for r in records if r.api_key_id is None]
    services.usage_events_record(records[:30])
    before = _stored_rollup(acme), _stored_rollup(globex)

    services.usage_events_record(records[:30])  # the same batch again
    services.usage_events_record(records[10:20] + records[10:20])  # and inside one batch

    assert (_stored_rollup(acme), _stored_rollup(globex)) == before
    assert _stored_rollup(acme) == _rollup_of_the_events(acme)
    services.usage_events_record(records[30:])
    assert _stored_rollup(acme) == _rollup_of_the_events(acme)


def test_a_new_record_twice_in_one_batch_is_stored_and_rolled_up_once(acme, globex):
    records = [r for r in _mixed_records(acme, globex, key_id=0) if r.api_key_id is None]
    services.usage_events_record(records[:10] + records[:10])  # never stored before

    assert UsageEvent.objects.count() == 10
    assert _stored_rollup(acme) == _rollup_of_the_events(acme)
    assert _stored_rollup(globex) == _rollup_of_the_events(globex)


def test_a_rebuild_after_drains_keeps_the_drained_sums(acme, globex):
    records = [r for r in _mixed_records(acme, globex, key_id=0) if r.api_key_id is None]
    services.usage_events_record(records[:30])
    rollup_usage()  # builds the days, today included
    assert rollup.built_days([rollup.today()]) == {rollup.today()}
    services.usage_events_record(records[30:])

    assert _stored_rollup(acme) == _rollup_of_the_events(acme)
    period = usage.Period.last_days(5)
    assert (
        usage.totals(usage.rows(acme, period)).requests
        == UsageEvent.objects.filter(org=acme).count()
    )


def test_histogram_percentiles_are_within_two_and_a_half_percent_of_the_exact_ones(acme):
    rng = random.Random(7)
    values = [rng.lognormvariate(5, 0.8) for _ in range(400)]
    now = timezone.now()
    UsageEvent.objects.bulk_create(
        [
            UsageEvent(
                request_id=f"req_h{i}",
                org=acme,
                created_at=now,
                endpoint="chat.completions",
                model="m",
                served_model="m",
                deployment="d",
                region="westeurope",
                cluster="c",
                chip="h100",
                input_tokens=1,
                output_tokens=1,
                usage_source="upstream",
                cost_usd=Decimal(0),
                ttft_ms=v,
                sla_met=True,
            )
            for i, v in enumerate(values)
        ]
    )
    t = usage.totals(usage.rows(acme, usage.Period.last_days(1)))
    ordered = sorted(values)
    for p, got in ((0.5, t.p50), (0.99, t.p99)):
        exact = ordered[int(p * (len(ordered) - 1))]  # the value whose bucket is reported
        assert got is not None
        assert abs(got - exact) / exact < 0.025  # 5%-wide buckets, read at their middle


def test_the_command_rebuilds_days_written_outside_the_drain(acme):
    from django.core.management import call_command

    rollup_usage()  # yesterday built, empty
    event(acme, created_at=_yesterday_at(3))  # a direct write: no drain, no dirty mark
    day = rollup.today() - timedelta(days=1)
    assert not UsageDay.objects.filter(org=acme, day=day).exists()

    call_command("rollup_usage", "--rebuild", "2")

    assert UsageDay.objects.get(org=acme, day=day).requests == 1
