"""The daily usage rollup: UsageEvent summed per org, day, model, region and key.

`aggregate(queryset)` is the one definition of a rollup row; `build_day` stores it for
a whole past day (delete + insert in one transaction, so running it twice changes
nothing), and the dashboard computes the same rows on the fly for the days not built
yet (today, a dirty day). Sums are exact; time to first token is kept as a histogram
of 5%-wide buckets (`BUCKET`), whose percentiles are within 2.5% of the exact ones.

Kept up to date by the drain: the transaction that stores a batch of usage records
also adds the records it actually inserted to their days' rows (`add`: INSERT … ON
CONFLICT DO UPDATE adding the batch's sums), so a replayed record, skipped by the
insert, adds nothing. A day, today included, is readable from `UsageDay` once
`build_day` has built it; from then on every drained record keeps it exact, late ones
too. `billing.tasks.rollup_usage` (Celery beat) remains the reconciler: it builds the
days not built yet (today once, then every day as it starts) and rebuilds dirty ones
(an operator's mark, after a direct write to the events).

On PostgreSQL a build takes an exclusive advisory lock on its day and the drain a
shared one on each day it adds to, so a build never deletes an addition its
aggregate did not see.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.db.models import Count, F, FloatField, Q, QuerySet, Sum, Value
from django.db.models.functions import Floor, Greatest, Ln, TruncDate
from django.utils import timezone

from billing.models import UsageDay, UsageEvent, UsageRollupDay

#: A TTFT bucket is [BUCKET**k, BUCKET**(k+1)) milliseconds.
BUCKET = 1.05
#: How far back the task builds on its first run.
BACKFILL_DAYS = 120
#: The first key of the advisory locks that order builds and drains on a day.
_LOCK_SPACE = 1_4_0_8


@dataclass
class Row:
    day: date
    model: str
    region: str
    api_key_id: int | None
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    charge_usd: Decimal = Decimal(0)
    errors: int = 0
    sla_known: int = 0
    sla_met: int = 0
    ttft_hist: dict[int, int] = field(default_factory=dict)

    @property
    def group(self) -> tuple[date, str, str, int | None]:
        return self.day, self.model, self.region, self.api_key_id


#: The columns a Row and a UsageDay share as they are (the histogram's keys change type).
_COLUMNS = tuple(f.name for f in fields(Row) if f.name != "ttft_hist")
_GROUP = ("org_id", "day", "model", "region", "api_key_id")
_OK = Q(status=UsageEvent.Status.OK)


def aggregate(qs: QuerySet[UsageEvent]) -> dict[int, list[Row]]:
    """The rollup rows of `qs`, per org id: two grouped queries."""
    qs = qs.annotate(day=TruncDate("created_at", tzinfo=UTC))
    rows: dict[tuple[Any, ...], Row] = {}
    sums: Any = qs.values(*_GROUP).annotate(
        n=Count("id"),
        inp=Sum("input_tokens"),
        out=Sum("output_tokens"),
        charge=Sum("charge_usd"),
        err=Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
        known=Count("id", filter=_OK & Q(sla_met__isnull=False)),
        met=Count("id", filter=_OK & Q(sla_met=True)),
    )
    for r in sums:
        rows[tuple(r[k] for k in _GROUP)] = Row(
            day=r["day"],
            model=r["model"],
            region=r["region"],
            api_key_id=r["api_key_id"],
            requests=r["n"],
            input_tokens=r["inp"] or 0,
            output_tokens=r["out"] or 0,
            charge_usd=r["charge"] or Decimal(0),
            errors=r["err"],
            sla_known=r["known"],
            sla_met=r["met"],
        )
    bucket = Floor(
        Ln(Greatest(F("ttft_ms"), Value(1.0), output_field=FloatField())) / Value(math.log(BUCKET))
    )
    hist: Any = (
        qs.filter(_OK, ttft_ms__isnull=False)
        .annotate(bucket=bucket)
        .values(*_GROUP, "bucket")
        .annotate(n=Count("id"))
    )
    for r in hist:
        row = rows.get(tuple(r[k] for k in _GROUP))
        if row is not None:
            row.ttft_hist[int(r["bucket"])] = r["n"]
    out: dict[int, list[Row]] = defaultdict(list)
    for key, row in rows.items():
        out[key[0]].append(row)
    return out


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def today() -> date:
    return timezone.now().astimezone(UTC).date()


def _usage_day(org_id: int, r: Row) -> UsageDay:
    return UsageDay(
        org_id=org_id,
        **{name: getattr(r, name) for name in _COLUMNS},
        ttft_hist={str(k): v for k, v in r.ttft_hist.items()},
    )


def _lock_days(days: Iterable[date], *, shared: bool) -> None:
    """PostgreSQL: the drain (shared) and a build (exclusive) of a day exclude each
    other until their transactions end; in day order, so two drains never deadlock."""
    if connection.vendor != "postgresql":
        return  # SQLite: one writer at a time already
    function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    with connection.cursor() as cursor:
        for day in sorted(set(days)):
            cursor.execute(f"SELECT {function}(%s, %s)", [_LOCK_SPACE, day.toordinal()])


@transaction.atomic
def build_day(day: date) -> int:
    """(Re)build one day for every org (today included: the drain keeps it current from
    then on); returns the rows stored."""
    if day > today():
        raise ValueError(f"{day} has not started yet")
    start, end = _bounds(day)
    # A drain adding to this day waits, or has committed before the aggregate reads.
    _lock_days([day], shared=False)
    marker, _ = UsageRollupDay.objects.select_for_update().get_or_create(day=day)
    per_org = aggregate(UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end))
    UsageDay.objects.filter(day=day).delete()
    stored = [_usage_day(org_id, r) for org_id, rows in per_org.items() for r in rows]
    UsageDay.objects.bulk_create(stored, batch_size=1000)
    marker.built_at, marker.dirty = timezone.now(), False
    marker.save(update_fields=["built_at", "dirty"])
    return len(stored)


def bucket(ttft_ms: float) -> int:
    """The TTFT bucket of one request, as `aggregate` computes it in SQL."""
    return math.floor(math.log(max(ttft_ms, 1.0)) / math.log(BUCKET))


def of_events(events: Iterable[UsageEvent]) -> dict[int, list[Row]]:
    """The rollup rows of these events, per org id, summed in Python (`aggregate`'s
    definition, for a batch the drain has just inserted)."""
    rows: dict[tuple[Any, ...], Row] = {}
    for e in events:
        day = e.created_at.astimezone(UTC).date()
        key = (e.org_id, day, e.model, e.region, e.api_key_id)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(day=day, model=e.model, region=e.region, api_key_id=e.api_key_id)
        row.requests += 1
        row.input_tokens += e.input_tokens
        row.output_tokens += e.output_tokens
        row.charge_usd += Decimal(e.charge_usd)
        if e.status == UsageEvent.Status.ERROR:
            row.errors += 1
        if e.status == UsageEvent.Status.OK:
            if e.sla_met is not None:
                row.sla_known += 1
                row.sla_met += e.sla_met
            if e.ttft_ms is not None:
                k = bucket(e.ttft_ms)
                row.ttft_hist[k] = row.ttft_hist.get(k, 0) + 1
    out: dict[int, list[Row]] = defaultdict(list)
    for key, row in sorted(rows.items(), key=lambda kv: _order(kv[0])):
        out[key[0]].append(row)
    return out


def _order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    org_id, day, model, region, api_key_id = key
    return org_id, day, model, region, api_key_id or 0


_SUMS = ("requests", "input_tokens", "output_tokens", "charge_usd", "errors", "sla_known",
         "sla_met")  # fmt: skip
# Built from the constant column names above; the values are parameters.
_UPSERT = f"""
INSERT INTO billing_usageday (org_id, day, model, region, api_key_id, {", ".join(_SUMS)},
                              ttft_hist)
VALUES {{values}}
ON CONFLICT (org_id, day, model, region, (COALESCE(api_key_id, 0))) DO UPDATE SET
    {", ".join(f"{c} = billing_usageday.{c} + EXCLUDED.{c}" for c in _SUMS)},
    ttft_hist = (
        SELECT COALESCE(jsonb_object_agg(k, n), '{{{{}}}}'::jsonb) FROM (
            SELECT k, SUM(v::bigint) AS n FROM (
                SELECT * FROM jsonb_each_text(billing_usageday.ttft_hist)
                UNION ALL SELECT * FROM jsonb_each_text(EXCLUDED.ttft_hist)
            ) AS both_(k, v) GROUP BY k
        ) AS summed
    )
"""  # noqa: S608


def add(per_org: Mapping[int, list[Row]]) -> None:
    """Add these sums to the stored rows of their days, in the caller's transaction
    (the drain's: only the records it has just inserted). Exact: integers and decimals
    are added, histograms merged bucket by bucket."""
    rows = [(org_id, r) for org_id, org_rows in per_org.items() for r in org_rows]
    if not rows:
        return
    _lock_days((r.day for _, r in rows), shared=True)
    if connection.vendor != "postgresql":
        _add_one_by_one(rows)
        return
    values: list[str] = []
    params: list[Any] = []
    for org_id, r in sorted(rows, key=lambda x: _order((x[0], *x[1].group))):
        values.append("(" + ", ".join(["%s"] * 13) + "::jsonb)")
        params += [org_id, r.day, r.model, r.region, r.api_key_id]
        params += [getattr(r, c) for c in _SUMS]
        params.append(json.dumps({str(k): v for k, v in r.ttft_hist.items()}))
    with connection.cursor() as cursor:
        cursor.execute(_UPSERT.format(values=", ".join(values)), params)


def _add_one_by_one(rows: list[tuple[int, Row]]) -> None:
    """SQLite (`make run`): a read, then an update or insert per row; the drain's
    transaction holds SQLite's only write lock, so nobody adds in between."""
    for org_id, r in rows:
        stored = UsageDay.objects.filter(
            org_id=org_id, day=r.day, model=r.model, region=r.region, api_key_id=r.api_key_id
        ).first()
        if stored is None:
            _usage_day(org_id, r).save()
            continue
        for c in _SUMS:
            setattr(stored, c, getattr(stored, c) + getattr(r, c))
        for k, v in r.ttft_hist.items():
            stored.ttft_hist[str(k)] = stored.ttft_hist.get(str(k), 0) + v
        stored.save()


def days_to_build(now: date | None = None) -> list[date]:
    """Days never built up to today (since the last built one, or BACKFILL_DAYS) and
    dirty ones."""
    now = now or today()
    last = UsageRollupDay.objects.order_by("-day").values_list("day", flat=True).first()
    first = (last + timedelta(days=1)) if last else now - timedelta(days=BACKFILL_DAYS)
    new = [first + timedelta(days=i) for i in range((now - first).days + 1)]
    dirty = list(UsageRollupDay.objects.filter(dirty=True).values_list("day", flat=True))
    return sorted(set(new) | set(dirty))


def built_days(days: Iterable[date]) -> set[date]:
    """Which of these days the readers may take from UsageDay (built, clean)."""
    return set(
        UsageRollupDay.objects.filter(day__in=list(days), dirty=False).values_list("day", flat=True)
    )


def stored_rows(qs: QuerySet[UsageDay]) -> list[Row]:
    return [
        Row(
            **{name: getattr(u, name) for name in _COLUMNS},
            ttft_hist={int(k): v for k, v in u.ttft_hist.items()},
        )
        for u in qs
    ]


def hist_percentile(hist: Mapping[int, int], p: float) -> float | None:
    """The p-quantile of a TTFT histogram: the geometric middle of its bucket."""
    total = sum(hist.values())
    if not total:
        return None
    rank = p * (total - 1)
    seen = 0
    for k in sorted(hist):
        seen += hist[k]
        if seen > rank:
            return float(BUCKET ** (k + 0.5))
    return float(BUCKET ** (max(hist) + 0.5))
