"""The usage drain's sustained rows per second into PostgreSQL.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.drain \
        [--records 20000] [--rounds 3] [--batch 500] [--drains 1] [--orgs 3] \
        [--name drain] [--note TEXT]

Each round appends `--records` synthetic usage records to a fresh Redis stream (three
organizations, alice, bob and charlie, taking turns record by record, with three keys
each, or alice alone with `--orgs 1`; six models, eight regions, ~2% errors, routing
constraints, backend policy, a small plan), then times the real drain
(`billing.services.usage_events_drain`: pricing, the rows, the audit chains,
acknowledgement, trimming) until the stream is empty. Only the drain is timed, not
the publishing. Reports each round and the median rows/s; appends a line to
`bench/results/<name>.md`. The rows it stores stay (request ids are unique per run),
so rounds run against a table that grows, as production's does.

`--grouped` writes the records in runs of `--batch` per organization, so that a
batch holds about one organization rather than all of them.

`--drains N` (N > 1) forks N drain processes, each with its own database connection,
Redis client and consumer name, sharing the stream through the consumer group as
production's drains do; the time runs from releasing them together until the last
one finds the stream empty, and the rate is the total over that time. It is what
issue 14's capacity model asks: how far more drains go, and what one organization's
audit chain allows (each batch locks the chain of every organization in it, from
its audit append until its commit, so batches of the same organizations serialise
there whatever the number of drains).

After each round every request id of the run must be stored exactly once — one
event, one id row, one audit entry each — and the drains' own counts must add up to
the records: anything else stops the benchmark with an error, so a lost or doubled
record cannot pass for a faster drain.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402

from accounts.audit import AuditEntry  # noqa: E402
from bench.dashboard_queries import MODELS, REGIONS, _org  # noqa: E402
from billing import metering  # noqa: E402
from billing import services as billing_services  # noqa: E402
from billing.models import UsageDeadLetter, UsageEvent, UsageRequestId  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TENANTS = ("alice", "bob", "charlie")


def _record(rng: random.Random, org_id: int, key_id: int, run: str, n: int) -> bytes:
    model, region = rng.choice(MODELS), rng.choice(REGIONS)
    cluster = f"{region}-tesseract-nvidia-h100"
    deployment = f"{cluster}--{model}"
    failed = rng.random() < 0.02
    inp, out = rng.randint(50, 4000), 0 if failed else rng.randint(10, 800)
    ttft = rng.lognormvariate(5.5, 0.6)
    return metering.encode(
        metering.UsageRecord(
            request_id=f"bench-drain-{run}-{n}",
            org_id=org_id,
            api_key_id=key_id,
            created_at=time.time() - rng.random() * 60,
            endpoint="chat.completions",
            model=model,
            served_model=model,
            deployment=deployment,
            region=region,
            cluster=cluster,
            chip="nvidia-h100",
            stream=rng.random() < 0.6,
            status="error" if failed else "ok",
            input_tokens=inp,
            output_tokens=out,
            usage_source="upstream",
            cost_usd=f"{inp * 0.0000006 + out * 0.0000008:.8f}",
            ttft_ms=None if failed else ttft,
            latency_ms=None if failed else ttft + out * 12.0,
            network_ms=rng.uniform(2, 40),
            queue_ms=rng.uniform(0, 30),
            compute_ms=None if failed else out * 11.5,
            sla_met=None if failed else ttft < 400,
            attempts=2 if failed else 1,
            constraints={"max_ttft_ms": 400, "jurisdictions": ["EU"]},
            backend_policy={
                "country": "NL",
                "jurisdictions": ["EU"],
                "certifications": ["iso27001", "soc2"],
            },
            trace_id=uuid.UUID(int=rng.getrandbits(128)).hex,
            plan={"strategy": "deadline", "ranked": [deployment, f"{deployment}-b"]},
            tried=[deployment],
        )
    )


def _publish(client: redis.Redis, records: list[bytes]) -> None:
    for start in range(0, len(records), 1000):
        pipe = client.pipeline(transaction=False)
        for data in records[start : start + 1000]:
            pipe.xadd(metering.STREAM, {b"r": data})
        pipe.execute()


def _drain_until_empty(client: redis.Redis, consumer: str, batch: int) -> int:
    """Run the real drain until it finds nothing left for it; return the rows it stored."""
    stored = 0
    while done := billing_services.usage_events_drain(
        client=client, consumer=consumer, batch=batch, max_batches=10_000
    ):
        stored += done
    return stored


def _drain_process(
    stream: str, consumer: str, batch: int, start: Barrier, results: Queue[tuple[str, int | str]]
) -> None:
    """One forked drain: its own Redis client and (Django opens it anew after the fork,
    the parent's having been closed before) its own database connection. Reports the
    rows it stored, or its error, so the parent never waits on a dead drain."""
    metering.STREAM = stream
    client = redis.Redis.from_url(settings.REDIS_URL)
    connection.ensure_connection()  # connect before the clock starts
    start.wait()
    try:
        results.put((consumer, _drain_until_empty(client, consumer, batch)))
    except Exception as exc:
        results.put((consumer, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        connection.close()


def _drain_parallel(drains: int, batch: int) -> tuple[float, dict[str, int]]:
    """Fork `drains` drain processes on the current stream, release them together;
    return the seconds until the last one is done and what each stored."""
    context = multiprocessing.get_context("fork")
    start = context.Barrier(drains + 1)
    results: Queue[tuple[str, int | str]] = context.Queue()
    connection.close()  # no child may share the parent's socket
    procs = [
        context.Process(
            target=_drain_process,
            args=(metering.STREAM, f"bench-{i}", batch, start, results),
        )
        for i in range(drains)
    ]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    t0 = time.perf_counter()
    reports = dict(results.get(timeout=3600) for _ in procs)
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join()
    counts = {c: n for c, n in reports.items() if isinstance(n, int)}
    if len(counts) != drains or any(p.exitcode for p in procs):
        raise SystemExit(f"a drain process failed: {reports}")
    return seconds, counts


def _verify(ids: list[str], counted: int) -> None:
    """Every id stored exactly once, in the events, the id table and the audit log."""
    problems = []
    if counted != len(ids):
        problems.append(f"the drains counted {counted} rows for {len(ids)} records")
    for name, manager in (
        ("events", UsageEvent.objects),
        ("request ids", UsageRequestId.objects),
        ("audit entries", AuditEntry.objects),
    ):
        per_id = dict(
            manager.filter(request_id__in=ids)
            .values_list("request_id")
            .annotate(n=Count("*"))
            .values_list("request_id", "n")
        )
        missing = len(ids) - len(per_id)
        doubled = sum(1 for n in per_id.values() if n != 1)
        if missing or doubled:
            problems.append(f"{name}: {missing} ids missing, {doubled} stored more than once")
    dead = UsageDeadLetter.objects.filter(stream=metering.STREAM).count()
    if dead:
        problems.append(f"{dead} records dead-lettered")
    if problems:
        raise SystemExit("not stored exactly once: " + "; ".join(problems))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--drains", type=int, default=1, help="Drain processes sharing the stream (forked if > 1)."
    )
    parser.add_argument(
        "--orgs", type=int, choices=(1, 3), default=3, help="Organizations the records come from."
    )
    parser.add_argument(
        "--grouped",
        action="store_true",
        help="Records in runs of --batch per organization (a batch holds about one) "
        "instead of taking turns record by record (every batch holds all of them).",
    )
    parser.add_argument("--name", default="drain")
    parser.add_argument("--note", default="", help="What this run measures (the code's state).")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    client = redis.Redis.from_url(settings.REDIS_URL)
    tenants = [
        (org.pk, [k.pk for k in keys])
        for org, keys in (_org(f"bench-drain-{name}") for name in TENANTS[: args.orgs])
    ]
    rng = random.Random(14)
    rates: list[float] = []
    before = UsageEvent.objects.count()
    for round_no in range(args.rounds):
        run = uuid.uuid4().hex[:12]
        metering.STREAM = f"bench:usage:{run}"  # the drain reads it at call time
        try:
            records = []
            for n in range(args.records):
                turn = n // args.batch if args.grouped else n
                org_id, keys = tenants[turn % len(tenants)]
                records.append(_record(rng, org_id, keys[n % len(keys)], run, n))
            _publish(client, records)
            if args.drains > 1:
                seconds, counts = _drain_parallel(args.drains, args.batch)
            else:
                t0 = time.perf_counter()
                counts = {"bench": _drain_until_empty(client, "bench", args.batch)}
                seconds = time.perf_counter() - t0
            left = client.xlen(metering.STREAM)
            pending = client.xpending(metering.STREAM, metering.GROUP)["pending"]
            if left or pending:
                raise SystemExit(f"the stream is not drained: {left} entries, {pending} pending")
            _verify([f"bench-drain-{run}-{n}" for n in range(args.records)], sum(counts.values()))
        finally:
            client.delete(metering.STREAM)
        rates.append(args.records / seconds)
        split = " + ".join(f"{n:,}" for n in counts.values())
        print(
            f"round {round_no + 1}: {args.records} rows ({split}) in {seconds:.2f} s"
            f" = {rates[-1]:,.0f} rows/s"
        )
    median = statistics.median(rates)
    code = args.note or "-"
    if (args.drains, args.orgs, args.grouped) != (1, 3, False):
        grouped = ", grouped" if args.grouped else ""
        code += f" [{args.drains} drain(s), {args.orgs} org(s){grouped}]"
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {code} | {args.records:,} × "
        f"{args.rounds} | {args.batch} | {before:,} | "
        + ", ".join(f"{r:,.0f}" for r in rates)
        + f" | **{median:,.0f}** |"
    )
    print(f"median: {median:,.0f} rows/s")
    out = RESULTS / f"{args.name}.md"
    if not out.exists():
        out.write_text(
            "# Usage drain: sustained rows/s into PostgreSQL (`make bench-drain`)\n\n"
            "Real drain (pricing, rows, audit chains, ack, trim), records already in Redis;\n"
            "a shared 2-core machine with other work running: compare runs, not absolutes.\n\n"
            "| run (UTC) | code | records × rounds | batch | rows before | rows/s per round "
            "| median rows/s |\n|---|---|---|---:|---:|---|---:|\n"
        )
    with out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
