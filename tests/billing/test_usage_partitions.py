"""The usage table is partitioned by month on PostgreSQL; exactly-once does not depend
on it (request ids are unique in `UsageRequestId`, on both databases)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command
from django.db import connection

from billing import partitions
from billing.models import UsageDay, UsageEvent, UsageRequestId
from billing.services import usage_events_drain, usage_events_record
from billing.tasks import ensure_usage_partitions
from tests.billing.test_usage_metering import publish, record, stream  # noqa: F401

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="partitioning is PostgreSQL's; SQLite keeps one plain table (set DATABASE_URL)",
)


def _partition_of(request_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tableoid::regclass::text FROM billing_usageevent WHERE request_id = %s",
            [request_id],
        )
        return str(cursor.fetchone()[0])


def _at(year: int, month: int, day: int = 15) -> float:
    return datetime(year, month, day, 12, tzinfo=UTC).timestamp()


@postgres_only
def test_the_usage_table_is_partitioned_by_range_of_created_at_with_a_default_partition(db):
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.partstrat, a.attname FROM pg_partitioned_table p JOIN pg_attribute a"
            " ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]"
            " WHERE p.partrelid = 'billing_usageevent'::regclass"
        )
        assert cursor.fetchall() == [("r", "created_at")]
        names = partitions.partitions(cursor)
        cursor.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'billing_usageevent'::regclass"
            " AND i.indisprimary ORDER BY a.attname"
        )
        assert [name for (name,) in cursor.fetchall()] == ["created_at", "id"]
    this_month = partitions.month_of(datetime.now(UTC))
    assert {partitions.DEFAULT, partitions.partition_name(this_month)} <= names
    for n in range(1, partitions.MONTHS_AHEAD + 1):
        assert partitions.partition_name(partitions.add_months(this_month, n)) in names


@postgres_only
def test_an_event_lands_in_the_partition_of_its_month(acme):
    now = datetime.now(UTC)
    usage_events_record([record(acme, "req-now", created_at=now.timestamp())])

    assert _partition_of("req-now") == partitions.partition_name(partitions.month_of(now))
    assert UsageEvent.objects.get(request_id="req-now").org == acme


def test_a_record_drained_twice_is_stored_and_rolled_up_once(acme, stream):  # noqa: F811
    r = record(acme, "req-twice")
    publish(r, r)  # two copies in one batch
    assert usage_events_drain(client=stream) == 2
    publish(r)  # and again, in a later drain
    usage_events_drain(client=stream)

    assert UsageEvent.objects.filter(request_id="req-twice").count() == 1
    assert UsageRequestId.objects.filter(request_id="req-twice").count() == 1
    assert UsageDay.objects.get(org=acme).requests == 1


def test_ids_drained_are_kept_with_their_request_time(acme):
    usage_events_record([record(acme, "req-a", created_at=_at(2026, 3))])

    stored = UsageRequestId.objects.get(request_id="req-a")
    assert stored.created_at == datetime(2026, 3, 15, 12, tzinfo=UTC)


@postgres_only
def test_the_beat_task_creates_the_coming_months_partitions_once(db):
    later = datetime(2031, 5, 20, tzinfo=UTC)

    first = partitions.ensure(now=later)
    again = partitions.ensure(now=later)

    months = ["y2031m04", "y2031m05", "y2031m06", "y2031m07", "y2031m08"]
    assert first.created == [f"billing_usageevent_{m}" for m in months]
    assert again.created == []
    with connection.cursor() as cursor:
        assert {f"billing_usageevent_{m}" for m in months} <= partitions.partitions(cursor)
    assert ensure_usage_partitions() == 0  # today's months are in place: nothing in default


@postgres_only
def test_a_row_no_month_covers_goes_to_the_default_partition_and_is_reported(acme, caplog):
    usage_events_record([record(acme, "req-2019", created_at=_at(2019, 1))])
    assert _partition_of("req-2019") == partitions.DEFAULT

    with caplog.at_level(logging.WARNING, logger="billing.partitions"):
        assert ensure_usage_partitions() == 1
    assert "1 usage rows are in the default partition" in caplog.text

    call_command("usage_partitions", "--month", "2019-01")  # an operator creates its month
    assert _partition_of("req-2019") == "billing_usageevent_y2019m01"
    assert partitions.ensure().in_default == 0
    usage_events_record([record(acme, "req-2019", created_at=_at(2019, 1))])  # a replay
    assert UsageEvent.objects.filter(request_id="req-2019").count() == 1


@postgres_only
def test_back_to_a_plain_table_and_partitioned_again_every_row_and_index_is_kept(acme):
    usage_events_record(
        [record(acme, f"req-{m}", created_at=_at(2026, m)) for m in (1, 6, 11)]
        + [record(acme, "req-2019", created_at=_at(2019, 1))]
    )
    before = list(UsageEvent.objects.order_by("id").values_list("id", "request_id", "created_at"))
    indexes = _index_names()

    with connection.cursor() as cursor:
        partitions.convert(cursor, partitioned=False)
        assert not partitions.is_partitioned(cursor)
        assert _index_names() == indexes
        partitions.convert(cursor, partitioned=True, now=datetime(2026, 11, 29, tzinfo=UTC))
        assert partitions.is_partitioned(cursor)
        names = partitions.partitions(cursor)

    after = list(UsageEvent.objects.order_by("id").values_list("id", "request_id", "created_at"))
    assert after == before
    assert _index_names() == indexes
    # From the oldest row's month to three months ahead of `now`, and the default.
    assert {"billing_usageevent_y2019m01", "billing_usageevent_y2027m02"} <= names
    assert len(names) == 12 * 8 + 2 + 1
    newer = usage_events_record([record(acme, "req-next")])
    assert newer == 1
    assert UsageEvent.objects.get(request_id="req-next").id > max(i for i, _, _ in before)


def _index_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'billing_usageevent'")
        return {name for (name,) in cursor.fetchall()}


@pytest.mark.skipif(connection.vendor == "postgresql", reason="SQLite's behaviour")
def test_on_sqlite_the_usage_table_is_one_plain_table_and_the_task_does_nothing(acme):
    usage_events_record([record(acme, "req-1", created_at=_at(2019, 1))])

    assert partitions.ensure(now=datetime(2031, 1, 1, tzinfo=UTC)) == partitions.Report()
    assert UsageEvent.objects.filter(request_id="req-1").exists()
    assert date(2019, 1, 15) == UsageEvent.objects.get().created_at.date()
