from __future__ import annotations

from decimal import Decimal
from typing import Any

from django import forms

from accounts.models import DEFAULT_SCOPES, ApiKey, Role, Scope
from accounts.params import MAX_COUNT
from backends.models import (
    AIModel,
    Certification,
    Chip,
    Provider,
    Region,
    unknown_certifications,
)
from billing.models import SlaTier, UsageEvent
from dashboards.usage import LogFilters
from routing.gateway.parse import MAX_INPUT_TOKENS, MAX_MS, MAX_TOKENS, MODEL_MAX_LENGTH


class ApiKeyLimitsForm(forms.Form):
    """A key's own limits, tighter than the organization's; empty: the org's."""

    requests_per_minute = forms.IntegerField(required=False, min_value=1, max_value=MAX_COUNT)
    tokens_per_minute = forms.IntegerField(required=False, min_value=1, max_value=MAX_COUNT)
    monthly_budget_usd = forms.DecimalField(
        label="Monthly budget (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=14,
        decimal_places=2,
    )


class ApiKeyCreateForm(ApiKeyLimitsForm):
    field_order = (
        "name",
        "scopes",
        "expires_at",
        "default_regions",
        "default_compliance",
        "default_max_latency_ms",
        "default_max_ttft_ms",
    )

    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, initial=list(DEFAULT_SCOPES), widget=forms.CheckboxSelectMultiple
    )
    expires_at = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    default_regions = forms.CharField(
        required=False, help_text="Comma-separated region slugs; empty = any region."
    )
    default_compliance = forms.CharField(
        required=False, help_text="Comma-separated certifications, e.g. hipaa, gdpr."
    )
    default_max_latency_ms = forms.IntegerField(
        label="Default max latency (ms)", required=False, min_value=1, max_value=MAX_COUNT
    )
    default_max_ttft_ms = forms.IntegerField(
        label="Default max TTFT (ms)", required=False, min_value=1, max_value=MAX_COUNT
    )
    # ... and, inherited, the key's own limits (requests/min, tokens/min, budget).

    def __init__(self, *args: Any, can_grant_manage: bool = False, **kwargs: Any) -> None:
        """Only those who may grant `manage` (owners) are offered it; a forged POST of
        it by anyone else fails validation like any other unknown choice."""
        super().__init__(*args, **kwargs)
        if not can_grant_manage:
            field = self.fields["scopes"]
            assert isinstance(field, forms.MultipleChoiceField)
            field.choices = [(v, label) for v, label in Scope.choices if v != Scope.MANAGE]

    @staticmethod
    def _split(value: str) -> list[str]:
        return [item.strip().lower() for item in value.split(",") if item.strip()]

    def clean_default_regions(self) -> list[str]:
        from backends.models import Region

        slugs = self._split(self.cleaned_data["default_regions"])
        known = set(Region.objects.filter(slug__in=slugs).values_list("slug", flat=True))
        unknown = sorted(set(slugs) - known)
        if unknown:
            raise forms.ValidationError(f"Unknown regions: {', '.join(unknown)}")
        return slugs

    def clean_default_compliance(self) -> list[str]:
        tags = self._split(self.cleaned_data["default_compliance"])
        unknown = unknown_certifications(tags)
        if unknown:
            raise forms.ValidationError(f"Unknown certifications: {', '.join(unknown)}")
        return tags


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


class BudgetForm(forms.Form):
    monthly_budget_usd = forms.DecimalField(
        label="Monthly budget (USD)",
        required=False,
        min_value=Decimal(0),
        max_digits=14,
        decimal_places=2,
        help_text="Empty: the tier's cap.",
    )


class TierForm(forms.Form):
    tier = forms.ModelChoiceField(queryset=SlaTier.objects.all(), empty_label=None)


class LogFilterForm(forms.Form):
    """The request log's filters (GET); every field optional."""

    since = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    until = forms.DateTimeField(
        required=False, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )
    model = forms.CharField(required=False, max_length=80)
    region = forms.CharField(required=False, max_length=40)
    key = forms.TypedChoiceField(required=False, coerce=int, empty_value=None)
    status = forms.ChoiceField(
        required=False, choices=[("", "any status"), *UsageEvent.Status.choices]
    )
    sla = forms.ChoiceField(
        required=False,
        choices=[("", "met or missed"), ("met", "SLA met"), ("missed", "SLA missed")],
        label="SLA",
    )

    def __init__(self, *args: Any, keys: list[ApiKey], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["key"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [("", "any key"), *((k.pk, f"{k.name} ({k.display_prefix})") for k in keys)]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if since and until and since >= until:
            raise forms.ValidationError("'since' must be before 'until'.")
        return data

    def filters(self) -> LogFilters:
        d = self.cleaned_data
        return LogFilters(
            since=d.get("since"),
            until=d.get("until"),
            model=d.get("model") or "",
            region=d.get("region") or "",
            key_id=d.get("key"),
            status=d.get("status") or "",
            sla=d.get("sla") or "",
        )


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class ExplainForm(forms.Form):
    """A `/v1/route` body, as a form."""

    model = forms.CharField(max_length=MODEL_MAX_LENGTH, initial="llama-3.3-70b-instruct")
    max_ttft_ms = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_MS, label="Deadline (TTFT, ms)"
    )
    max_latency_ms = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_MS, label="Total latency (ms)"
    )
    compliance = forms.CharField(required=False, help_text="Comma-separated, e.g. hipaa, gdpr.")
    jurisdictions = forms.CharField(required=False, help_text="Comma-separated, e.g. EU, US.")
    client_region = forms.CharField(required=False, max_length=40, help_text="e.g. francecentral")
    input_tokens = forms.IntegerField(
        required=False, min_value=1, max_value=MAX_INPUT_TOKENS, initial=500
    )
    max_tokens = forms.IntegerField(required=False, min_value=1, max_value=MAX_TOKENS, initial=200)

    def route_body(self) -> dict[str, Any]:
        d = self.cleaned_data
        tesseract: dict[str, Any] = {}
        for name in ("max_ttft_ms", "max_latency_ms"):
            if d.get(name) is not None:
                tesseract[name] = d[name]
        for name in ("compliance", "jurisdictions"):
            if d.get(name):
                tesseract[name] = _csv(d[name])
        if d.get("client_region"):
            tesseract["client_region"] = d["client_region"].strip()
        body: dict[str, Any] = {"model": d["model"].strip(), "tesseract": tesseract}
        if d.get("input_tokens"):
            body["input_tokens"] = d["input_tokens"]
        if d.get("max_tokens"):
            body["max_tokens"] = d["max_tokens"]
        return body


# --------------------------------------------------------------------------- private clusters


class PrivateClusterForm(forms.Form):
    """Register one of the organization's own clusters (`backends.services`)."""

    name = forms.CharField(max_length=100)
    region = forms.ModelChoiceField(queryset=Region.objects.order_by("name"), to_field_name="slug")
    chip = forms.ModelChoiceField(queryset=Chip.objects.order_by("name"), to_field_name="slug")
    accelerators = forms.IntegerField(min_value=1, max_value=MAX_COUNT)
    certifications = forms.MultipleChoiceField(
        choices=Certification.choices, required=False, widget=forms.CheckboxSelectMultiple
    )
    credential = forms.CharField(
        required=False,
        max_length=4000,
        widget=forms.PasswordInput(render_value=False),
        help_text="The key its endpoints expect; sealed, never shown again.",
    )
    auth_style = forms.ChoiceField(choices=Provider.Auth.choices, initial=Provider.Auth.BEARER)
    auth_header = forms.CharField(required=False, max_length=80, help_text="For header auth.")


class PrivateDeploymentForm(forms.Form):
    """A model the cluster serves, where, and the profile it declares."""

    model = forms.ModelChoiceField(queryset=AIModel.objects.order_by("slug"), to_field_name="slug")
    endpoint_url = forms.URLField(
        max_length=200, assume_scheme="https", help_text="Its OpenAI-compatible base URL."
    )
    provider_model_id = forms.CharField(
        required=False, max_length=200, help_text="The server's own name for the model."
    )
    concurrency_slots = forms.IntegerField(min_value=1, max_value=MAX_COUNT)
    ttft_ms = forms.FloatField(min_value=0.001)
    reference_prompt_tokens = forms.IntegerField(min_value=1, max_value=MAX_COUNT, initial=1000)
    prefill_tokens_per_s = forms.FloatField(min_value=0.001)
    decode_tokens_per_s = forms.FloatField(min_value=0.001)
