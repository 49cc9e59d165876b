from __future__ import annotations

import segno
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django_otp import login as otp_login
from django_otp import match_token, user_has_device

from accounts import services
from accounts.forms import TokenForm
from accounts.models import User


class LoginView(auth_views.LoginView):
    template_name = "accounts/login.html"
    redirect_authenticated_user = True


class LogoutView(auth_views.LogoutView):
    pass


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
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return default


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
        {"form": form, "qr_svg": qr_svg, "secret": device.bin_key.hex(), "device": device},
    )


@login_required
def two_factor_verify(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = match_token(request.user, form.cleaned_data["token"])
        if device is None:
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
