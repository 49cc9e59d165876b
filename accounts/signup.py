"""Sign-up by email: a signed, expiring link proves the address before an account exists.

The sign-up form asks only for an address and an organization name. Nothing is stored:
the address gets a mail with a link whose token carries both, signed with SECRET_KEY
and valid for `TESSERACT_SIGNUP_LINK_MAX_AGE_H` hours. Whoever opens the link chooses
the password there, and only then are the user and the organization (on the Free tier,
see `billing.signals`) created. So an unverified address never holds an account
(nobody can pre-register someone else's address and wait), and no password ever
travels in a mail.

The answer to the form is the same whether the address has an account or not, and so
is the work behind it: an address that already has one gets a mail saying so (with a
sign-in and a password-reset link) instead of the link. Sign-up cannot tell a
stranger who has an account.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string

from accounts import services
from accounts.models import Organization, User

_SALT = "accounts.signup.v1"


@dataclass(frozen=True)
class SignupClaim:
    """What a verification link proves: this address asked to open this organization."""

    email: str
    org_name: str


class SignupLinkError(services.AccountsError):
    """The link is malformed, forged, expired, or was used already."""


def normalize_email(email: str) -> str:
    return email.strip().lower()


def signup_token(claim: SignupClaim) -> str:
    return signing.dumps({"e": claim.email, "o": claim.org_name}, salt=_SALT, compress=True)


def signup_claim(token: str) -> SignupClaim:
    """The claim a link carries, or SignupLinkError (forged, garbled or too old)."""
    max_age = settings.TESSERACT_SIGNUP_LINK_MAX_AGE_H * 3600
    try:
        data = signing.loads(token, salt=_SALT, max_age=max_age)
    except signing.SignatureExpired as exc:
        raise SignupLinkError("This link has expired. Sign up again to get a new one.") from exc
    except signing.BadSignature as exc:
        raise SignupLinkError("This link is not valid. Check that you copied all of it.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("e"), str):
        raise SignupLinkError("This link is not valid. Check that you copied all of it.")
    return SignupClaim(email=data["e"], org_name=str(data.get("o") or ""))


def signup_request(*, email: str, org_name: str, base_url: str) -> None:
    """Mail the address its verification link, or, if it has an account, a reminder.

    `base_url` is the site's scheme and host (`request.build_absolute_uri("/")`).
    The caller answers the same in both cases.
    """
    email = normalize_email(email)
    base = base_url.rstrip("/")
    context: dict[str, object] = {"email": email, "org_name": org_name, "base_url": base}
    if User.objects.filter(email__iexact=email).exists():
        template, subject = "accounts/email/signup_exists.txt", "Your Tesseract account"
    else:
        token = signup_token(SignupClaim(email=email, org_name=org_name))
        context["link"] = f"{base}/account/signup/verify/{token}/"
        context["hours"] = settings.TESSERACT_SIGNUP_LINK_MAX_AGE_H
        template, subject = "accounts/email/signup_verify.txt", "Confirm your Tesseract sign-up"
    send_mail(subject, render_to_string(template, context), None, [email])


@transaction.atomic
def signup_complete(*, claim: SignupClaim, password: str, name: str = "") -> Organization:
    """Create the verified user and their organization (they own it, on the Free tier).

    A link works once: once the address has an account, SignupLinkError.
    """
    if User.objects.filter(email__iexact=claim.email).exists():
        raise SignupLinkError("This address has an account already: sign in instead.")
    try:
        with transaction.atomic():
            user = User.objects.create_user(claim.email, password, name=name.strip())
    except IntegrityError as exc:  # the same link, opened twice at once
        raise SignupLinkError("This address has an account already: sign in instead.") from exc
    return services.organization_create(name=claim.org_name or claim.email, owner=user)
