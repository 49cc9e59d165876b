from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse

from accounts.models import User

#: Paths a signed-in user who still owes a second factor may reach. The inference
#: API (/v1/) authenticates with API keys, not sessions, so 2FA does not apply there.
_EXEMPT_PREFIXES = ("/account/2fa/", "/account/logout/", "/static/", "/health", "/v1/")


class RequireTwoFactorMiddleware:
    """Send users who must use 2FA to verify (or to enrol) before anything else.

    Staff must always (TESSERACT_STAFF_REQUIRE_2FA); members of an organization
    that requires it must too, and so must anyone who enrolled an authenticator
    (`User.needs_two_factor`). Runs after django-otp's OTPMiddleware.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = request.user
        if (
            isinstance(user, User)
            and not request.path.startswith(_EXEMPT_PREFIXES)
            and not user.is_verified()  # added by django_otp's OTPMiddleware
            and user.needs_two_factor()
        ):
            from django_otp import user_has_device

            target = "accounts:2fa_verify" if user_has_device(user) else "accounts:2fa_setup"
            return redirect(f"{reverse(target)}?next={request.get_full_path()}")
        return self.get_response(request)
