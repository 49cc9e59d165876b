from __future__ import annotations

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login as auth_login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods
from django_otp import devices_for_user, match_token, user_has_device
from django_otp import login as otp_login

from accounts import services, signup
from accounts.forms import PasswordResetForm, SignupForm, SignupPasswordForm, TokenForm
from accounts.models import User


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


# Password reset: Django's views, our templates. The form answers the same whether the
# address has an account or not, and mails it either way (the link, or a note that no
# account uses it); the link is Django's signed token, void once the password changes.
class PasswordResetView(auth_views.PasswordResetView):
    template_name = "accounts/password_reset.html"
    form_class = PasswordResetForm
    email_template_name = "accounts/email/password_reset.txt"
    subject_template_name = "accounts/email/password_reset_subject.txt"
    success_url = reverse_lazy("accounts:password_reset_sent")


class PasswordResetSentView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_sent.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


@require_http_methods(["GET", "POST"])
def signup_start(request: HttpRequest) -> HttpResponse:
    """Sign-up, step one: an address and an organization name; a link goes by mail.

    The answer is the same page whether the address has an account or not.
    """
    if request.user.is_authenticated:
        return redirect("dashboards:home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        signup.signup_request(
            email=form.cleaned_data["email"],
            org_name=form.cleaned_data["org_name"],
            base_url=request.build_absolute_uri("/"),
        )
        request.session["signup_email"] = signup.normalize_email(form.cleaned_data["email"])
        return redirect("accounts:signup_sent")
    return render(request, "accounts/signup.html", {"form": form})


def signup_sent(request: HttpRequest) -> HttpResponse:
    return render(
        request, "accounts/signup_sent.html", {"email": request.session.get("signup_email")}
    )


@require_http_methods(["GET", "POST"])
def signup_verify(request: HttpRequest, token: str) -> HttpResponse:
    """Sign-up, step two, behind the mailed link: choose a password; the account, the
    organization (Free tier) and the session begin. Opening the link changes nothing
    (mail scanners open links); the form does."""
    try:
        claim = signup.signup_claim(token)
    except signup.SignupLinkError as exc:
        return render(request, "accounts/signup_invalid.html", {"error": str(exc)}, status=400)
    if User.objects.filter(email__iexact=claim.email).exists():
        return render(
            request, "accounts/signup_invalid.html",
            {"error": "This address has an account already: sign in instead."}, status=400,
        )  # fmt: skip
    form = SignupPasswordForm(request.POST or None, email=claim.email)
    if request.method == "POST" and form.is_valid():
        try:
            org = signup.signup_complete(
                claim=claim, password=form.cleaned_data["password1"], name=form.cleaned_data["name"]
            )
        except signup.SignupLinkError as exc:
            return render(request, "accounts/signup_invalid.html", {"error": str(exc)}, status=400)
        user = User.objects.get(email__iexact=claim.email)
        auth_login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome to Tesseract. {org.name} is on the Free tier.")
        org_url = reverse("dashboards:org", kwargs={"org_slug": org.slug})
        return redirect(f"{reverse('accounts:2fa_setup')}?next={org_url}")
    return render(request, "accounts/signup_verify.html", {"form": form, "claim": claim})


def login_username(request: HttpRequest, credentials: dict | None) -> str | None:
    """The account a sign-in names, as django-axes counts its failures."""
    raw = (credentials or {}).get("username") or request.POST.get("username")
    return raw.strip().lower() if isinstance(raw, str) and raw.strip() else None


def login_locked_out(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict | None
) -> HttpResponse:
    """What django-axes answers once an account or an address has failed too often.

    The sign-in page again, with a message that says to wait; 429, as for any rate
    limit. The password is not checked while the lock holds, right or wrong.
    """
    minutes = max(1, round(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    lockout = (
        "Too many failed sign-ins for this account or from this address. "
        f"Wait {minutes} minutes, then try again."
    )
    username = (credentials or {}).get("username") or request.POST.get("username", "")
    form = AuthenticationForm(request, initial={"username": username})
    response = render(request, "accounts/login.html", {"form": form, "lockout": lockout},
                      status=429)  # fmt: skip
    response["Retry-After"] = str(minutes * 60)
    return response


def _next_url(request: HttpRequest, default: str = "dashboards:home") -> str:
    target = request.GET.get("next") or request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return reverse(default)


@login_required
def two_factor_setup(request: HttpRequest) -> HttpResponse:
    """Enrol an authenticator app: QR code, first code, then backup codes shown once."""
    user = request.user
    assert isinstance(user, User)  # login_required ran first
    if user_has_device(user, confirmed=True) and not user.is_verified():
        return redirect("accounts:2fa_verify")
    device = services.totp_device_start(user=user)
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            codes = services.totp_device_confirm(device=device, token=form.cleaned_data["token"])
        except services.AccountsError as exc:
            form.add_error("token", str(exc))
        else:
            otp_login(request, device)
            return render(
                request, "accounts/backup_codes.html", {"codes": codes, "next": _next_url(request)}
            )
    qr_svg = segno.make(device.config_url, error="m").svg_inline(scale=5)
    return render(
        request,
        "accounts/2fa_setup.html",
        {
            "form": form,
            "qr_svg": qr_svg,
            "secret": device.bin_key.hex(),
            "device": device,
            "may_skip": not user.needs_two_factor(),
            "next": _next_url(request),
        },
    )


@login_required
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        # django-otp slows guessing down: after each wrong code a device refuses all
        # codes for a while (1 s, doubling). Say so, rather than "not right".
        throttled = any(not d.verify_is_allowed()[0] for d in devices_for_user(request.user))
        device = match_token(request.user, form.cleaned_data["token"])
        if device is None and throttled:
            form.add_error(
                "token", "Too many wrong codes in a row: wait a few seconds, then try again."
            )
        elif device is None:
            form.add_error("token", "That code is not right.")
        else:
            otp_login(request, device)
            messages.success(request, "Signed in with two-factor authentication.")
            return redirect(_next_url(request))
    return render(request, "accounts/2fa_verify.html", {"form": form})


@login_required
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The link in an invitation: shows what it offers, joins on POST."""
    user = request.user
    assert isinstance(user, User)
    try:
        invitation = services.invitation_pending(token=token)
    except services.AccountsError as exc:
        return render(request, "accounts/invitation.html", {"error": str(exc)}, status=404)
    if request.method == "POST":
        try:
            membership = services.invitation_accept(token=token, user=user)
        except services.AccountsError as exc:
            return render(
                request, "accounts/invitation.html", {"invitation": invitation, "error": str(exc)},
                status=400,
            )  # fmt: skip
        messages.success(request, f"You joined {membership.org.name}.")
        return redirect("dashboards:org", org_slug=membership.org.slug)
    return render(request, "accounts/invitation.html", {"invitation": invitation})
