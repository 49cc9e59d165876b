"""What the developer dashboard reads about an organization's requests.

Every read starts from the org handed over by the caller's membership
(`dashboards.scoping.org_view`) through `for_org` — the one tenancy filter
(`accounts.querysets`). The charts read the daily rollup (`billing.rollup`): whole
built days from `UsageDay` (the drain keeps them current, today's included), and the
days not built yet (a dirty day, today before the reconciler's first build) summed on
the fly from the `(org, created_at)` index by the same `aggregate` — a fixed number of
queries per page, whatever the volume. Sums are exact; TTFT percentiles come from the
rollup's 5% buckets (within 2.5%). The request log reads `UsageEvent` by keyset.
"""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Q, QuerySet
from django.http import Http404
from django.utils import timezone

from accounts.models import Organization
from accounts.params import whole_number
from billing import rollup
from billing.limits import NANO
from billing.models import UsageDay, UsageEvent

PAGE_SIZE = 50


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

    @classmethod
    def this_month(cls, now: datetime | None = None) -> Period:
        today = (now or timezone.now()).astimezone(UTC).date()
        return cls(today.replace(day=1), today + timedelta(days=1))

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days)]

    @property
    def length(self) -> int:
        return (self.end - self.start).days


def month_start(now: datetime | None = None) -> datetime:
    now = (now or timezone.now()).astimezone(UTC)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def events(org: Organization) -> QuerySet[UsageEvent]:
    """The org's usage events: the one place the dashboard starts a usage query."""
    return UsageEvent.objects.for_org(org)


# ------------------------------------------------------------------ rollup rows


def rows(org: Organization, period: Period) -> list[rollup.Row]:
    """The org's rollup rows of the period: stored for built days, computed for the
    rest (at most four queries)."""
    days = period.days
    built = rollup.built_days(days)
    out = rollup.stored_rows(UsageDay.objects.for_org(org).filter(day__in=built))
    raw = [d for d in days if d not in built]
    if raw:
        ranges = Q()
        for first, last in _runs(raw):
            start = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
            end = datetime.combine(last + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
            ranges |= Q(created_at__gte=start, created_at__lt=end)
        out += rollup.aggregate(events(org).filter(ranges)).get(org.pk, [])
    return out


def _runs(days: list[date]) -> list[tuple[date, date]]:
    """Consecutive days as (first, last) pairs."""
    runs: list[tuple[date, date]] = []
    for d in sorted(days):
        if runs and runs[-1][1] + timedelta(days=1) == d:
            runs[-1] = (runs[-1][0], d)
        else:
            runs.append((d, d))
    return runs


@dataclass(kw_only=True)
class Totals:
    """Counts over some requests, with the rates the pages show."""

    requests: int = 0
    tokens: int = 0
    spend: Decimal = Decimal(0)
    errors: int = 0
    sla_known: int = 0
    sla_met: int = 0
    ttft_hist: dict[int, int] = field(default_factory=dict)

    def add(self, row: rollup.Row) -> None:
        self.requests += row.requests
        self.tokens += row.input_tokens + row.output_tokens
        self.spend += row.charge_usd
        self.errors += row.errors
        self.sla_known += row.sla_known
        self.sla_met += row.sla_met
        for k, n in row.ttft_hist.items():
            self.ttft_hist[k] = self.ttft_hist.get(k, 0) + n

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def attainment(self) -> float | None:
        return self.sla_met / self.sla_known if self.sla_known else None

    @property
    def p50(self) -> float | None:
        return rollup.hist_percentile(self.ttft_hist, 0.5)

    @property
    def p99(self) -> float | None:
        return rollup.hist_percentile(self.ttft_hist, 0.99)


@dataclass(kw_only=True)
class Day(Totals):
    day: date


def totals(of: Iterable[rollup.Row]) -> Totals:
    out = Totals()
    for row in of:
        out.add(row)
    return out


def daily(of: Iterable[rollup.Row], period: Period) -> list[Day]:
    """One `Day` per day of the period, empty days included."""
    by_day = {d: Day(day=d) for d in period.days}
    for row in of:
        if row.day in by_day:
            by_day[row.day].add(row)
    return list(by_day.values())


@dataclass
class Breakdown:
    """A measure per day for each value of a dimension (model, region, key)."""

    dimension: str
    names: list[str]
    requests: dict[str, list[int]]
    tokens: dict[str, list[int]]
    spend: dict[str, list[Decimal]]
    totals: dict[str, tuple[int, int, Decimal]] = field(default_factory=dict)


def by_dimension(
    org: Organization, of: list[rollup.Row], period: Period, dimension: str, *, top: int = 6
) -> Breakdown:
    """Daily requests, tokens and spend per model, region or key (the `top` by
    requests named, the rest summed as 'other')."""
    attribute = {"model": "model", "region": "region", "key": "api_key_id"}[dimension]
    names: dict[Any, str] = {}
    if dimension == "key":
        from accounts.models import ApiKey

        ids = {r.api_key_id for r in of if r.api_key_id is not None}
        names = {
            k.pk: f"{k.name} ({k.display_prefix})"
            for k in ApiKey.objects.for_org(org).filter(pk__in=ids)
        }

    def label(row: rollup.Row) -> str:
        value = getattr(row, attribute)
        if dimension == "key":
            return names.get(value, "deleted key" if value is None else f"key {value}")
        return str(value or "(none)")

    volume: dict[str, int] = defaultdict(int)
    for r in of:
        volume[label(r)] += r.requests
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
    for r in of:
        i = index.get(r.day)
        if i is None:
            continue
        name = label(r)
        name = name if name in out.requests else "other"
        out.requests[name][i] += r.requests
        out.tokens[name][i] += r.input_tokens + r.output_tokens
        out.spend[name][i] += r.charge_usd
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


def by_region(of: Iterable[rollup.Row]) -> list[RegionVolume]:
    sums: dict[str, Totals] = defaultdict(Totals)
    for r in of:
        if r.region:
            sums[r.region].add(r)
    return sorted(
        (RegionVolume(name, t.requests, t.sla_known, t.sla_met) for name, t in sums.items()),
        key=lambda v: (-v.requests, v.region),
    )


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
        row = whole_number(pk)
        if row is None:
            raise ValueError(pk)
        return when, row
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


def filter_choices(of: Iterable[rollup.Row]) -> dict[str, list[str]]:
    """The models and regions in these rows (for the filter menus)."""
    of = list(of)
    return {
        "models": sorted({r.model for r in of}),
        "regions": sorted({r.region for r in of if r.region}),
    }


def month_to_date(org: Organization, now: datetime | None = None) -> Totals:
    return totals(rows(org, Period.this_month(now)))


def projected_month(spend: Decimal, now: datetime | None = None) -> Decimal:
    """Spend so far extrapolated linearly over the whole month, to the nano-dollar
    (as charges are kept): a month of test traffic projects to a fraction of a cent,
    which the pages show as such (`usd`), not as $0.00."""
    now = (now or timezone.now()).astimezone(UTC)
    start = month_start(now)
    nxt = (start + timedelta(days=32)).replace(day=1)
    elapsed = (now - start).total_seconds()
    if elapsed <= 0:
        return spend
    return (spend * Decimal((nxt - start).total_seconds()) / Decimal(elapsed)).quantize(NANO)


def series(days: Iterable[Day], attribute: str) -> list[float | None]:
    out: list[float | None] = []
    for d in days:
        v = getattr(d, attribute)
        out.append(None if v is None else float(v))
    return out
