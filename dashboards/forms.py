from __future__ import annotations

from django import forms

from accounts.models import DEFAULT_SCOPES, Role, Scope


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
