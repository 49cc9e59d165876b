from django.contrib import admin

from billing.models import UsageDeadLetter, UsageEvent


@admin.register(UsageEvent)
class UsageEventAdmin(admin.ModelAdmin):
    list_display = (
        "request_id", "org", "model", "deployment", "input_tokens", "output_tokens",
        "cost_usd", "latency_ms", "sla_met", "status", "created_at",
    )  # fmt: skip
    list_filter = ("status", "sla_met", "stream", "region")
    search_fields = ("request_id", "org__name", "deployment", "trace_id")
    date_hierarchy = "created_at"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # usage is a ledger: it is never edited by hand


@admin.register(UsageDeadLetter)
class UsageDeadLetterAdmin(admin.ModelAdmin):
    """Usage records the drain could not store: read the raw record and the reason."""

    list_display = ("message_id", "request_id", "org_id", "short_reason", "created_at")
    search_fields = ("message_id", "request_id", "reason")
    date_hierarchy = "created_at"
    fields = ("stream", "message_id", "request_id", "org_id", "reason", "raw_text", "created_at")
    readonly_fields = fields

    @admin.display(description="reason")
    def short_reason(self, obj: UsageDeadLetter) -> str:
        return obj.reason[:120]

    @admin.display(description="raw record")
    def raw_text(self, obj: UsageDeadLetter) -> str:
        return obj.raw_text

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # kept as evidence; an operator may delete one once handled


# =========================================================================== money

from billing.models import (  # noqa: E402  (the money block, kept apart from metering)
    BillingAccount,
    Invoice,
    InvoiceLine,
    ListPrice,
    SlaTier,
    StripeEvent,
    StripeSyncRecord,
    TierChange,
)


@admin.register(SlaTier)
class SlaTierAdmin(admin.ModelAdmin):
    list_display = (
        "name", "requests_per_minute", "tokens_per_minute", "monthly_spend_cap_usd",
        "latency_objective_pct", "default_ttft_ms", "availability_objective_pct",
        "price_margin_pct", "credit_pct", "base_fee_usd", "dunning_grace_days",
    )  # fmt: skip
    readonly_fields = ("stripe_plan_id",)


class TierChangeInline(admin.TabularInline):
    model = TierChange
    fk_name = "org"
    extra = 0
    readonly_fields = ("tier", "effective_at", "changed_by")
    can_delete = False


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    """Change an org's tier with the `billing.subscriptions.tier_change` service, so
    the history that prices follow is kept."""

    list_display = ("org", "tier", "monthly_budget_usd", "payment_failed_at", "suspended_at")
    list_filter = ("tier",)
    search_fields = ("org__name", "org__slug", "stripe_customer_id")
    readonly_fields = ("org", "created_at", "stripe_customer_id", "stripe_subscription_id")

    def save_model(self, request, obj, form, change):
        from billing.subscriptions import tier_change

        if change and "tier" in form.changed_data:
            new_tier = obj.tier
            obj.tier = BillingAccount.objects.get(pk=obj.pk).tier
            super().save_model(request, obj, form, change)
            tier_change(org=obj.org, tier=new_tier, changed_by=request.user)
            obj.tier = new_tier
        else:
            super().save_model(request, obj, form, change)


@admin.register(TierChange)
class TierChangeAdmin(admin.ModelAdmin):
    list_display = ("org", "tier", "effective_at", "changed_by")
    list_filter = ("tier",)

    def has_change_permission(self, request, obj=None):
        return False  # history


@admin.register(ListPrice)
class ListPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_per_mtok_usd", "output_per_mtok_usd", "effective_from")
    search_fields = ("model",)


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    readonly_fields = (
        "position", "kind", "description", "requests", "input_tokens", "output_tokens",
        "input_per_mtok_usd", "output_per_mtok_usd", "exact_usd", "amount_usd",
        "measured_pct", "promised_pct",
    )  # fmt: skip
    exclude = ("model", "region")


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = (
        "number",
        "org",
        "period_start",
        "tier",
        "total_usd",
        "status",
        "stripe_invoice_id",
    )
    list_filter = ("status", "tier")
    search_fields = ("number", "org__name", "stripe_invoice_id")
    inlines = [InvoiceLineInline]

    def has_change_permission(self, request, obj=None):
        return False  # an invoice is closed: it is never edited by hand


@admin.register(StripeSyncRecord)
class StripeSyncRecordAdmin(admin.ModelAdmin):
    list_display = ("created_at", "org", "action", "outcome", "invoice")
    list_filter = ("action", "outcome")

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(StripeEvent)
class StripeEventAdmin(admin.ModelAdmin):
    list_display = ("received_at", "type", "event_id", "org", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id", "org__name")

    def has_change_permission(self, request, obj=None):
        return False


from billing.models import BudgetAlert  # noqa: E402  (limits: budget alerts)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(admin.ModelAdmin):
    list_display = ("org", "month", "threshold_pct", "spend_usd", "cap_usd", "sent_at")
    list_filter = ("month", "threshold_pct")

    def has_change_permission(self, request, obj=None):
        return False  # a record of what was sent
