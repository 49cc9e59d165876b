"""What the developer dashboard reads about an organization's requests.

Every read starts from `UsageEvent.objects.for_org(org)` — the one tenancy filter
(`accounts.querysets`) — with `org` taken from the caller's membership
(`dashboards.scoping.org_view`). The series are grouped by day in the database over
the `(org, created_at)` index, a fixed number of queries per page whatever the
volume; percentiles use PostgreSQL's `percentile_cont` (on SQLite, the development
default, they are computed in Python from the same rows).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    F,
    FloatField,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from accounts.models import Organization
from billing.models import UsageEvent

PAGE_SIZE = 50


class Percentile(Aggregate):
    """`percentile_cont(p) WITHIN GROUP (ORDER BY expr)` (PostgreSQL)."""

    function = "percentile_cont"
    template = "%(function)s(%(p)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, p: float, **extra: Any) -> None:
        if not 0 <= p <= 1:
            raise ValueError("p is a fraction")
        super().__init__(expression, p=repr(float(p)), **extra)


def _percentiles_in_db() -> bool:
    return connection.vendor == "postgresql"


def percentile(values: Sequence[float], p: float) -> float | None:
    """Linear interpolation between closest ranks: what `percentile_cont` computes."""
    if not values:
        return None
    ordered = sorted(values)
    rank = p * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """Whole UTC days, `start` inclusive to `end` exclusive."""

    start: date
    end: date

    @classmethod
    def last_days(cls, days: int, *, today: date | None = None) -> Period:
        today = today or timezone.now().astimezone(UTC).date()
        return cls(today - timedelta(days=days - 1), today + timedelta(days=1))

    @classmethod
    def parse(cls, value: str | None, *, today: date | None = None) -> Period:
        """'7', '30' or '90' days; anything else: 30."""
        days = {"7": 7, "30": 30, "90": 90}.get(value or "", 30)
        return cls.last_days(days, today=today)

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        return (
            datetime.combine(self.start, datetime.min.time(), tzinfo=UTC),
            datetime.combine(self.end, datetime.min.time(), tzinfo=UTC),
        )

    @property
    def length(self) -> int:
        return (self.end - self.start).days


def month_start(now: datetime | None = None) -> datetime:
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def events(org: Organization) -> QuerySet[UsageEvent]:
    """The org's usage events: the one place the dashboard starts a usage query."""
    return UsageEvent.objects.for_org(org)


def in_period(org: Organization, period: Period) -> QuerySet[UsageEvent]:
    start, end = period.bounds
    return events(org).filter(created_at__gte=start, created_at__lt=end)


# ----------------------------------------------------------------------- daily sums

_SUMS = {
    "requests": Count("id"),
    "tokens": Sum(F("input_tokens") + F("output_tokens")),
    "spend": Sum("charge_usd"),
    "errors": Count("id", filter=Q(status=UsageEvent.Status.ERROR)),
    "sla_known": Count("id", filter=Q(sla_met__isnull=False, status=UsageEvent.Status.OK)),
    "sla_met": Count("id", filter=Q(sla_met=True, status=UsageEvent.Status.OK)),
}


@dataclass(kw_only=True)
class Totals:
    """Counts over some requests, with the rates the pages show."""

    requests: int = 0
    tokens: int = 0
    spend: Decimal = Decimal(0)
    errors: int = 0
    sla_known: int = 0
    sla_met: int = 0
    p50: float | None = None
    p99: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def attainment(self) -> float | None:
        return self.sla_met / self.sla_known if self.sla_known else None


@dataclass(kw_only=True)
class Day(Totals):
    day: date


def _ttft_percentiles(
    qs: QuerySet[UsageEvent], group: str | None
) -> dict[Any, tuple[float | None, float | None]]:
    """p50 and p99 time to first token of completed requests, per `group` value (or
    under the key None for all of `qs`)."""
    ok = qs.filter(status=UsageEvent.Status.OK, ttft_ms__isnull=False)
    if _percentiles_in_db():
        if group is None:
            row = ok.aggregate(p50=Percentile("ttft_ms", 0.5), p99=Percentile("ttft_ms", 0.99))
            return {None: (row["p50"], row["p99"])}
        rows = ok.values(group).annotate(
            p50=Percentile("ttft_ms", 0.5), p99=Percentile("ttft_ms", 0.99)
        )
        return {r[group]: (r["p50"], r["p99"]) for r in rows}
    buckets: dict[Any, list[float]] = defaultdict(list)
    if group is None:
        buckets[None] = [v for v in ok.values_list("ttft_ms", flat=True) if v is not None]
    else:
        for key, v in ok.values_list(group, "ttft_ms"):
            buckets[key].append(v)
    return {k: (percentile(v, 0.5), percentile(v, 0.99)) for k, v in buckets.items()}


def daily(org: Organization, period: Period) -> list[Day]:
    """One `Day` per day of the period (empty days included): two queries."""
    qs = in_period(org, period).annotate(day=TruncDate("created_at", tzinfo=UTC))
    by_day = {d: Day(day=d) for d in period.days}
    rows: Any = qs.values("day").annotate(**_SUMS).order_by("day")
    for row in rows:
        day = by_day.get(row["day"])
        if day is None:
            continue
        day.requests, day.errors = row["requests"], row["errors"]
        day.tokens, day.spend = row["tokens"] or 0, row["spend"] or Decimal(0)
        day.sla_known, day.sla_met = row["sla_known"], row["sla_met"]
    for d, (p50, p99) in _ttft_percentiles(qs, "day").items():
        if d in by_day:
            by_day[d].p50, by_day[d].p99 = p50, p99
    return list(by_day.values())


def totals(qs: QuerySet[UsageEvent]) -> Totals:
    row = qs.aggregate(**_SUMS)
    p50, p99 = _ttft_percentiles(qs, None).get(None, (None, None))
    return Totals(
        requests=row["requests"],
        tokens=row["tokens"] or 0,
        spend=row["spend"] or Decimal(0),
        errors=row["errors"],
        sla_known=row["sla_known"],
        sla_met=row["sla_met"],
        p50=p50,
        p99=p99,
    )


@dataclass
class Breakdown:
    """A measure per day for each value of a dimension (model, region, key)."""

    dimension: str
    names: list[str]
    requests: dict[str, list[int]]
    tokens: dict[str, list[int]]
    spend: dict[str, list[Decimal]]
    totals: dict[str, tuple[int, int, Decimal]] = field(default_factory=dict)


def by_dimension(org: Organization, period: Period, dimension: str, *, top: int = 6) -> Breakdown:
    """Daily requests, tokens and spend per model, region or key (the `top` by
    requests named, the rest summed as 'other'): one query."""
    column = {"model": "model", "region": "region", "key": "api_key_id"}[dimension]
    qs = in_period(org, period).annotate(day=TruncDate("created_at", tzinfo=UTC))
    rows = list(
        qs.values("day", column).annotate(
            requests=_SUMS["requests"], tokens=_SUMS["tokens"], spend=_SUMS["spend"]
        )
    )
    names: dict[Any, str] = {}
    if dimension == "key":
        from accounts.models import ApiKey

        ids = {r[column] for r in rows if r[column] is not None}
        names = {
            k.pk: f"{k.name} ({k.display_prefix})"
            for k in ApiKey.objects.for_org(org).filter(pk__in=ids)
        }

    def label(value: Any) -> str:
        if dimension == "key":
            return names.get(value, "deleted key" if value is None else f"key {value}")
        return str(value or "(none)")

    volume: dict[str, int] = defaultdict(int)
    for r in rows:
        volume[label(r[column])] += r["requests"]
    ranked = sorted(volume, key=lambda n: (-volume[n], n))
    shown = ranked[:top]
    if len(ranked) > top:
        shown.append("other")
    index = {d: i for i, d in enumerate(period.days)}
    n = len(index)
    out = Breakdown(
        dimension=dimension,
        names=shown,
        requests={s: [0] * n for s in shown},
        tokens={s: [0] * n for s in shown},
        spend={s: [Decimal(0)] * n for s in shown},
    )
    for r in rows:
        i = index.get(r["day"])
        if i is None:
            continue
        name = label(r[column])
        name = name if name in out.requests else "other"
        out.requests[name][i] += r["requests"]
        out.tokens[name][i] += r["tokens"] or 0
        out.spend[name][i] += r["spend"] or Decimal(0)
    for s in shown:
        out.totals[s] = (sum(out.requests[s]), sum(out.tokens[s]), sum(out.spend[s], Decimal(0)))
    return out


@dataclass(frozen=True)
class RegionVolume:
    region: str
    requests: int
    sla_known: int
    sla_met: int

    @property
    def attainment(self) -> float | None:
        return self.sla_met / self.sla_known if self.sla_known else None


def by_region(org: Organization, period: Period) -> list[RegionVolume]:
    rows = (
        in_period(org, period)
        .exclude(region="")
        .values("region")
        .annotate(
            requests=_SUMS["requests"], sla_known=_SUMS["sla_known"], sla_met=_SUMS["sla_met"]
        )
        .order_by("-requests")
    )
    return [RegionVolume(r["region"], r["requests"], r["sla_known"], r["sla_met"]) for r in rows]


# ----------------------------------------------------------------------- request log


@dataclass(frozen=True)
class LogFilters:
    since: datetime | None = None
    until: datetime | None = None
    model: str = ""
    region: str = ""
    key_id: int | None = None
    status: str = ""
    sla: str = ""  # "met", "missed" or ""

    def apply(self, qs: QuerySet[UsageEvent]) -> QuerySet[UsageEvent]:
        if self.since is not None:
            qs = qs.filter(created_at__gte=self.since)
        if self.until is not None:
            qs = qs.filter(created_at__lt=self.until)
        if self.model:
            qs = qs.filter(model=self.model)
        if self.region:
            qs = qs.filter(region=self.region)
        if self.key_id is not None:
            qs = qs.filter(api_key_id=self.key_id)
        if self.status:
            qs = qs.filter(status=self.status)
        if self.sla == "met":
            qs = qs.filter(sla_met=True)
        elif self.sla == "missed":
            qs = qs.filter(sla_met=False)
        return qs


def encode_cursor(event: UsageEvent) -> str:
    raw = f"{event.created_at.astimezone(UTC).isoformat()}|{event.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """The (created_at, id) a page continues after; a malformed cursor is a 404."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, pk = raw.partition("|")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("naive")
        return when, int(pk)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Http404("No such page.") from None


@dataclass
class LogPage:
    rows: list[UsageEvent]
    next_cursor: str | None


def request_log(
    org: Organization, filters: LogFilters, cursor: str | None = None, *, size: int = PAGE_SIZE
) -> LogPage:
    """Newest first, `size` a page; the next page starts strictly after the last row
    by (created_at, id) — keyset pagination, an index range scan however deep."""
    qs = filters.apply(events(org))
    if cursor:
        when, pk = decode_cursor(cursor)
        qs = qs.filter(Q(created_at__lt=when) | Q(created_at=when, pk__lt=pk))
    rows = list(
        qs.select_related("api_key")
        .only(
            "request_id",
            "created_at",
            "model",
            "served_model",
            "region",
            "chip",
            "status",
            "input_tokens",
            "output_tokens",
            "ttft_ms",
            "latency_ms",
            "sla_met",
            "charge_usd",
            "api_key__name",
            "api_key__lookup",
            "org_id",
        )
        .order_by("-created_at", "-pk")[: size + 1]
    )
    more = len(rows) > size
    rows = rows[:size]
    return LogPage(rows, encode_cursor(rows[-1]) if more and rows else None)


def access_event(org: Organization, request_id: str) -> UsageEvent:
    """One of the org's requests, or 404: another tenant's request does not exist."""
    event = events(org).select_related("api_key").filter(request_id=request_id).first()
    if event is None:
        raise Http404("No such request.")
    return event


def filter_choices(org: Organization, period: Period) -> dict[str, list[str]]:
    """The models and regions the org used in the period (for the filter menus)."""
    qs = in_period(org, period)
    return {
        "models": sorted(qs.values_list("model", flat=True).distinct()),
        "regions": sorted(r for r in qs.values_list("region", flat=True).distinct() if r),
    }


def month_to_date(org: Organization, now: datetime | None = None) -> Totals:
    now = now or timezone.now()
    return totals(events(org).filter(created_at__gte=month_start(now), created_at__lte=now))


def projected_month(spend: Decimal, now: datetime | None = None) -> Decimal:
    """Spend so far extrapolated linearly over the whole month."""
    now = (now or timezone.now()).astimezone(UTC)
    start = month_start(now)
    nxt = (start + timedelta(days=32)).replace(day=1)
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return spend
    return (spend * Decimal((nxt - start).total_seconds()) / Decimal(elapsed)).quantize(
        Decimal("0.01")
    )


def series(days: Iterable[Day], attribute: str) -> list[float | None]:
    out: list[float | None] = []
    for d in days:
        v = getattr(d, attribute)
        out.append(None if v is None else float(v))
    return out
