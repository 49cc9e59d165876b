from typing import Any

from django.contrib import admin, messages
from django.shortcuts import redirect
from django.urls import reverse

from accounts.operator_actions import record_operator_action
from backends.models import (
    AIModel,
    Chip,
    Cluster,
    ControlSettings,
    Deployment,
    PlacementAction,
    Region,
    RegionLatency,
)
from backends.services import drain_set


def _logged(request: Any, action: str, target: Any) -> None:
    """The operator log's entry for a kill switch thrown from the admin (which asks no
    reason: the console does)."""
    kind = type(target).__name__.lower()
    record_operator_action(
        request.user, action, f"{kind}:{target.slug}", "from the admin (no reason asked)"
    )


@admin.action(description="Drain: route nothing more here (in-flight requests finish)")
def drain(modeladmin: Any, request: Any, queryset: Any) -> None:
    for target in queryset:
        drain_set(target, drained=True, by=str(request.user))
        modeladmin.log_change(request, target, "Drained")
        _logged(request, "drain", target)
    messages.warning(request, f"Drained {queryset.count()}; gateways stop routing there now.")


@admin.action(description="Undrain: route here again")
def undrain(modeladmin: Any, request: Any, queryset: Any) -> None:
    for target in queryset:
        drain_set(target, drained=False, by=str(request.user))
        modeladmin.log_change(request, target, "Undrained")
        _logged(request, "undrain", target)
    messages.success(request, f"Undrained {queryset.count()}.")


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    actions = (drain, undrain)
    list_display = (
        "name",
        "slug",
        "country_code",
        "eu_member",
        "sovereign",
        "owner",
        "certifications",
        "drained",
    )
    list_filter = ("geo_group", "eu_member", "eea_member", "sovereign", "owner", "drained")
    search_fields = ("name", "slug", "country")


@admin.register(RegionLatency)
class RegionLatencyAdmin(admin.ModelAdmin):
    list_display = ("src", "dst", "rtt_p50_ms", "rtt_p95_ms", "source", "measured_at")
    list_select_related = ("src", "dst")
    search_fields = ("src__name", "dst__name")


@admin.register(Chip)
class ChipAdmin(admin.ModelAdmin):
    list_display = ("name", "vendor", "kind", "memory_gb")


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    actions = (drain, undrain)
    list_display = ("name", "region", "chip", "operator", "owner", "accelerators", "drained")
    list_filter = ("owner", "chip", "drained")
    list_select_related = ("region", "chip")


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "family", "parameters_b", "context_length")


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    actions = (drain, undrain)
    list_display = (
        "slug",
        "chip",
        "model",
        "ttft_ms",
        "decode_tokens_per_s",
        "price_input_per_mtok",
        "price_output_per_mtok",
        "concurrency_slots",
        "loaded",
        "drained",
        "health",
    )
    list_filter = ("chip", "model", "adapter", "loaded", "drained", "health")
    list_select_related = ("chip", "model", "cluster")
    search_fields = ("slug",)


@admin.register(PlacementAction)
class PlacementActionAdmin(admin.ModelAdmin):
    """What placement proposed or did, and why: history, so read-only."""

    list_display = ("created_at", "kind", "deployment", "status", "benefit", "applied_at")
    list_filter = ("kind", "status")
    list_select_related = ("deployment",)
    search_fields = ("deployment__slug", "reason")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(ControlSettings)
class ControlSettingsAdmin(admin.ModelAdmin):
    """One row: the list goes straight to it (created with its defaults if need be)."""

    fields = ("placement_mode", "updated_at")
    readonly_fields = ("updated_at",)

    def changelist_view(self, request: Any, extra_context: Any = None) -> Any:
        current = ControlSettings.current()
        return redirect(reverse("admin:backends_controlsettings_change", args=[current.pk]))

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False
