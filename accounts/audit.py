"""Proof of residency: an append-only, hash-chained log of routing decisions and
operator actions.

Every entry belongs to one **chain**: each organization has its own (`org:<id>`: its
requests' routes, its tier changes, its API keys' creation, revocation and deletion),
and the operators' actions on the mesh (drains, faults, placement) form the
`operator` chain. One chain per organization keeps tenants independent: a tenant's
proof file holds its own entries and nobody else's, and verifies on its own.

An entry's hash is the SHA-256 of its canonical JSON, which includes the previous
entry's hash (`accounts.audit_verify`, standard library only, the same code a tenant
runs offline). Appending takes the chain's row lock (`AuditChain`, SELECT … FOR
UPDATE), so concurrent writers (two drains, a drain and a key revocation) serialise
on one chain without blocking the others; it runs inside the writer's transaction, so
an entry exists exactly when what it records was committed. A route is keyed by its
request id (unique): the usage drain, which is at-least-once, appends it once.

Who writes here: the usage drain (`billing.services`, one `route` entry per stored
usage event), `billing.subscriptions` (tier changes), `accounts.services` and
`accounts.signals` (keys), and the operator log's one writer for every operator action
(drains, faults, placement decisions: `record(action, actor=…, reason=…, target=…)`,
no organization, so the operator chain). This module sits in `accounts`, the lowest
Django layer, so that every one of them may import it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from accounts import audit_verify as proof
from accounts.models import Organization
from accounts.querysets import OrgOwnedQuerySet

OPERATOR_CHAIN = "operator"
ROUTE = proof.ROUTE


def chain_key(org_id: int | None) -> str:
    return OPERATOR_CHAIN if org_id is None else f"org:{org_id}"


def plain(value: Any) -> Any:
    """`value` as JSON the chain can hash: numbers that are not integers become their
    decimal text, datetimes ISO 8601 in UTC, sets sorted lists; a NUL character (which
    no database text column takes) is written as the four characters \\x00."""
    if isinstance(value, str):
        return _text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float | Decimal):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


def _text(text: str) -> str:
    return text.replace("\x00", "\\x00")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


class AuditChain(models.Model):
    """The head of one chain: its last sequence number and hash. Its row is the lock
    every append to the chain takes."""

    key = models.CharField(max_length=40, unique=True)
    # No database constraint: the log outlives what it speaks of.
    org = models.ForeignKey(
        Organization, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )  # fmt: skip
    seq = models.PositiveBigIntegerField(default=0)
    head_hash = models.CharField(max_length=64, default=proof.GENESIS)
    head_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.key} @ {self.seq}"


class AuditEntry(models.Model):
    """One link of a chain. Never updated, never deleted: `manage.py audit_verify`
    finds any row that was."""

    class Kind(models.TextChoices):
        ROUTE = ROUTE, "Routing decision"
        ACTION = "action", "Action"

    chain = models.CharField(max_length=40)
    org = models.ForeignKey(
        Organization, null=True, on_delete=models.DO_NOTHING, db_constraint=False,
        related_name="+",
    )  # fmt: skip
    seq = models.PositiveBigIntegerField()
    at = models.DateTimeField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    action = models.CharField(max_length=40, help_text="route, region.drain, key.revoke, …")
    actor = models.CharField(max_length=254, blank=True, help_text="Who did it.")
    reason = models.TextField(blank=True, help_text="Why, in their words.")
    request_id = models.CharField(max_length=64, null=True, blank=True, unique=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "audit entries"
        constraints = [
            models.UniqueConstraint(fields=["chain", "seq"], name="auditentry_one_per_seq"),
        ]
        indexes = [models.Index(fields=["chain", "at"])]

    def __str__(self) -> str:
        return f"{self.chain} #{self.seq} {self.action}"

    def as_dict(self) -> dict[str, Any]:
        """The entry as the proof file carries it, and as its hash covers it."""
        return {
            "chain": self.chain,
            "seq": self.seq,
            "at": _iso(self.at),
            "kind": self.kind,
            "action": self.action,
            "actor": self.actor,
            "reason": self.reason,
            "request_id": self.request_id,
            "payload": self.payload,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Draft:
    """An entry before it has its place in a chain."""

    action: str
    kind: str = AuditEntry.Kind.ACTION
    actor: str = ""
    reason: str = ""
    request_id: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def _locked(org_ids: Iterable[int | None]) -> dict[int | None, AuditChain]:
    """The chains' head rows, created if new, locked until the transaction ends; taken
    in key order, so two writers locking several chains cannot deadlock."""
    wanted = {chain_key(o): o for o in org_ids}
    AuditChain.objects.bulk_create(
        [AuditChain(key=k, org_id=o) for k, o in sorted(wanted.items())], ignore_conflicts=True
    )
    rows = AuditChain.objects.select_for_update().filter(key__in=wanted).order_by("key")
    return {chain.org_id: chain for chain in rows}


def _extend(chain: AuditChain, drafts: list[Draft]) -> list[AuditEntry]:
    """Link the drafts after the chain's head (which they move); not yet saved."""
    now = timezone.now()
    at = now if chain.head_at is None else max(now, chain.head_at)  # never backwards
    entries = []
    for draft in drafts:
        entry = AuditEntry(
            chain=chain.key,
            org_id=chain.org_id,
            seq=chain.seq + 1,
            at=at,
            kind=draft.kind,
            action=draft.action,
            actor=_text(draft.actor)[:254],
            reason=_text(draft.reason),
            request_id=draft.request_id,
            payload=plain(draft.payload),
            prev_hash=chain.head_hash,
        )
        entry.hash = proof.entry_hash(entry.as_dict())
        chain.seq, chain.head_hash, chain.head_at = entry.seq, entry.hash, at
        entries.append(entry)
    return entries


def append(by_org: Mapping[int | None, list[Draft]]) -> list[AuditEntry]:
    """Append drafts to their chains (None: the operator chain), in the caller's
    transaction. A route whose request id is already in the log is skipped (so is a
    second one with the same id in `by_org`): appending is idempotent for routes."""
    by_org = {o: d for o, d in by_org.items() if d}
    if not by_org:
        return []
    created: list[AuditEntry] = []
    with transaction.atomic():
        chains = _locked(by_org)
        ids = {d.request_id for drafts in by_org.values() for d in drafts if d.request_id}
        seen = set(
            AuditEntry.objects.filter(request_id__in=ids).values_list("request_id", flat=True)
        )
        for org_id in sorted(by_org, key=chain_key):
            fresh = []
            for draft in by_org[org_id]:
                if draft.request_id is not None:
                    if draft.request_id in seen:
                        continue
                    seen.add(draft.request_id)
                fresh.append(draft)
            if not fresh:
                continue
            chain = chains[org_id]
            entries = _extend(chain, fresh)
            AuditEntry.objects.bulk_create(entries)
            chain.save(update_fields=["seq", "head_hash", "head_at"])
            created += entries
    return created


def record(
    action: str,
    *,
    org_id: int | None = None,
    actor: Any = "",
    reason: str = "",
    **payload: Any,
) -> AuditEntry:
    """Record an action (who, what, why) in the org's chain, or the operator chain."""
    who = getattr(actor, "email", None) or str(actor or "")
    draft = Draft(action=action, actor=who, reason=reason, payload=payload)
    return append({org_id: [draft]})[0]


# ------------------------------------------------------------------------------ export


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """ "YYYY-MM" → [its first instant, the next month's) in UTC; ValueError otherwise."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", month)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"a month is written YYYY-MM, not {month!r}")
    start = datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else (
        start.replace(month=start.month + 1)
    )  # fmt: skip
    return start, end


def _lines(key: str, entries: models.QuerySet[AuditEntry], period: str) -> Iterator[str]:
    first = entries.order_by("seq").first()
    last = entries.order_by("-seq").first()
    head = AuditChain.objects.filter(key=key).first()
    header = {
        "format": proof.FORMAT,
        "chain": key,
        "period": period,
        "first_seq": first.seq if first else None,
        "last_seq": last.seq if last else None,
        "anchor": first.prev_hash if first else None,
        "head": {"seq": head.seq, "hash": head.head_hash} if head else None,
        "exported_at": _iso(timezone.now()),
        "verify": "python3 audit_verify.py THIS_FILE (from Tesseract; standard library only)",
    }
    yield json.dumps(header, sort_keys=True, ensure_ascii=False) + "\n"
    for entry in entries.order_by("seq").iterator(chunk_size=2000):
        yield json.dumps(entry.as_dict(), sort_keys=True, ensure_ascii=False) + "\n"


def month_lines(*, org_id: int | None, month: str) -> Iterator[str]:
    """A month of one chain as a proof file (JSON Lines); ValueError for a bad month.
    An entry belongs to the month in which it was appended (UTC)."""
    start, end = month_bounds(month)
    key = chain_key(org_id)
    entries = AuditEntry.objects.filter(chain=key, at__gte=start, at__lt=end)
    return _lines(key, entries, month)


def request_lines(*, org: Organization, request_id: str) -> list[str] | None:
    """One request's route as a proof file, or None if the org has no such request."""
    entries = AuditEntry.objects.for_org(org).filter(chain=chain_key(org.pk), request_id=request_id)
    if not entries.exists():
        return None
    return list(_lines(chain_key(org.pk), entries, f"request {request_id}"))


# ------------------------------------------------------------------------------ verify


def verify_stored(*, keys: Iterable[str] | None = None) -> proof.Report:
    """Check every stored chain (or those named): each row's hash, the links, the heads,
    each row's organization against its chain, and every route's policy."""
    total = proof.Report()
    chains = AuditChain.objects.order_by("key")
    if keys is not None:
        chains = chains.filter(key__in=list(keys))
    known = set()
    for chain in chains.iterator():
        known.add(chain.key)
        rows = AuditEntry.objects.filter(chain=chain.key).order_by("seq")
        report = proof.verify_entries(
            ((f"row {r.pk}", _checked(r, total)) for r in rows.iterator(chunk_size=2000)),
            chain=chain.key,
        )
        if (report.last_seq or 0, report.last_hash or proof.GENESIS) != (
            chain.seq,
            chain.head_hash,
        ):
            report.problems.append(
                f"chain {chain.key}: its head (seq {chain.seq}) is not its last entry"
                f" (seq {report.last_seq}): entries were removed, or the head altered"
            )
        total.entries += report.entries
        total.routes += report.routes
        total.problems += report.problems
    if keys is None:
        for row in AuditEntry.objects.exclude(chain__in=known).order_by("pk").iterator():
            total.problems.append(
                f"row {row.pk} (seq {row.seq}): belongs to chain {row.chain!r}, which has no head"
            )
    return total


def _checked(row: AuditEntry, total: proof.Report) -> dict[str, Any]:
    if row.chain != chain_key(row.org_id):
        total.problems.append(
            f"row {row.pk} (seq {row.seq}): its organization does not match its chain"
        )
    return row.as_dict()
