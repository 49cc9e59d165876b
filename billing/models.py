"""What Tesseract meters and bills."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from accounts.models import ApiKey, Organization
from accounts.querysets import OrgOwnedQuerySet


class UsageEvent(models.Model):
    """One completed (or failed) inference request: exactly one row per request id.

    The route and the policy facts are copied at decision time, so the audit trail
    proves where a request ran and under which constraints even after the catalog
    changes. `cost_usd` is the provider's price for the tokens (the price book applies
    our prices on top at invoicing).
    """

    class Status(models.TextChoices):
        OK = "ok", "Completed"
        ERROR = "error", "Failed upstream"
        CANCELLED = "cancelled", "Client disconnected"

    request_id = models.CharField(max_length=64, unique=True)
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

    objects = OrgOwnedQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["org", "created_at"])]
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
