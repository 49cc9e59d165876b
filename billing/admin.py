from django.contrib import admin

from billing.models import UsageEvent


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
