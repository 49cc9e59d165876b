"""Monthly invoices, closed from the charges stored on usage.

An invoice covers one calendar month in UTC, `[1st 00:00, next 1st 00:00)`, and has:

* one **usage line** per served model × region × pair of unit prices (a tier change or
  a new list price mid-month splits a line, so every line states the price it bills):
  requests, input and output tokens, unit prices per 1M tokens, and the amount, which is
  the exact sum of the line's stored charges rounded **once, half-up to the cent**;
  requests that produced no tokens are billed nothing and appear on no line; what the
  organization's own private cluster served is on lines of its own, at the tier's
  platform fee (per request, plus per 1M tokens) instead of a token price;
* the **base fee** of the tier the organization is on at the end of the month;
* one **SLA credit** per objective of that tier that the month's measured attainment
  missed, of `credit_pct` of the usage amount (rounded half-up), stating the measured
  and the promised percentages; credits never exceed the usage amount:
  - latency: completed requests that met the deadline they asked for (the gateway's
    `sla_met`) or, when they asked none, whose first token came within the tier's
    `default_ttft_ms`, over all completed requests;
  - availability: requests not failed by Tesseract over completed + failed requests
    (a request the client cancelled, or one the backend refused as malformed, the
    client's error, counts for neither);
* tax (zero for now, a field for later) and the total.

Closing is idempotent: an invoice is unique per organization and month, created only
if absent, so closing a month twice (or concurrently) changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, Q, Sum

from accounts.models import Organization
from billing.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    SlaTier,
    TierChange,
    UsageEvent,
)
from billing.rating import MTOK, ZERO, round_cents

logger = logging.getLogger(__name__)

PCT_QUANTUM = Decimal("0.001")


def period_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    """The month in UTC: start inclusive, end exclusive."""
    if not 1 <= month <= 12:
        raise ValueError(f"no month {month}")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def previous_month(now: datetime) -> tuple[int, int]:
    now = now.astimezone(UTC)
    return (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)


def invoice_number(org: Organization, year: int, month: int) -> str:
    return f"TSR-{year:04d}{month:02d}-{org.pk:06d}"


@dataclass
class LineDraft:
    kind: str
    description: str
    exact_usd: Decimal
    amount_usd: Decimal
    model: str = ""
    region: str = ""
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_per_mtok_usd: Decimal | None = None
    output_per_mtok_usd: Decimal | None = None
    measured_pct: Decimal | None = None
    promised_pct: Decimal | None = None


@dataclass(frozen=True)
class Attainment:
    """One objective's month: `met` of `eligible` requests."""

    objective: str
    met: int
    eligible: int
    promised_pct: Decimal | None

    @property
    def measured_pct(self) -> Decimal | None:
        if not self.eligible:
            return None
        # Down, so a miss never displays as the promised value (98.9996 shows 98.999).
        return (Decimal(self.met * 100) / self.eligible).quantize(PCT_QUANTUM, ROUND_DOWN)

    @property
    def missed(self) -> bool:
        """Exact: met/eligible < promised/100, compared without rounding."""
        if self.promised_pct is None or not self.eligible:
            return False
        return Decimal(self.met * 100) < self.promised_pct * self.eligible


@dataclass
class InvoiceDraft:
    org: Organization
    tier: SlaTier
    period_start: datetime
    period_end: datetime
    lines: list[LineDraft] = field(default_factory=list)
    attainment: list[Attainment] = field(default_factory=list)

    def _sum(self, *kinds: str) -> Decimal:
        return sum((ln.amount_usd for ln in self.lines if ln.kind in kinds), ZERO)

    @property
    def usage_usd(self) -> Decimal:
        return self._sum(InvoiceLine.Kind.USAGE)

    @property
    def subtotal_usd(self) -> Decimal:
        return self._sum(InvoiceLine.Kind.USAGE, InvoiceLine.Kind.BASE_FEE)

    @property
    def credits_usd(self) -> Decimal:
        return -self._sum(InvoiceLine.Kind.SLA_CREDIT)

    @property
    def tax_usd(self) -> Decimal:
        return ZERO  # a field for later; no tax engine yet

    @property
    def total_usd(self) -> Decimal:
        return self.subtotal_usd - self.credits_usd + self.tax_usd

    @property
    def billable(self) -> bool:
        return any(ln.amount_usd for ln in self.lines)


def tier_at(org: Organization, moment: datetime) -> SlaTier:
    """The tier in force just before `moment` (the account's tier if it has no history)."""
    change = (
        TierChange.objects.for_org(org)
        .filter(effective_at__lt=moment)
        .select_related("tier")
        .order_by("-effective_at", "-pk")
        .first()
    )
    if change is not None:
        return change.tier
    return BillingAccount.objects.for_org(org).select_related("tier").get().tier


def _usage(org: Organization, start: datetime, end: datetime) -> Any:
    return UsageEvent.objects.for_org(org).filter(created_at__gte=start, created_at__lt=end)


#: One usage line per served model × region × unit prices (× platform fee per request,
#: set only on what an organization's private cluster served).
_LINE_KEYS = (
    "served_model",
    "region",
    "price_input_per_mtok_usd",
    "price_output_per_mtok_usd",
    "fee_per_request_usd",
)


def usage_lines(org: Organization, start: datetime, end: datetime) -> list[LineDraft]:
    """The month's usage lines: token sums in SQL (integers, exact on every database),
    amounts from them × the unit prices (equal to the sum of the stored charges)."""
    groups = (
        _usage(org, start, end)
        .exclude(input_tokens=0, output_tokens=0)
        .values(*_LINE_KEYS)
        .annotate(requests=Count("pk"), tin=Sum("input_tokens"), tout=Sum("output_tokens"))
        .order_by(*_LINE_KEYS)
    )
    lines = []
    for g in groups:
        pin, pout = g["price_input_per_mtok_usd"], g["price_output_per_mtok_usd"]
        per_request = g["fee_per_request_usd"]
        if pin is not None and pout is not None:
            exact = (g["tin"] * pin + g["tout"] * pout) / MTOK
            if per_request is not None:  # a private cluster: the platform fee per request
                exact += g["requests"] * per_request
        else:  # rated from the gateway's recorded cost: sum the stored charges themselves
            charges = (
                _usage(org, start, end)
                .exclude(input_tokens=0, output_tokens=0)
                .filter(served_model=g["served_model"], region=g["region"])
                .filter(Q(price_input_per_mtok_usd__isnull=True))
                .values_list("charge_usd", flat=True)
            )
            exact = sum(charges, ZERO)
        where = g["region"] or "unrouted"
        description = f"{g['served_model']} in {where}"
        if per_request is not None:
            description += (
                f", your private cluster: platform fee ${per_request.normalize():f} a request"
                f" + ${pin.normalize():f} per 1M tokens"
            )
        lines.append(
            LineDraft(
                kind=InvoiceLine.Kind.USAGE,
                description=description,
                model=g["served_model"],
                region=g["region"],
                requests=g["requests"],
                input_tokens=g["tin"],
                output_tokens=g["tout"],
                input_per_mtok_usd=pin,
                output_per_mtok_usd=pout,
                exact_usd=exact,
                amount_usd=round_cents(exact),
            )
        )
    return lines


def _deadline_asked(constraints: dict[str, object]) -> bool:
    return "max_ttft_ms" in constraints or "max_latency_ms" in constraints


def attainment(
    org: Organization, start: datetime, end: datetime, tier: SlaTier
) -> list[Attainment]:
    """Measured latency and availability attainment of the month (see the module doc)."""
    latency_met = latency_eligible = ok = failed = 0
    rows = _usage(org, start, end).values_list("status", "sla_met", "ttft_ms", "constraints")
    for status, sla_met, ttft_ms, constraints in rows.iterator(chunk_size=5000):
        if status == UsageEvent.Status.ERROR:
            failed += 1
            continue
        if status != UsageEvent.Status.OK:
            continue  # cancelled by the client: neither our success nor our failure
        ok += 1
        latency_eligible += 1
        if _deadline_asked(constraints or {}):
            latency_met += bool(sla_met)
        else:
            latency_met += ttft_ms is not None and ttft_ms <= tier.default_ttft_ms
    return [
        Attainment("latency", latency_met, latency_eligible, tier.latency_objective_pct),
        Attainment("availability", ok, ok + failed, tier.availability_objective_pct),
    ]


def invoice_draft(*, org: Organization, year: int, month: int) -> InvoiceDraft:
    """Compute the month's invoice without writing anything."""
    start, end = period_bounds(year, month)
    tier = tier_at(org, end)
    draft = InvoiceDraft(org=org, tier=tier, period_start=start, period_end=end)
    draft.lines = usage_lines(org, start, end)
    if tier.base_fee_usd:
        fee = round_cents(tier.base_fee_usd)
        draft.lines.append(
            LineDraft(
                kind=InvoiceLine.Kind.BASE_FEE,
                description=f"{tier.name} tier, {start:%B %Y}",
                exact_usd=tier.base_fee_usd,
                amount_usd=fee,
            )
        )
    draft.attainment = attainment(org, start, end, tier)
    usage = draft.usage_usd
    credited = ZERO
    for a in draft.attainment:
        if not a.missed or not tier.credit_pct or not usage:
            continue
        exact = min(usage * tier.credit_pct / 100, usage - credited)
        amount = min(round_cents(exact), usage - credited)
        credited += amount
        draft.lines.append(
            LineDraft(
                kind=InvoiceLine.Kind.SLA_CREDIT,
                description=(
                    f"SLA credit: {a.objective} {a.measured_pct}% measured, "
                    f"{a.promised_pct}% promised ({tier.credit_pct}% of usage)"
                ),
                exact_usd=-exact,
                amount_usd=-amount,
                measured_pct=a.measured_pct,
                promised_pct=a.promised_pct,
            )
        )
    return draft


def invoice_close_month(*, org: Organization, year: int, month: int) -> tuple[Invoice | None, bool]:
    """Close the org's month: (the invoice, whether this call created it).

    Idempotent: an existing invoice is returned unchanged. A month with nothing to bill
    (no usage, no base fee) gets no invoice: (None, False).
    """
    start, _ = period_bounds(year, month)
    existing = Invoice.objects.for_org(org).filter(period_start=start).first()
    if existing is not None:
        return existing, False
    draft = invoice_draft(org=org, year=year, month=month)
    if not draft.billable:
        return None, False
    try:
        with transaction.atomic():
            invoice = Invoice.objects.create(
                org=org,
                number=invoice_number(org, year, month),
                period_start=draft.period_start,
                period_end=draft.period_end,
                tier=draft.tier,
                subtotal_usd=draft.subtotal_usd,
                credits_usd=draft.credits_usd,
                tax_usd=draft.tax_usd,
                total_usd=draft.total_usd,
            )
            InvoiceLine.objects.bulk_create(
                InvoiceLine(invoice=invoice, position=i, **vars(line))
                for i, line in enumerate(draft.lines, start=1)
            )
    except IntegrityError:  # closed concurrently by another worker: theirs stands
        return Invoice.objects.for_org(org).get(period_start=start), False
    logger.info("closed %s for %s: %s USD", invoice.number, org.slug, invoice.total_usd)
    return invoice, True


def invoices_close_month(*, year: int, month: int) -> list[Invoice]:
    """Close the month for every organization that had an account by its end.

    Returns the invoices this call created.
    """
    _, end = period_bounds(year, month)
    created = []
    orgs = Organization.objects.filter(billing_account__created_at__lt=end).order_by("pk")
    for org in orgs:
        invoice, new = invoice_close_month(org=org, year=year, month=month)
        if new and invoice is not None:
            created.append(invoice)
    return created
