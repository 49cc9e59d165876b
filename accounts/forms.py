from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import forms as auth_forms
from django.core.mail import send_mail
from django.http import HttpRequest
from django.template.loader import render_to_string


class TokenForm(forms.Form):
    token = forms.CharField(
        label="Code",
        max_length=16,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "autofocus": True}),
    )

    def clean_token(self) -> str:
        return self.cleaned_data["token"].replace(" ", "").strip()


class SignupForm(forms.Form):
    """The first step of sign-up: an address to verify and the organization to open."""

    email = forms.EmailField(
        label="Work email",
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True}),
    )
    org_name = forms.CharField(
        label="Organization name",
        max_length=120,
        help_text="Your team or company; you can invite others to it later.",
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )

    def clean_org_name(self) -> str:
        name = " ".join(self.cleaned_data["org_name"].split())
        if not name:
            raise forms.ValidationError("Give your organization a name.")
        if "\x00" in name:
            raise forms.ValidationError("The name cannot contain a NUL character.")
        return name


class SignupPasswordForm(forms.Form):
    """The second step, behind the verified link: a name and a password."""

    name = forms.CharField(
        label="Your name",
        max_length=150,
        required=False,
        widget=forms.TextInput(attrs={"autocomplete": "name", "autofocus": True}),
    )
    password1 = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="At least 8 characters, not a common one, not like your address.",
    )
    password2 = forms.CharField(
        label="Password again",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def __init__(self, *args: object, email: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.email = email

    def clean(self) -> dict:
        from django.contrib.auth.password_validation import validate_password

        from accounts.models import User

        cleaned = super().clean() or {}
        first, second = cleaned.get("password1"), cleaned.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            try:
                validate_password(first, User(email=self.email, name=cleaned.get("name", "")))
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return cleaned


class PasswordResetForm(auth_forms.PasswordResetForm):
    """Django's, and an address without an account gets a mail saying so.

    Every request then sends one mail, so neither the page nor the time it takes (with
    SMTP, sending is the slow part) tells whether the address has an account.
    """

    def save(self, **kwargs: Any) -> None:  # type: ignore[override]  # keywords only
        email = self.cleaned_data["email"]
        if next(iter(self.get_users(email)), None) is not None:
            super().save(**kwargs)
            return
        request: HttpRequest | None = kwargs.get("request")
        base = request.build_absolute_uri("/").rstrip("/") if request is not None else ""
        body = render_to_string(
            "accounts/email/password_reset_unknown.txt", {"email": email, "base_url": base}
        )
        send_mail("Reset your Tesseract password", body, None, [email])
