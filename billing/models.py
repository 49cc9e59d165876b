"""What Tesseract meters and bills."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db import models
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import ApiKey, Organization
from accounts.querysets import OrgOwnedQuerySet


class UsageRequestId(models.Model):
    """A request id the usage drain has stored: what keeps usage exactly-once.

    The drain inserts a batch's ids here first (ON CONFLICT DO NOTHING RETURNING) and
    stores only the events whose ids came back, in the same transaction. The events
    cannot say it themselves: on PostgreSQL `UsageEvent` is partitioned by month, and a
    partitioned table's unique constraints must include the partition key, so
    `request_id` alone cannot be unique there. Unpartitioned and narrow, this table is
    the one place a request id is unique, on SQLite and PostgreSQL alike.
    """

    request_id = models.CharField(max_length=64, primary_key=True)
    created_at = models.DateTimeField(
        default=timezone.now, help_text="The request's time (its event's created_at)."
    )

    def __str__(self) -> str:
        return self.request_id


class UsageEvent(models.Model):
    """One completed (or failed) inference request: exactly one row per request id.

    The route and the policy facts are copied at decision time, so the audit trail
    proves where a request ran and under which constraints even after the catalog
    changes. `cost_usd` is the provider's price for the tokens; `charge_usd` is ours,
    rated once by the drain (`billing.rating`) so that a later price change never
    rewrites history.

    One row per request id is the drain's promise, kept by `UsageRequestId` (the
    column is indexed, not unique here). On PostgreSQL the table is partitioned by
    month of `created_at` (`billing.partitions`): its primary key there is
    (id, created_at), since a partitioned table's keys must include the partition
    key. Django still knows `id` alone as the primary key: ids come from one identity
    sequence, so they stay unique, and the ORM's reads and writes by pk are right.
    """

    class Status(models.TextChoices):
        OK = "ok", "Completed"
        ERROR = "error", "Failed upstream"
        CANCELLED = "cancelled", "Client disconnected"
        #: the backend refused the request itself as malformed (a 4xx other than a
        #: provider's 401/403/404/429): the client's error, not a failure of ours
        REJECTED = "rejected", "Refused as malformed"

    request_id = models.CharField(max_length=64, db_index=True)
    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="usage_events")
    api_key = models.ForeignKey(
        ApiKey, null=True, on_delete=models.SET_NULL, related_name="usage_events"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    endpoint = models.CharField(max_length=32)
    model = models.CharField(max_length=80, help_text="The model asked for.")
    served_model = models.CharField(max_length=80)
    deployment = models.CharField(max_length=160)
    region = models.CharField(max_length=40)
    cluster = models.CharField(max_length=80)
    chip = models.CharField(max_length=40)
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OK)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    usage_source = models.CharField(max_length=16, help_text="upstream, or estimated")
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8)
    ttft_ms = models.FloatField(null=True)
    latency_ms = models.FloatField(null=True)
    network_ms = models.FloatField(null=True)
    queue_ms = models.FloatField(null=True)
    compute_ms = models.FloatField(null=True)
    sla_met = models.BooleanField(null=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    constraints = models.JSONField(default=dict, help_text="The request's policy, as routed.")
    backend_policy = models.JSONField(
        default=dict, help_text="The backend's certifications and jurisdictions at decision time."
    )
    trace_id = models.CharField(max_length=32, blank=True)
    # What the tenant is charged, fixed when the request completes (`billing.rating`):
    # every digit of tokens × our price per 1M tokens / 1M, rounded only on the invoice.
    charge_usd = models.DecimalField(max_digits=24, decimal_places=12, default=0)
    price_input_per_mtok_usd = models.DecimalField(
        max_digits=16, decimal_places=6, null=True, help_text="Our price, USD per 1M tokens."
    )
    price_output_per_mtok_usd = models.DecimalField(max_digits=16, decimal_places=6, null=True)
    fee_per_request_usd = models.DecimalField(
        max_digits=16,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Served by the organization's private cluster: the platform fee per "
        "request included in the charge (its token prices are the fee per 1M tokens).",
    )
    # -- developer dashboard (issue 11) --------------------------------------------------
    tried_backends = models.JSONField(
        default=list, blank=True, help_text="Deployments tried, in order; the last served it."
    )

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["org", "created_at"]),
            # The request log: newest first by (created_at, id), keyset-paginated.
            models.Index(fields=["org", "created_at", "id"], name="usage_log_keyset"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(cost_usd__gte=0), name="usageevent_cost_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.input_tokens}+{self.output_tokens}"


class UsageDeadLetter(models.Model):
    """A usage record the drain could not store, kept verbatim for an operator.

    The drain moves a record here when it cannot be decoded, or when the database
    rejects it on its own (a string longer than its column, a NUL character, an
    organization that does not exist): one bad record must never stop everyone's
    billing. Its stream message is acknowledged once this row is committed, so it is
    trimmed from Redis like any stored record; `raw` is all there is of it then.
    `org_id` and `request_id` are read from the record when it can be decoded, without
    trusting them (no foreign key: the organization may be the very thing that was
    wrong). Unique by stream message: a drain that dies before acknowledging and runs
    again changes nothing.
    """

    stream = models.CharField(max_length=200)
    message_id = models.CharField(max_length=48, help_text="The Redis stream entry id.")
    raw = models.BinaryField(help_text="The record exactly as it was in the stream.")
    reason = models.TextField()
    org_id = models.BigIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["stream", "message_id"], name="usagedeadletter_one_per_message"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.message_id} {self.request_id or '?'}: {self.reason[:60]}"

    @property
    def raw_text(self) -> str:
        """The raw record as readable text: invalid UTF-8 and NULs shown escaped."""
        text = bytes(self.raw).decode("utf-8", errors="backslashreplace")
        return text.replace("\x00", "\\x00")


# =========================================================================== money
# SLA tiers, billing accounts, the price book, invoices, Stripe and its webhooks.
# (Issue 10. Everything above this line is metering.)


def _money(**options: Any) -> Any:
    """Dollars and cents."""
    return models.DecimalField(max_digits=14, decimal_places=2, **options)


def _percent(**options: Any) -> Any:
    return models.DecimalField(max_digits=6, decimal_places=3, **options)


def _rate(**options: Any) -> Any:
    """Prices per 1M tokens are rates: stated to a millionth of a dollar."""
    return models.DecimalField(max_digits=16, decimal_places=6, **options)


def _charge(**options: Any) -> Any:
    """A charge keeps every digit of tokens × rate / 1M (see `billing.rating`)."""
    return models.DecimalField(max_digits=24, decimal_places=12, **options)


class SlaTier(models.Model):
    """A plan: limits, objectives, margin, credits and fees (seeded Free, Pro, Enterprise).

    Operators edit tiers in the admin. Limits apply at once to every organization on the
    tier; a new margin applies to requests that complete after the edit (charges already
    fixed on usage never change). Objectives are percentages of a month's requests; a
    missed objective credits `credit_pct` of the month's usage charges.
    """

    slug = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=80)
    requests_per_minute = models.PositiveIntegerField()
    tokens_per_minute = models.PositiveIntegerField()
    monthly_spend_cap_usd = _money(
        null=True, blank=True, help_text="Default monthly budget; empty: no cap."
    )
    latency_objective_pct = _percent(
        null=True,
        blank=True,
        help_text="Share of completed requests that meet the deadline they asked for (or "
        "the default TTFT below when they asked none). Empty: no latency objective.",
    )
    default_ttft_ms = models.PositiveIntegerField(
        default=1000, help_text="The deadline on the first token of requests that set none."
    )
    availability_objective_pct = _percent(
        null=True,
        blank=True,
        help_text="Share of requests not failed by Tesseract. Empty: no availability objective.",
    )
    price_margin_pct = _percent(help_text="Our price = provider cost × (1 + margin/100).")
    credit_pct = _percent(
        default=0, help_text="Credit per missed objective, % of the usage charges."
    )
    base_fee_usd = _money(default=0, help_text="Monthly subscription fee.")
    dunning_grace_days = models.PositiveIntegerField(
        default=7, help_text="Days after a failed payment before the organization is suspended."
    )
    private_cluster_fee_per_request_usd = _rate(
        default=0,
        help_text="Platform fee on each request a private cluster serves.",
    )
    private_cluster_fee_per_mtok_usd = _rate(
        default=0,
        help_text="Platform fee per 1M tokens a private cluster serves (input and output).",
    )
    stripe_plan_id = models.CharField(
        max_length=80, blank=True, help_text="Set by the Stripe sync."
    )

    class Meta:
        ordering = ["base_fee_usd", "slug"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(price_margin_pct__gte=0)
                & models.Q(credit_pct__gte=0)
                & models.Q(credit_pct__lte=100)
                & models.Q(base_fee_usd__gte=0),
                name="slatier_money_sane",
            ),
            models.CheckConstraint(
                condition=(
                    models.Q(latency_objective_pct__isnull=True)
                    | models.Q(latency_objective_pct__gt=0, latency_objective_pct__lte=100)
                )
                & (
                    models.Q(availability_objective_pct__isnull=True)
                    | models.Q(
                        availability_objective_pct__gt=0, availability_objective_pct__lte=100
                    )
                ),
                name="slatier_objectives_are_percentages",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class BillingAccount(models.Model):
    """An organization's billing: its tier, its budget, Stripe ids and dunning state.

    One per organization, created on the Free tier with the organization
    (`billing.signals`). `suspended_at` set: the organization's keys are refused
    (`billing.selectors.org_is_suspended`).
    """

    org = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="billing_account"
    )
    tier = models.ForeignKey(SlaTier, on_delete=models.PROTECT, related_name="accounts")
    monthly_budget_usd = _money(
        null=True, blank=True, help_text="Overrides the tier's cap; empty: the tier's."
    )
    created_at = models.DateTimeField(default=timezone.now)
    stripe_customer_id = models.CharField(max_length=80, blank=True)
    stripe_subscription_id = models.CharField(max_length=80, blank=True)
    payment_failed_at = models.DateTimeField(
        null=True, blank=True, help_text="Start of dunning: the first unpaid failed payment."
    )
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspended_reason = models.CharField(max_length=200, blank=True)

    objects = OrgOwnedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.org} on {self.tier}"

    @property
    def monthly_cap_usd(self) -> Decimal | None:
        """The budget in force: the account's own, else the tier's (None: no cap)."""
        if self.monthly_budget_usd is not None:
            return self.monthly_budget_usd
        return self.tier.monthly_spend_cap_usd


class TierChange(models.Model):
    """When an organization moved to a tier. Prices follow the tier in force at a
    request's `created_at`; the first row is the tier the account started on."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="tier_changes")
    tier = models.ForeignKey(SlaTier, on_delete=models.PROTECT, related_name="+")
    effective_at = models.DateTimeField(default=timezone.now, db_index=True)
    changed_by = models.ForeignKey(
        "accounts.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["org", "effective_at", "pk"]

    def __str__(self) -> str:
        return f"{self.org} → {self.tier} at {self.effective_at:%Y-%m-%d %H:%M}"


class ListPrice(models.Model):
    """An operator's price for a model, replacing cost × (1 + margin) for every tier,
    for requests that complete from `effective_from` on."""

    model = models.CharField(max_length=80, help_text="The served model's slug.")
    input_per_mtok_usd = _rate()
    output_per_mtok_usd = _rate()
    effective_from = models.DateTimeField(default=timezone.now)
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "effective_from"], name="listprice_unique"),
            models.CheckConstraint(
                condition=models.Q(input_per_mtok_usd__gte=0)
                & models.Q(output_per_mtok_usd__gte=0),
                name="listprice_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.effective_from:%Y-%m-%d}"


class Invoice(models.Model):
    """A closed month of one organization. Built once from the stored charges
    (`billing.invoicing.invoice_close_month`); closing the same month again changes
    nothing (unique per org and period)."""

    class Status(models.TextChoices):
        OPEN = "open", "Open (awaiting payment)"
        PAID = "paid", "Paid"
        VOID = "void", "Void"

    org = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="invoices")
    number = models.CharField(max_length=40, unique=True)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField(help_text="Exclusive.")
    tier = models.ForeignKey(SlaTier, on_delete=models.PROTECT, related_name="+")
    currency = models.CharField(max_length=3, default="usd")
    subtotal_usd = _money()
    credits_usd = _money(default=0)
    tax_usd = _money(default=0)
    total_usd = _money()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=80, blank=True)
    stripe_synced_at = models.DateTimeField(null=True, blank=True)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-period_start", "org"]
        constraints = [
            models.UniqueConstraint(fields=["org", "period_start"], name="invoice_one_per_period"),
            models.CheckConstraint(
                condition=models.Q(total_usd__gte=0), name="invoice_total_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.number


class InvoiceLine(models.Model):
    """One line: usage of a model in a region at one pair of unit prices, the base fee,
    or an SLA credit (negative, stating the measured and promised attainment)."""

    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        BASE_FEE = "base_fee", "Base fee"
        SLA_CREDIT = "sla_credit", "SLA credit"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    position = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=300)
    model = models.CharField(max_length=80, blank=True)
    region = models.CharField(max_length=40, blank=True)
    requests = models.PositiveIntegerField(default=0)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    input_per_mtok_usd = _rate(null=True, blank=True)
    output_per_mtok_usd = _rate(null=True, blank=True)
    exact_usd = _charge(help_text="Before rounding.")
    amount_usd = _money(help_text="Rounded half-up to the cent.")
    measured_pct = _percent(null=True, blank=True)
    promised_pct = _percent(null=True, blank=True)

    class Meta:
        ordering = ["invoice", "position"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "position"], name="invoiceline_unique"),
        ]

    def __str__(self) -> str:
        return self.description


class StripeSyncRecord(models.Model):
    """What one reconciliation run (or push) found in Stripe and what it repaired."""

    org = models.ForeignKey(
        Organization, null=True, on_delete=models.CASCADE, related_name="stripe_syncs"
    )
    invoice = models.ForeignKey(Invoice, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    action = models.CharField(max_length=40)
    outcome = models.CharField(max_length=16)
    detail = models.JSONField(default=dict)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.action}: {self.outcome}"


class StripeEvent(models.Model):
    """A Stripe webhook event, handled once (the id is unique); its outcome is kept."""

    event_id = models.CharField(max_length=80, unique=True)
    type = models.CharField(max_length=80)
    received_at = models.DateTimeField(default=timezone.now)
    org = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    outcome = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class ApiKeyLimits(models.Model):
    """One key's own limits, tighter than its organization's (set through /api/v1).
    Empty fields: the organization's. Enforced with the gateway's rate limits."""

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, related_name="limits")
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    monthly_budget_usd = _money(null=True, blank=True)

    objects = OrgOwnedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"limits of {self.api_key}"


class BudgetAlert(models.Model):
    """An email sent when an org's month crossed a share of its cap: once per threshold
    and month (unique), whoever runs the check (`billing.alerts`)."""

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    month = models.CharField(max_length=7, help_text="YYYY-MM")
    threshold_pct = models.PositiveSmallIntegerField()
    spend_usd = _charge()
    cap_usd = _money()
    sent_at = models.DateTimeField(default=timezone.now)

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-sent_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["org", "month", "threshold_pct"], name="budgetalert_once_per_month"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.org} {self.month} {self.threshold_pct}%"


# ====================================================================== daily rollup
# The developer dashboard's charts (issue 11) read whole past days from here.


class UsageDay(models.Model):
    """One organization's usage of one day, model, region and key, summed from
    UsageEvent by `billing.rollup` (exact sums; TTFT as a histogram of 5% buckets).

    The drain adds each batch it inserts to these rows; a day is (re)built whole
    (delete and insert in one transaction) by the reconciler, and only counts once
    `UsageRollupDay` marks it built and clean.
    """

    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    model = models.CharField(max_length=80)
    region = models.CharField(max_length=40)
    api_key_id = models.BigIntegerField(null=True, help_text="No foreign key: keys may go.")
    requests = models.PositiveIntegerField()
    input_tokens = models.PositiveBigIntegerField()
    output_tokens = models.PositiveBigIntegerField()
    charge_usd = _charge()
    errors = models.PositiveIntegerField()
    sla_known = models.PositiveIntegerField()
    sla_met = models.PositiveIntegerField()
    ttft_hist = models.JSONField(default=dict, help_text="5%-bucket index → completed requests")

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["org", "day"])]
        constraints = [
            # One row per group: what the drain's INSERT … ON CONFLICT adds to (no key: 0).
            models.UniqueConstraint(
                "org",
                "day",
                "model",
                "region",
                Coalesce("api_key_id", models.Value(0)),
                name="usageday_one_per_group",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.org_id} {self.day} {self.model} {self.region}: {self.requests}"


class UsageRollupDay(models.Model):
    """A day whose `UsageDay` rows are built for every organization; `dirty`: a usage
    record for it arrived after the build (readers use the raw events until rebuilt)."""

    day = models.DateField(unique=True)
    built_at = models.DateTimeField(default=timezone.now)
    dirty = models.BooleanField(default=False)

    def __str__(self) -> str:
        return f"{self.day}{' (dirty)' if self.dirty else ''}"
