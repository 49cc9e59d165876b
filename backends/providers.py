"""Providers: their credentials (sealed), and what happens when one is rejected.

Writes for `Provider` rows live here. The gateway never queries the database: when a
provider answers 401/403 it marks the provider in Redis (`amark_rejected`, one HSET
and an announcement), every gateway lays that over its world at once (the provider's
deployments leave the plans), and the control plane's next health round
(`sync_rejections`) records it in the catalog (status MISCONFIGURED) and alerts the
operators (`mail_admins` and an ERROR line). An operator entering a new credential
(`credential_set`) clears both. No message written here contains a credential.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.mail import mail_admins
from django.db import transaction
from django.utils import timezone

from accounts import redis_client
from backends import livestate, sealing
from backends.models import Provider

logger = logging.getLogger(__name__)

#: hash: provider slug → why it was rejected (`<status> at <deployment>`)
REJECTED = livestate.REJECTED_PROVIDERS


def credential_set(provider: Provider, credential: str, *, by: str = "operator") -> Provider:
    """Seal `credential` for `provider`; keeps only its last four characters in clear.

    A provider that was MISCONFIGURED becomes ACTIVE again (the gateways route to it
    once the save is announced), and the gateways' rejection mark is cleared.
    """
    credential = credential.strip()
    if not credential:
        raise ValueError("the credential is empty")
    if any(c in credential for c in "\r\n\x00"):
        raise ValueError("the credential contains a line break or a NUL character")
    token = sealing.seal(credential)
    with transaction.atomic():
        Provider.objects.select_for_update().filter(pk=provider.pk).first()
        provider.credential_sealed = token
        provider.credential_last4 = sealing.last4(credential)
        provider.credential_set_at = timezone.now()
        if provider.status == Provider.Status.MISCONFIGURED:
            provider.status = Provider.Status.ACTIVE
            provider.status_reason = f"new credential entered by {by}"
            provider.status_since = timezone.now()
        provider.save()
    rejection_clear(provider.slug)
    logger.warning("credential of provider %s replaced by %s", provider.slug, by)
    return provider


def credential_reveal(provider: Provider) -> sealing.Secret | None:
    """The provider's credential, unsealed (in memory only), or None without one."""
    if not provider.credential_sealed:
        return None
    return sealing.unseal(provider.credential_sealed)


def reseal_all() -> int:
    """Seal every stored credential again with the first key; returns how many.

    The rotation path: put the new key first in TESSERACT_SEALING_KEYS (keep the old
    one after it), run this, then remove the old key. All or nothing.
    """
    done = 0
    with transaction.atomic():
        for provider in Provider.objects.select_for_update().exclude(credential_sealed=""):
            token = sealing.reseal(provider.credential_sealed)
            Provider.objects.filter(pk=provider.pk).update(credential_sealed=token)
            done += 1
    return done


# --------------------------------------------------------------------------- rejection


def rejection_reason(status: int, deployment: str) -> str:
    return f"the provider answered {status} (credential rejected) at {deployment}"


async def amark_rejected(client: Any, provider: str, reason: str) -> bool:
    """The gateway's side: take `provider` out of every gateway's plans now.

    Returns True for the first gateway to mark it (which logs the ERROR line; the
    control plane mails the operators).
    """
    first = bool(await client.hsetnx(REJECTED, provider, reason[:300]))
    if first:
        await client.publish(livestate.CHANNEL, livestate.encode_change("providers", [provider]))
        logger.error("provider %s rejected our credential: %s", provider, reason)
    return first


def mark_rejected(client: Any, provider: str, reason: str) -> bool:
    """`amark_rejected` for the control plane (a `redis.Redis`)."""
    first = bool(client.hsetnx(REJECTED, provider, reason[:300]))
    if first:
        livestate.announce_change(client, "providers", [provider])
        logger.error("provider %s rejected our credential: %s", provider, reason)
    return first


def rejection_clear(slug: str, client: Any = None) -> None:
    import redis
    from django.conf import settings

    client = client or redis_client.connect(settings.REDIS_URL)
    try:
        if client.hdel(REJECTED, slug):
            livestate.announce_change(client, "providers", [slug])
    except redis.RedisError:
        logger.exception("could not clear the rejection mark of provider %s", slug)


def sync_rejections(client: Any) -> list[str]:
    """Record the gateways' rejection marks in the catalog and alert the operators.

    Run by the control plane (the health task). A provider newly marked becomes
    MISCONFIGURED (which takes its deployments out of every world built from the
    catalog too) and the operators get one mail; returns the slugs newly marked.
    A mark left for a provider that is ACTIVE with a credential entered after the
    mark is the stale mark of a fixed provider and is cleared.
    """
    marks = {k.decode(): v.decode() for k, v in client.hgetall(REJECTED).items()}
    newly: list[str] = []
    for slug, reason in marks.items():
        provider = Provider.objects.filter(slug=slug).first()
        if provider is None:
            client.hdel(REJECTED, slug)
            continue
        if provider.status == Provider.Status.MISCONFIGURED:
            continue
        if provider_mark_misconfigured(provider, reason):
            newly.append(slug)
    return newly


def provider_mark_misconfigured(provider: Provider, reason: str) -> bool:
    """MISCONFIGURED, with the reason; alerts the operators. False if it already was."""
    with transaction.atomic():
        updated = (
            Provider.objects.filter(pk=provider.pk)
            .exclude(status=Provider.Status.MISCONFIGURED)
            .update(
                status=Provider.Status.MISCONFIGURED,
                status_reason=reason[:300],
                status_since=timezone.now(),
            )
        )
        if not updated:
            return False
        provider.refresh_from_db()
        provider.save(update_fields=["status"])  # post_save: gateways rebuild their world
    subject = f"Provider {provider.name} rejected Tesseract's credential"
    body = (
        f"Provider {provider.name} ({provider.slug}) is now MISCONFIGURED: {reason}.\n"
        f"Its {provider.deployments.count()} deployment(s) are out of every routing plan "
        f"until a working credential is entered (admin: Backends › Providers)."
    )
    logger.error("%s: %s", subject, reason)
    mail_admins(subject, body, fail_silently=True)
    return True
