from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from accounts.models import ApiKey, Scope
from accounts.params import MAX_COUNT
from billing.models import BillingAccount, Invoice, InvoiceLine, SlaTier, UsageEvent


class TierSerializer(serializers.ModelSerializer):
    class Meta:
        model = SlaTier
        fields = [
            "slug", "name", "requests_per_minute", "tokens_per_minute", "monthly_spend_cap_usd",
            "latency_objective_pct", "default_ttft_ms", "availability_objective_pct",
            "price_margin_pct", "credit_pct", "base_fee_usd", "dunning_grace_days",
        ]  # fmt: skip


class AccountSerializer(serializers.ModelSerializer):
    org = serializers.CharField(source="org.slug")
    tier = TierSerializer()
    monthly_cap_usd = serializers.DecimalField(max_digits=14, decimal_places=2, allow_null=True)
    suspended = serializers.SerializerMethodField()

    class Meta:
        model = BillingAccount
        fields = [
            "org",
            "tier",
            "monthly_budget_usd",
            "monthly_cap_usd",
            "suspended",
            "suspended_reason",
        ]

    def get_suspended(self, account: BillingAccount) -> bool:
        return account.suspended_at is not None


class BudgetSerializer(serializers.Serializer):
    monthly_budget_usd = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, allow_null=True
    )


class KeyLimitsSerializer(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_COUNT, allow_null=True, required=False
    )
    tokens_per_minute = serializers.IntegerField(
        min_value=1, max_value=MAX_COUNT, allow_null=True, required=False
    )
    monthly_budget_usd = serializers.DecimalField(
        max_digits=14, decimal_places=2, min_value=0, allow_null=True, required=False
    )


class KeySerializer(serializers.ModelSerializer):
    prefix = serializers.CharField(source="display_prefix", read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)
    limits = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "id", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at",
            "last_used_at", "active", "limits",
        ]  # fmt: skip

    @extend_schema_field(KeyLimitsSerializer(allow_null=True))
    def get_limits(self, key: ApiKey) -> dict[str, object] | None:
        limits = getattr(key, "limits", None)
        if limits is None:
            return None
        return KeyLimitsSerializer(limits).data


class KeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), required=False, allow_empty=False
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class UsageSerializer(serializers.ModelSerializer):
    key = serializers.IntegerField(source="api_key_id", allow_null=True)

    class Meta:
        model = UsageEvent
        fields = [
            "request_id", "created_at", "key", "model", "served_model", "region", "status",
            "input_tokens", "output_tokens", "charge_usd", "price_input_per_mtok_usd",
            "price_output_per_mtok_usd", "ttft_ms", "latency_ms", "sla_met", "trace_id",
        ]  # fmt: skip


class DailyUsageSerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    charge_usd = serializers.DecimalField(max_digits=24, decimal_places=12)


class InvoiceLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = [
            "position", "kind", "description", "model", "region", "requests", "input_tokens",
            "output_tokens", "input_per_mtok_usd", "output_per_mtok_usd", "amount_usd",
            "measured_pct", "promised_pct",
        ]  # fmt: skip


class InvoiceSerializer(serializers.ModelSerializer):
    tier = serializers.CharField(source="tier.slug")

    class Meta:
        model = Invoice
        fields = [
            "number", "period_start", "period_end", "tier", "currency", "subtotal_usd",
            "credits_usd", "tax_usd", "total_usd", "status", "paid_at",
        ]  # fmt: skip


class InvoiceDetailSerializer(InvoiceSerializer):
    lines = InvoiceLineSerializer(many=True)

    class Meta(InvoiceSerializer.Meta):
        fields = [*InvoiceSerializer.Meta.fields, "lines"]
