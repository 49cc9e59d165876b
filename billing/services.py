"""Writes for billing."""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis
from django.db import transaction

from billing import metering, pricebook, rating
from billing.models import UsageEvent

logger = logging.getLogger(__name__)


def _row(record: metering.UsageRecord, charge: rating.Charge) -> UsageEvent:
    return UsageEvent(
        request_id=record.request_id,
        org_id=record.org_id,
        api_key_id=record.api_key_id,
        created_at=datetime.fromtimestamp(record.created_at, tz=UTC),
        endpoint=record.endpoint,
        model=record.model,
        served_model=record.served_model,
        deployment=record.deployment,
        region=record.region,
        cluster=record.cluster,
        chip=record.chip,
        stream=record.stream,
        status=record.status,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        usage_source=record.usage_source,
        cost_usd=Decimal(record.cost_usd),
        ttft_ms=record.ttft_ms,
        latency_ms=record.latency_ms,
        network_ms=record.network_ms,
        queue_ms=record.queue_ms,
        compute_ms=record.compute_ms,
        sla_met=record.sla_met,
        attempts=record.attempts,
        constraints=record.constraints,
        backend_policy=record.backend_policy,
        trace_id=record.trace_id,
        **pricebook.charge_fields(charge),  # our price, fixed now (billing.rating)
    )


def usage_events_record(records: list[metering.UsageRecord]) -> int:
    """Insert usage events; a request id already recorded is skipped. Returns rows sent."""
    book = pricebook.for_records(records)  # rating: three queries per batch
    rows = [_row(r, pricebook.rate_record(book, r)) for r in records]
    UsageEvent.objects.bulk_create(rows, ignore_conflicts=True)
    return len(records)


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(metering.STREAM, metering.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def usage_events_drain(
    *,
    client: redis.Redis,
    consumer: str | None = None,
    batch: int = 500,
    claim_idle_ms: int = metering.CLAIM_IDLE_MS,
    max_batches: int = 100,
) -> int:
    """Move usage records from the Redis stream into the database; safe to run twice.

    First claims records another consumer read but never acknowledged (it died),
    then reads new ones. Each batch is committed, then acknowledged.
    Returns the number of records processed.
    """
    consumer = consumer or f"{socket.gethostname()}-{id(client)}"
    _ensure_group(client)
    done = 0
    claim_from = "0-0"
    for _ in range(max_batches):
        # Redis 7 also returns the ids of deleted entries; 6.2 (the embedded one) does not.
        claim_from, claimed, *_ = client.xautoclaim(
            metering.STREAM, metering.GROUP, consumer, claim_idle_ms, claim_from, count=batch
        )
        entries: list[Any] = list(claimed)
        if not entries:
            fresh: Any = client.xreadgroup(
                metering.GROUP, consumer, {metering.STREAM: ">"}, count=batch
            )
            entries = fresh[0][1] if fresh else []
        if not entries:
            break
        records, bad = [], []
        for entry_id, fields in entries:
            try:
                records.append(metering.decode(fields[b"r"]))
            except (KeyError, ValueError):  # msgspec errors are ValueErrors
                logger.error("unreadable usage record %s left in the stream", entry_id)
                bad.append(entry_id)
        with transaction.atomic():
            usage_events_record(records)
        ids = [entry_id for entry_id, _ in entries if entry_id not in bad]
        if ids:
            client.xack(metering.STREAM, metering.GROUP, *ids)
        done += len(records)
    return done
