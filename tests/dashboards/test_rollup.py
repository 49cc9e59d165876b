"""The daily usage rollup the dashboard's charts read: exact, idempotent, and never stale."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

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


def test_today_is_never_built(acme):
    with pytest.raises(ValueError, match="not over yet"):
        rollup.build_day(rollup.today())


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
    assert "7.0000" in page


def test_a_late_record_makes_its_day_dirty_until_the_task_rebuilds_it(acme):
    event(acme, created_at=_yesterday_at(1))
    day = rollup.today() - timedelta(days=1)
    rollup.build_day(day)
    record = metering.UsageRecord(
        request_id="req_late",
        org_id=acme.pk,
        api_key_id=None,
        created_at=_yesterday_at(2).timestamp(),
        endpoint="chat.completions",
        model="llama-3.3-70b-instruct",
        served_model="llama-3.3-70b-instruct",
        deployment="westeurope--h100--llama-3.3-70b-instruct",
        region="westeurope",
        cluster="weu-1",
        chip="h100",
        stream=False,
        status="ok",
        input_tokens=10,
        output_tokens=5,
        usage_source="upstream",
        cost_usd="0.0001",
    )

    services.usage_events_record([record])

    assert UsageRollupDay.objects.get(day=day).dirty
    period = usage.Period.last_days(2)
    assert usage.totals(usage.rows(acme, period)).requests == 2  # raw while dirty
    assert rollup.days_to_build() == [day]
    rollup_usage()
    assert not UsageRollupDay.objects.get(day=day).dirty
    assert UsageDay.objects.get(org=acme, day=day).requests == 2
    assert usage.totals(usage.rows(acme, period)).requests == 2


def test_todays_records_cost_the_drain_no_rollup_query(acme, django_assert_num_queries):
    with django_assert_num_queries(0):
        assert rollup.mark_late([rollup.today(), rollup.today()]) == 0


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
