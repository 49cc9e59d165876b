"""Writes for billing."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis
from django.core.mail import mail_admins
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models.constants import OnConflict

from accounts import audit, audit_verify
from billing import metering, pricebook, rating, rollup
from billing.models import UsageDeadLetter, UsageEvent, UsageRequestId

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
        tried_backends=record.tried,
        **pricebook.charge_fields(charge),  # our price, fixed now (billing.rating)
    )


def _route(record: metering.UsageRecord) -> audit.Draft:
    """The request's entry in its organization's audit chain: where it ran, what the
    place was then, and what it asked for (`accounts.audit`, proof of residency)."""
    policy = record.backend_policy
    backend = None
    if record.deployment:
        backend = {
            "deployment": record.deployment,
            "region": record.region,
            "cluster": record.cluster,
            "chip": record.chip,
            "country": policy.get("country", ""),
            "jurisdictions": policy.get("jurisdictions", []),
            "certifications": policy.get("certifications", []),
        }
    payload = {
        "requested_at": datetime.fromtimestamp(record.created_at, tz=UTC),
        "endpoint": record.endpoint,
        "model": record.model,
        "served_model": record.served_model,
        "status": record.status,
        "api_key_id": record.api_key_id,
        "constraints": record.constraints,
        "backend": backend,
    }
    if record.plan:
        plan = audit.plain(record.plan)
        payload["plan"], payload["plan_hash"] = plan, audit_verify.plan_hash(plan)
    return audit.Draft(
        action="route", kind=audit.ROUTE, actor="gateway", request_id=record.request_id,
        payload=payload,
    )  # fmt: skip


def _insert_new(rows: list[UsageEvent]) -> list[UsageEvent]:
    """Store the rows whose request id was never stored; return them.

    The ids go first into `UsageRequestId` (unpartitioned, the id its primary key):
    INSERT … ON CONFLICT DO NOTHING RETURNING request_id, one multi-row statement
    (Django's UNNEST form on PostgreSQL), in the caller's transaction. It returns the
    ids this statement inserted, not those already stored (by a replay, or by another
    drain that committed first: PostgreSQL makes the insert wait for it). Only those
    rows are inserted into the events, which need no unique key of their own (on
    PostgreSQL they are partitioned by month, where `request_id` alone cannot be
    unique). A record that is twice in the batch is inserted, and returned, once. The
    ids are inserted in sorted order, so two drains holding some of the same ids wait
    for each other instead of deadlocking.
    """
    first: dict[str, UsageEvent] = {}
    for row in rows:
        first.setdefault(row.request_id, row)
    if not first:
        return []
    ids = [UsageRequestId(request_id=i, created_at=first[i].created_at) for i in sorted(first)]
    fields = list(UsageRequestId._meta.concrete_fields)
    request_id = UsageRequestId._meta.get_field("request_id")
    manager: Any = UsageRequestId.objects
    size = max(connection.ops.bulk_batch_size(fields, ids), 1)
    inserted: set[str] = set()
    for start in range(0, len(ids), size):
        returned = manager._insert(
            ids[start : start + size],
            fields=fields,
            returning_fields=[request_id],
            on_conflict=OnConflict.IGNORE,
        )
        inserted.update(r[0] for r in returned if r)
    new = [row for i, row in first.items() if i in inserted]
    UsageEvent.objects.bulk_create(new)
    return new


def _store(records: list[metering.UsageRecord], rows: list[UsageEvent]) -> None:
    """The rows, their days' rollup, and their routes' audit entries, in one
    transaction; a request id already stored is skipped in all three (a replay changes
    nothing)."""
    with transaction.atomic():
        rollup.add(rollup.of_events(_insert_new(rows)))
        chains: dict[int | None, list[audit.Draft]] = {}
        for r in records:
            chains.setdefault(r.org_id, []).append(_route(r))
        audit.append(chains)


def usage_events_record(records: list[metering.UsageRecord]) -> int:
    """Insert usage events; a request id already recorded is skipped. Returns rows sent."""
    book = pricebook.for_records(records)  # rating: three queries per batch
    rows = [_row(r, pricebook.rate_record(book, r)) for r in records]
    _store(records, rows)
    return len(records)


def _ensure_group(client: redis.Redis) -> None:
    try:
        client.xgroup_create(metering.STREAM, metering.GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


#: What says a record itself cannot be stored: the database (a string longer than its
#: column, a NUL character, an organization that does not exist, a negative count) or
#: the driver adapting a value, as opposed to the database being unreachable
#: (`OperationalError`), which must leave the records pending for the next drain.
_RECORD_REJECTED = (DataError, IntegrityError, ValueError, TypeError, ArithmeticError)


@dataclass
class _Message:
    """One stream entry on its way to the database, or to the dead-letter table."""

    id: str
    raw: bytes
    record: metering.UsageRecord | None = None
    row: UsageEvent | None = None
    reason: str = ""


def _message(entry_id: bytes | str, fields: dict[bytes, bytes] | None) -> _Message:
    """Decode a stream entry; what cannot become a row says why in `reason`."""
    message_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    if fields is None:  # deleted from the stream while pending (Redis 6.2 shows it so)
        return _Message(message_id, b"", reason="the entry was deleted from the stream")
    raw = fields.get(b"r")
    if raw is None:
        return _Message(message_id, repr(fields).encode(), reason="no 'r' field in the entry")
    message = _Message(message_id, raw)
    try:
        message.record = metering.decode(raw)
    except Exception as exc:  # msgspec's DecodeError and ValidationError
        message.reason = f"undecodable: {exc}"
        return message
    try:
        _check(message.record)
    except Exception as exc:  # a pure function of the record: the record is at fault
        message.reason = f"cannot become a row: {type(exc).__name__}: {exc}"
    return message


def _rate(messages: list[_Message]) -> None:
    """Give each decoded message its row, priced now (`billing.rating`): the charge is
    fixed when the request completes and never rewritten.

    The price book is read once for the batch (three queries). If the database rejects
    that read because of what a record names (a NUL in a deployment slug), each record
    is priced on its own, so only the guilty one is dead-lettered.
    """
    decoded = [m for m in messages if m.record is not None and not m.reason]
    if not decoded:
        return
    try:
        book = pricebook.for_records([m.record for m in decoded if m.record is not None])
    except _RECORD_REJECTED:
        if len(decoded) > 1:
            for m in decoded:
                _rate([m])
            return
        book = None
    for m in decoded:
        assert m.record is not None
        try:
            if book is None:
                raise ValueError("the price book cannot be read for this record")
            m.row = _row(m.record, pricebook.rate_record(book, m.record))
        except Exception as exc:  # a pure function of the record and the book
            m.reason = f"cannot become a row: {type(exc).__name__}: {exc}"


def _check(record: metering.UsageRecord) -> None:
    """What the table's CHECK constraints say, checked before inserting.

    The database checks them too (the events are inserted without ON CONFLICT, so a
    row that fails one raises, and `_insert` bisects its batch down to it); checked
    here, such a record is dead-lettered at once, without costing its batch a bisection.
    """
    for name in ("input_tokens", "output_tokens", "attempts"):
        if getattr(record, name) < 0:
            raise ValueError(f"{name} is negative")
    if Decimal(record.cost_usd) < 0:
        raise ValueError("cost_usd is negative")


def _insert(messages: list[_Message]) -> None:
    """Insert the rows in one transaction; if the database rejects it, bisect.

    A batch that fails is split in halves, each tried on its own, down to single
    records: one poisoned record costs about 2·log2(batch) extra transactions and is
    marked with the database's reason, and every other record lands. Anything else
    the database raises (it is down, a deadlock) propagates: nothing is acknowledged
    and the next drain tries again.
    """
    stored = [m for m in messages if m.row is not None and m.record is not None]
    try:
        _store([m.record for m in stored if m.record], [m.row for m in stored if m.row])
    except _RECORD_REJECTED as exc:
        if len(messages) == 1:
            messages[0].reason = f"rejected by the database: {type(exc).__name__}: {exc}"
            return
        half = len(messages) // 2
        _insert(messages[:half])
        _insert(messages[half:])


def _clean(text: str, limit: int) -> str:
    return text.replace("\x00", "\\x00")[:limit]


def _dead_letter(messages: list[_Message]) -> None:
    """Keep what could not be stored, say so loudly; idempotent by stream message."""
    rows = []
    for m in messages:
        org_id = m.record.org_id if m.record is not None else None
        if org_id is not None and not -(2**63) <= org_id < 2**63:
            org_id = None
        rows.append(
            UsageDeadLetter(
                stream=metering.STREAM,
                message_id=m.id,
                raw=m.raw,
                reason=_clean(m.reason, 2000),
                org_id=org_id,
                request_id=_clean(m.record.request_id, 64) if m.record is not None else "",
            )
        )
        logger.error(
            "usage record %s (request %s) dead-lettered: %s",
            m.id,
            rows[-1].request_id or "?",
            m.reason,
        )
    UsageDeadLetter.objects.bulk_create(rows, ignore_conflicts=True)
    mail_admins(
        f"{len(rows)} usage record(s) could not be stored",
        "The usage drain moved these records to the dead-letter table (admin: Billing ›"
        " Usage dead letters); every other record was stored.\n\n"
        + "\n".join(f"{r.message_id} request {r.request_id or '?'}: {r.reason}" for r in rows),
        fail_silently=True,
    )


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
    then reads new ones. Each batch is committed, then acknowledged. A record that
    cannot be stored — undecodable, or rejected by the database — goes to the
    dead-letter table and is acknowledged, so it cannot stop the drain for anyone
    else. Finally trims from the stream what has been stored (`metering.trim`).
    Returns the number of records stored.
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
        entries: list[Any] = [e for e in claimed if e and e[0] is not None]
        if not entries:
            fresh: Any = client.xreadgroup(
                metering.GROUP, consumer, {metering.STREAM: ">"}, count=batch
            )
            entries = fresh[0][1] if fresh else []
        if not entries:
            break
        messages = [_message(entry_id, fields) for entry_id, fields in entries]
        _rate(messages)
        storable = [m for m in messages if not m.reason]
        if storable:
            _insert(storable)
        dead = [m for m in messages if m.reason]
        if dead:
            _dead_letter(dead)
        client.xack(metering.STREAM, metering.GROUP, *(m.id for m in messages))
        done += len(messages) - len(dead)
    metering.trim(client)
    return done
