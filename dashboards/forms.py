from __future__ import annotations

from django import forms

from accounts.models import DEFAULT_SCOPES, Role, Scope
from backends.models import AIModel, Certification, Chip, Provider, Region


class ApiKeyCreateForm(forms.Form):
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
    default_max_latency_ms = forms.IntegerField(required=False, min_value=1)
    default_max_ttft_ms = forms.IntegerField(required=False, min_value=1)

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
        from backends.models import Certification

        tags = self._split(self.cleaned_data["default_compliance"])
        unknown = sorted(set(tags) - set(Certification.values))
        if unknown:
            raise forms.ValidationError(f"Unknown certifications: {', '.join(unknown)}")
        return tags


class InvitationForm(forms.Form):
    email = forms.EmailField()
    role = forms.ChoiceField(choices=Role.choices, initial=Role.DEVELOPER)


# --------------------------------------------------------------------------- private clusters


class PrivateClusterForm(forms.Form):
    """Register one of the organization's own clusters (`backends.services`)."""

    name = forms.CharField(max_length=100)
    region = forms.ModelChoiceField(queryset=Region.objects.order_by("name"), to_field_name="slug")
    chip = forms.ModelChoiceField(queryset=Chip.objects.order_by("name"), to_field_name="slug")
    accelerators = forms.IntegerField(min_value=1)
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
    concurrency_slots = forms.IntegerField(min_value=1)
    ttft_ms = forms.FloatField(min_value=0.001)
    reference_prompt_tokens = forms.IntegerField(min_value=1, initial=1000)
    prefill_tokens_per_s = forms.FloatField(min_value=0.001)
    decode_tokens_per_s = forms.FloatField(min_value=0.001)
