"""The usage drain's sustained rows per second into PostgreSQL.

    DATABASE_URL=postgres://... REDIS_URL=redis://... python -m bench.drain \
        [--records 20000] [--rounds 3] [--batch 500] [--name drain]

Each round appends `--records` synthetic usage records to a fresh Redis stream (three
organizations, alice, bob and charlie, with three keys each; six models, eight regions,
~2% errors, routing constraints, backend policy, a small plan), then times the real
drain (`billing.services.usage_events_drain`: pricing, the rows, the audit chains,
acknowledgement, trimming) until the stream is empty. Only the drain is timed, not
the publishing. Reports each round and the median rows/s; appends a line to
`bench/results/<name>.md`. The rows it stores stay (request ids are unique per run),
so rounds run against a table that grows, as production's does.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from bench.dashboard_queries import MODELS, REGIONS, _org  # noqa: E402
from billing import metering  # noqa: E402
from billing import services as billing_services  # noqa: E402
from billing.models import UsageEvent  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--name", default="drain")
    parser.add_argument("--note", default="", help="What this run measures (the code's state).")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    client = redis.Redis.from_url(settings.REDIS_URL)
    tenants = [
        (org.pk, [k.pk for k in keys])
        for org, keys in (_org(f"bench-drain-{name}") for name in TENANTS)
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
                org_id, keys = tenants[n % len(tenants)]
                records.append(_record(rng, org_id, keys[n % len(keys)], run, n))
            _publish(client, records)
            t0 = time.perf_counter()
            stored = 0
            while True:
                done = billing_services.usage_events_drain(
                    client=client, consumer="bench", batch=args.batch, max_batches=10_000
                )
                stored += done
                if not done:
                    break
            seconds = time.perf_counter() - t0
        finally:
            client.delete(metering.STREAM)
        if stored != args.records:
            raise SystemExit(f"stored {stored} of {args.records} records: see the dead letters")
        rates.append(stored / seconds)
        print(f"round {round_no + 1}: {stored} rows in {seconds:.2f} s = {rates[-1]:,.0f} rows/s")
    median = statistics.median(rates)
    line = (
        f"| {datetime.now(UTC):%Y-%m-%d %H:%M} | {args.note or '-'} | {args.records:,} × "
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
