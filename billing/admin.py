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
