from typing import Any

from django import forms
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
    Provider,
    Region,
    RegionLatency,
)
from backends.presets import PRESETS
from backends.providers import credential_set
from backends.sealing import SealingError, seal
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
    list_display = (
        "name", "region", "chip", "operator", "owner", "organization", "accelerators", "drained",
    )  # fmt: skip
    list_filter = ("owner", "chip", "drained")
    list_select_related = ("region", "chip", "organization")
    raw_id_fields = ("organization",)  # blank: public; set: that organization's private cluster


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
    list_filter = (
        "chip", "model", "adapter", "provider", "priority_scheduling", "loaded", "drained",
        "health",
    )  # fmt: skip
    list_select_related = ("chip", "model", "cluster")
    search_fields = ("slug", "provider_model_id")


class ProviderForm(forms.ModelForm):
    """Choose a preset and paste a key: the preset fills what the form leaves blank.

    The credential is write-only: the field is never filled in again (only its last
    four characters are shown), and leaving it blank keeps the one stored.
    """

    preset = forms.ChoiceField(
        choices=[("", "— none: fill in every field —")]
        + [(k, p.name) for k, p in sorted(PRESETS.items())],
        required=False,
        help_text="Fills the base URL, authentication and quirks left blank.",
    )
    base_url = forms.URLField(
        required=False,
        max_length=300,
        assume_scheme="https",
        help_text="The OpenAI-compatible base URL, ending in /v1. Blank: the preset's.",
    )
    credential = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="The provider's API key. Sealed at rest; never shown again. Blank: keep "
        "the stored one.",
    )

    class Meta:
        model = Provider
        fields = (
            "name", "slug", "preset", "base_url", "auth_style", "auth_header", "extra_headers",
            "connect_timeout_s", "first_token_timeout_s", "ignores_include_usage",
            "exposes_metrics", "status",
        )  # fmt: skip

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        key = data.get("preset") or ""
        if key:
            chosen = PRESETS[key]
            if not data.get("base_url"):
                data["base_url"] = chosen.base_url
            if not self.instance.pk:
                data["auth_style"] = chosen.auth_style
                data["auth_header"] = chosen.auth_header
                data["ignores_include_usage"] = chosen.ignores_include_usage
                data["exposes_metrics"] = chosen.exposes_metrics
        if not data.get("base_url"):
            self.add_error("base_url", "Give a base URL or choose a preset.")
        if data.get("auth_style") == Provider.Auth.HEADER and not data.get("auth_header"):
            self.add_error("auth_header", "Name the header that carries the credential.")
        credential = data.get("credential") or ""
        if any(c in credential for c in "\r\n\x00"):
            self.add_error("credential", "The credential contains a line break.")
        elif credential:
            try:
                seal(credential)  # the keys are there and work: nothing is saved otherwise
            except SealingError as exc:
                self.add_error("credential", str(exc))
        return data


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("name", "slug", "base_url", "auth_style", "credential_hint", "status")
    list_filter = ("status", "auth_style", "preset")
    search_fields = ("name", "slug")
    readonly_fields = ("credential_hint", "credential_set_at", "status_reason", "status_since")
    prepopulated_fields = {"slug": ("name",)}

    def get_fields(self, request: Any, obj: Any = None) -> Any:
        return (*ProviderForm.Meta.fields, "credential", *self.readonly_fields)

    @admin.display(description="credential")
    def credential_hint(self, obj: Provider) -> str:
        return obj.credential_hint or "—"

    def save_model(self, request: Any, obj: Provider, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        credential = form.cleaned_data.get("credential") or ""
        if credential:
            try:
                credential_set(obj, credential, by=str(request.user))
            except (SealingError, ValueError) as exc:
                messages.error(request, f"The credential was not stored: {exc}")


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
