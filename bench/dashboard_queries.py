"""The developer dashboard's queries on a million usage events (PostgreSQL only).

    DATABASE_URL=postgres://... python -m bench.dashboard_queries [--rows 1000000]

Creates (once; re-runs reuse it) an organization `bench-dashboard` with three keys
and `--rows` UsageEvent rows spread over the last 90 days (six models, eight regions,
~2% errors, ~5% SLA missed), inserted by one `INSERT ... SELECT generate_series` so
the load takes seconds, then ANALYZEs the table. A second, smaller organization gets
rows too, so the org filter has something to filter.

Then it times each main query of the dashboard, exactly as the pages build them
(`dashboards.usage`), best of 5 warm runs, and records PostgreSQL's plan
(`EXPLAIN (ANALYZE, BUFFERS)`) for the request log's. Results:
bench/results/dashboard_queries.md.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django.setup()

from django.db import connection  # noqa: E402

from accounts import services  # noqa: E402
from accounts.models import ApiKey, Organization, User  # noqa: E402
from billing import partitions  # noqa: E402
from billing.models import UsageDay, UsageEvent, UsageRollupDay  # noqa: E402
from billing.tasks import rollup_usage  # noqa: E402
from dashboards import usage  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "dashboard_queries.md"
MODELS = (
    "llama-3.3-70b-instruct",
    "llama-3.1-8b-instruct",
    "qwen-2.5-72b-instruct",
    "mistral-large",
    "deepseek-v3",
    "gemma-2-27b",
)
REGIONS = (
    "westeurope",
    "francecentral",
    "eastus",
    "westus2",
    "japaneast",
    "uksouth",
    "swedencentral",
    "southeastasia",
)


def _org(slug: str) -> tuple[Organization, list[ApiKey]]:
    org = Organization.objects.filter(slug=slug).first()
    if org is None:
        owner, _ = User.objects.get_or_create(email=f"{slug}@example.com")
        org = services.organization_create(name=slug, owner=owner)
        Organization.objects.filter(pk=org.pk).update(slug=slug)
        org.refresh_from_db()
    keys = list(ApiKey.objects.filter(org=org).order_by("pk"))
    while len(keys) < 3:
        keys.append(services.api_key_create(org=org, name=f"key {len(keys)}").api_key)
    return org, keys


def _fill(org: Organization, keys: list[ApiKey], rows: int, now: datetime) -> float:
    have = UsageEvent.objects.filter(org=org).count()
    if have >= rows:
        return 0.0
    models = "ARRAY[" + ",".join(f"'{m}'" for m in MODELS) + "]"
    regions = "ARRAY[" + ",".join(f"'{r}'" for r in REGIONS) + "]"
    key_ids = "ARRAY[" + ",".join(str(k.pk) for k in keys) + "]"
    sql = f"""
    INSERT INTO billing_usageevent (
        request_id, org_id, api_key_id, created_at, endpoint, model, served_model,
        deployment, region, cluster, chip, stream, status, input_tokens, output_tokens,
        usage_source, cost_usd, ttft_ms, latency_ms, network_ms, queue_ms, compute_ms,
        sla_met, attempts, constraints, backend_policy, trace_id, charge_usd,
        tried_backends)
    SELECT
        'bench_' || %(org)s || '_' || g,
        %(org)s,
        ({key_ids})[1 + g %% 3],
        %(now)s::timestamptz - (g::float8 / %(rows)s) * interval '90 days',
        'chat.completions',
        ({models})[1 + (g * 7) %% 6],
        ({models})[1 + (g * 7) %% 6],
        ({regions})[1 + (g * 13) %% 8] || '--gpu--model',
        ({regions})[1 + (g * 13) %% 8],
        'cluster-' || (g %% 4),
        'h100',
        g %% 2 = 0,
        CASE WHEN g %% 50 = 0 THEN 'error' ELSE 'ok' END,
        100 + g %% 900, 50 + g %% 300,
        'upstream',
        ((100 + g %% 900) * 0.0000006 + (50 + g %% 300) * 0.0000008)::numeric(14, 8),
        40 + (g %% 97) * 3.1, 300 + (g %% 211) * 7.3, 12 + g %% 40, g %% 25, 200 + g %% 500,
        CASE WHEN g %% 50 = 0 THEN NULL ELSE g %% 20 <> 0 END,
        1 + (g %% 50 = 0)::int,
        '{{"max_ttft_ms": 200}}'::jsonb, '{{"jurisdictions": ["EU"]}}'::jsonb, '',
        ((100 + g %% 900) * 0.0000007 + (50 + g %% 300) * 0.0000009)::numeric(24, 12),
        '[]'::jsonb
    FROM generate_series(%(start)s, %(rows)s - 1) AS g
    """
    # Every month of the 90 days gets its partition, as the beat task would have made.
    partitions.ensure(now=now, also=[now - timedelta(days=d) for d in range(0, 91, 15)])
    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(sql, {"org": org.pk, "now": now, "rows": rows, "start": have})
        cursor.execute("ANALYZE billing_usageevent")
    return time.perf_counter() - t0


def _best(fn: Callable[[], Any], runs: int = 5) -> tuple[float, Any]:
    fn()  # warm
    best, out = float("inf"), None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000, out


def _explain(qs: Any) -> str:
    sql, params = qs.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    now = datetime.now(UTC).replace(microsecond=0)
    org, keys = _org("bench-dashboard")
    other, other_keys = _org("bench-dashboard-other")
    load_s = _fill(org, keys, args.rows, now)
    _fill(other, other_keys, args.rows // 10, now)
    total = UsageEvent.objects.filter(org=org).count()

    f = usage.LogFilters
    log_cases: list[tuple[str, usage.LogFilters]] = [
        ("request log, first page, no filter", f()),
        ("… model filter", f(model="mistral-large")),
        ("… region + status=error", f(region="japaneast", status="error")),
        ("… key + SLA missed", f(key_id=keys[1].pk, sla="missed")),
        ("… last 24 h, SLA met", f(since=now - timedelta(days=1), sla="met")),
    ]
    lines = [
        "# Dashboard queries on a million usage events",
        "",
        f"PostgreSQL {connection.cursor().connection.info.server_version}, "
        f"{total:,} rows for the measured org (+{total // 10:,} for another), "
        f"{f'loaded in {load_s:.1f} s' if load_s else 'already loaded'}; "
        f"best of 5 warm runs on a shared 2-core machine; run {now:%Y-%m-%d}.",
        "",
        "| query | ms |",
        "|---|---:|",
    ]
    plans: list[tuple[str, str]] = []
    for name, filters in log_cases:
        ms, page = _best(lambda filters=filters: usage.request_log(org, filters))
        lines.append(f"| {name} (50 rows) | {ms:.1f} |")
        plans.append(
            (name, _explain(filters.apply(usage.events(org)).order_by("-created_at", "-pk")[:51]))
        )
    # Page 200 deep via the cursor: the cost of a deep page is the same as the first.
    page = usage.request_log(org, f())
    for _ in range(199):
        assert page.next_cursor is not None
        page = usage.request_log(org, f(), page.next_cursor)
    cursor = page.next_cursor
    ms, _ = _best(lambda: usage.request_log(org, f(), cursor))
    lines.append(f"| request log, page 201 by cursor (10,000 rows deep) | {ms:.1f} |")
    ms, _ = _best(lambda: usage.access_event(org, f"bench_{org.pk}_123456"))
    lines.append(f"| one request by id | {ms:.1f} |")
    lines += [
        "",
        "| chart query (per page) | from the events | from the rollup |",
        "|---|---:|---:|",
    ]
    charts: list[tuple[str, Callable[[], Any]]] = []
    for days in (7, 30, 90):
        period = usage.Period.last_days(days, today=now.date())

        def overview(period: usage.Period = period) -> Any:
            rows = usage.rows(org, period)
            return usage.daily(rows, period), usage.totals(rows)

        def by_model(period: usage.Period = period) -> Any:
            return usage.by_dimension(org, usage.rows(org, period), period, "model")

        def by_region(period: usage.Period = period) -> Any:
            return usage.by_region(usage.rows(org, period))

        charts += [
            (f"overview: daily series + totals + p50/p99, {days} days", overview),
            (f"usage by model per day, {days} days", by_model),
            (f"map: requests and SLA by region, {days} days", by_region),
        ]

    def month() -> Any:
        return usage.month_to_date(org, now)

    charts.append(("spend this month", month))
    UsageRollupDay.objects.all().delete()
    UsageDay.objects.all().delete()
    raw = [_best(fn, runs=3)[0] for _, fn in charts]
    t0 = time.perf_counter()
    built = rollup_usage()
    build_s = time.perf_counter() - t0
    rolled = [_best(fn, runs=3)[0] for _, fn in charts]
    for (name, _), a_ms, b_ms in zip(charts, raw, rolled, strict=True):
        lines.append(f"| {name} | {a_ms:.1f} ms | {b_ms:.1f} ms |")
    lines += [
        "",
        f"Building the rollup of {built} days (both orgs, {UsageDay.objects.count():,} rows): "
        f"{build_s:.1f} s. Today is always read from the events (here ~11,000 rows).",
    ]
    lines += ["", "## Plans of the request log's queries", ""]
    for name, plan in plans:
        lines += [f"### {name}", "", "```", plan, "```", ""]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[: lines.index("## Plans of the request log's queries")]))


if __name__ == "__main__":
    main()
