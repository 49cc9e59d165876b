"""The daily usage rollup: UsageEvent summed per org, day, model, region and key.

`aggregate(queryset)` is the one definition of a rollup row; `build_day` stores it for
a whole past day (delete + insert in one transaction, so running it twice changes
nothing), and the dashboard computes the same rows on the fly for the days not built
yet (today, a dirty day). Sums are exact; time to first token is kept as a histogram
of 5%-wide buckets (`BUCKET`), whose percentiles are within 2.5% of the exact ones.

Kept up to date by `billing.tasks.rollup_usage` (Celery beat): it builds every
finished day since the last one built, and rebuilds the days the drain marked dirty
(a record that arrived after its day was built: `mark_late`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.db.models import Count, F, FloatField, Q, QuerySet, Sum, Value
from django.db.models.functions import Floor, Greatest, Ln, TruncDate
from django.utils import timezone

from billing.models import UsageDay, UsageEvent, UsageRollupDay

#: A TTFT bucket is [BUCKET**k, BUCKET**(k+1)) milliseconds.
BUCKET = 1.05
#: How far back the task builds on its first run.
BACKFILL_DAYS = 120


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


@transaction.atomic
def build_day(day: date) -> int:
    """(Re)build one finished day for every org; returns the rows stored."""
    if day >= today():
        raise ValueError(f"{day} is not over yet")
    start, end = _bounds(day)
    # Lock the marker first: a drain marking this day dirty waits, then sees it built.
    marker, _ = UsageRollupDay.objects.select_for_update().get_or_create(day=day)
    per_org = aggregate(UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end))
    UsageDay.objects.filter(day=day).delete()
    stored = [
        UsageDay(
            org_id=org_id,
            day=r.day,
            model=r.model,
            region=r.region,
            api_key_id=r.api_key_id,
            requests=r.requests,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            charge_usd=r.charge_usd,
            errors=r.errors,
            sla_known=r.sla_known,
            sla_met=r.sla_met,
            ttft_hist={str(k): v for k, v in r.ttft_hist.items()},
        )
        for org_id, rows in per_org.items()
        for r in rows
    ]
    UsageDay.objects.bulk_create(stored, batch_size=1000)
    marker.built_at, marker.dirty = timezone.now(), False
    marker.save(update_fields=["built_at", "dirty"])
    return len(stored)


def mark_late(days: Iterable[date]) -> int:
    """The drain stored records of these days: a built one is dirty until rebuilt."""
    past = {d for d in days if d < today()}
    if not past:
        return 0  # the usual case: today's records, no query
    return UsageRollupDay.objects.filter(day__in=past, dirty=False).update(dirty=True)


def days_to_build(now: date | None = None) -> list[date]:
    """Finished days never built (since the last built one, or BACKFILL_DAYS) and dirty ones."""
    now = now or today()
    last = UsageRollupDay.objects.order_by("-day").values_list("day", flat=True).first()
    first = (last + timedelta(days=1)) if last else now - timedelta(days=BACKFILL_DAYS)
    new = [first + timedelta(days=i) for i in range((now - first).days)]
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
            day=u.day,
            model=u.model,
            region=u.region,
            api_key_id=u.api_key_id,
            requests=u.requests,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            charge_usd=u.charge_usd,
            errors=u.errors,
            sla_known=u.sla_known,
            sla_met=u.sla_met,
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
