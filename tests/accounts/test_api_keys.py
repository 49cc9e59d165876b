from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts import keycache, keys, services
from accounts.keycache import KeyCache, KeyRejected, Listener
from accounts.models import ApiKey, Scope
from tests.conftest import login


def test_a_key_has_the_tsk_prefix_and_the_documented_length(acme):
    issued = services.api_key_create(org=acme, name="ci")
    assert issued.plaintext.startswith("tsk_")
    assert len(issued.plaintext) == keys.KEY_LEN
    assert issued.api_key.lookup == issued.plaintext[4:12]


def test_the_plaintext_is_stored_nowhere_only_its_hmac(acme):
    issued = services.api_key_create(org=acme, name="ci")
    row = ApiKey.objects.get(pk=issued.api_key.pk)
    assert row.digest == keys.digest(issued.plaintext, settings.API_KEY_PEPPER)
    assert row.digest != issued.plaintext
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_apikey")
        stored = " ".join(str(v) for r in cursor.fetchall() for v in r)
    assert issued.plaintext not in stored
    assert issued.plaintext[12:] not in stored  # not even the secret part


def test_keys_are_compared_with_the_pepper(acme):
    issued = services.api_key_create(org=acme, name="ci")
    assert keys.matches(issued.plaintext, issued.api_key.digest, settings.API_KEY_PEPPER)
    assert not keys.matches(issued.plaintext, issued.api_key.digest, "another pepper")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tsk_",
        "sk-abc",
        "tsk_" + "A" * 40,
        "tsk_" + "a" * 39,
        "tsk_" + "a" * 41,
        "xyz_" + "a" * 40,
    ],
)
def test_malformed_keys_are_rejected_before_any_lookup(text):
    calls = []
    cache = KeyCache(loader=lambda lookup: calls.append(lookup))
    with pytest.raises(KeyRejected) as exc:
        cache.resolve(text)
    assert exc.value.reason == "malformed"
    assert calls == []


def test_a_key_resolves_to_its_org_scopes_and_defaults(acme):
    issued = services.api_key_create(
        org=acme,
        name="eu",
        scopes=[Scope.INFERENCE],
        default_regions=["francecentral"],
        default_compliance=["gdpr"],
        default_max_latency_ms=800,
    )
    resolved = KeyCache().resolve(issued.plaintext)
    assert resolved.org_id == acme.pk
    assert resolved.scopes == frozenset({"inference"})
    assert resolved.default_regions == ("francecentral",)
    assert resolved.default_compliance == ("gdpr",)
    assert resolved.default_max_latency_ms == 800


def test_a_right_prefix_with_a_wrong_secret_is_unknown(acme):
    issued = services.api_key_create(org=acme, name="ci")
    forged = issued.plaintext[:12] + "0" * keys.SECRET_LEN
    with pytest.raises(KeyRejected) as exc:
        KeyCache().resolve(forged)
    assert exc.value.reason == "unknown"


def test_the_cache_serves_repeat_lookups_without_the_database(acme, django_assert_num_queries):
    issued = services.api_key_create(org=acme, name="ci")
    cache = KeyCache()
    cache.resolve(issued.plaintext)
    with django_assert_num_queries(0):
        for _ in range(100):
            cache.resolve(issued.plaintext)


def test_an_expired_key_is_rejected(acme, time_machine):
    time_machine.move_to(timezone.now())
    issued = services.api_key_create(
        org=acme, name="short", expires_at=timezone.now() + timedelta(hours=1)
    )
    cache = KeyCache()
    cache.resolve(issued.plaintext)
    time_machine.shift(timedelta(hours=2))
    with pytest.raises(KeyRejected) as exc:
        cache.resolve(issued.plaintext)
    assert exc.value.reason == "expired"
    assert not ApiKey.objects.usable().filter(pk=issued.api_key.pk).exists()


def test_an_expiry_in_the_past_is_refused(acme):
    with pytest.raises(services.AccountsError):
        services.api_key_create(
            org=acme, name="late", expires_at=timezone.now() - timedelta(seconds=1)
        )
    assert not ApiKey.objects.exists()


def test_unknown_scopes_are_refused(acme):
    with pytest.raises(services.AccountsError):
        services.api_key_create(org=acme, name="x", scopes=["admin"])
    assert not ApiKey.objects.exists()


def test_revocation_reaches_another_process_cache_within_a_second(
    acme, django_capture_on_commit_callbacks
):
    """The listener talks to Redis exactly as another gateway process would."""
    issued = services.api_key_create(org=acme, name="ci")
    other_process = KeyCache(ttl_s=3600)
    listener = Listener(other_process, settings.REDIS_URL)
    listener.start()
    try:
        assert listener.subscribed.wait(5)
        other_process.resolve(issued.plaintext)

        with django_capture_on_commit_callbacks(execute=True):
            services.api_key_revoke(api_key=issued.api_key)
        started = time.monotonic()
        reason = None
        while reason is None and time.monotonic() - started < 1.0:
            try:
                other_process.resolve(issued.plaintext)
                time.sleep(0.01)
            except KeyRejected as exc:
                reason = exc.reason
        assert reason == "revoked", "the revoked key was still accepted after one second"
    finally:
        listener.stop()
        listener.join(2)


def test_without_news_a_cached_key_is_reloaded_after_its_ttl(acme):
    now = [0.0]
    issued = services.api_key_create(org=acme, name="ci")
    cache = KeyCache(ttl_s=30, clock=lambda: now[0])
    cache.resolve(issued.plaintext)
    ApiKey.objects.filter(pk=issued.api_key.pk).update(revoked_at=timezone.now())
    cache.resolve(issued.plaintext)  # still cached: no message was published
    now[0] = 31.0
    with pytest.raises(KeyRejected):
        cache.resolve(issued.plaintext)


def test_a_new_key_is_usable_at_once_even_after_a_failed_lookup(
    acme, django_capture_on_commit_callbacks
):
    cache = keycache.default_cache()
    new = keys.generate(settings.API_KEY_PEPPER)
    with pytest.raises(KeyRejected):
        cache.resolve(new.plaintext)  # negative entry for this prefix
    with django_capture_on_commit_callbacks(execute=True):
        ApiKey.objects.create(org=acme, name="late", lookup=new.lookup, digest=new.digest)
        keycache.publish_change(new.lookup)
    assert cache.resolve(new.plaintext).org_id == acme.pk


def test_last_used_is_written_at_most_once_a_minute(acme):
    key = services.api_key_create(org=acme, name="ci").api_key
    t0 = timezone.now()
    assert services.api_key_touch(key_id=key.pk, now=t0)
    assert not services.api_key_touch(key_id=key.pk, now=t0 + timedelta(seconds=30))
    assert services.api_key_touch(key_id=key.pk, now=t0 + timedelta(seconds=61))
    key.refresh_from_db()
    assert key.last_used_at == t0 + timedelta(seconds=61)


def test_the_key_is_shown_once_and_never_again(alice, acme):
    client = login(alice)
    response = client.post(
        f"/orgs/{acme.slug}/keys/", {"name": "laptop", "scopes": ["inference", "read"]}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    plaintext = response.context["issued"].plaintext
    assert plaintext in response.content.decode()

    page = client.get(f"/orgs/{acme.slug}/keys/").content.decode()
    assert plaintext not in page
    assert plaintext[:12] in page  # the prefix identifies it
    assert ApiKey.objects.get(name="laptop").scopes == ["inference", "read"]


def test_a_key_form_with_an_unknown_region_changes_nothing(alice, acme):
    response = login(alice).post(
        f"/orgs/{acme.slug}/keys/",
        {"name": "x", "scopes": ["inference"], "default_regions": "atlantis"},
    )
    assert response.status_code == 400
    assert "Unknown regions: atlantis" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_viewer_cannot_create_or_revoke_keys(acme, bob):
    services.membership_add(org=acme, user=bob, role="viewer")
    key = services.api_key_create(org=acme, name="prod").api_key
    client = login(bob)
    assert client.post(f"/orgs/{acme.slug}/keys/", {"name": "x"}).status_code == 404
    assert client.post(f"/orgs/{acme.slug}/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    assert ApiKey.objects.count() == 1


def test_a_teammate_can_revoke_a_key_from_the_dashboard(acme, bob):
    key = services.api_key_create(org=acme, name="prod").api_key
    response = login(bob).post(f"/orgs/{acme.slug}/keys/{key.pk}/revoke/")
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def _rejected_within(cache: KeyCache, plaintext: str, seconds: float) -> str | None:
    """The reason the cache rejects the key, once it does within `seconds`; else None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            cache.resolve(plaintext)
        except KeyRejected as exc:
            return exc.reason
        time.sleep(0.01)
    return None


@pytest.fixture
def other_process():
    """A key cache listening to Redis exactly as another gateway process would."""
    cache = KeyCache(ttl_s=3600)
    listener = Listener(cache, settings.REDIS_URL)
    listener.start()
    assert listener.subscribed.wait(5)
    yield cache
    listener.stop()
    listener.join(2)


def test_a_deleted_key_stops_working_in_another_process_within_a_second(
    acme, other_process, django_capture_on_commit_callbacks
):
    issued = services.api_key_create(org=acme, name="ci")
    other_process.resolve(issued.plaintext)
    with django_capture_on_commit_callbacks(execute=True):
        ApiKey.objects.get(pk=issued.api_key.pk).delete()
    reason = _rejected_within(other_process, issued.plaintext, 1.0)
    assert reason == "unknown", "the deleted key was still accepted after one second"


def verified_operator():
    """A test client signed in as a superuser who passed the second factor."""
    from accounts.models import User

    oscar = User.objects.create_user(
        "oscar@example.com", "pw-oscar-123", is_staff=True, is_superuser=True
    )
    code = services.backup_codes_regenerate(user=oscar)[0]
    client = login(oscar)
    assert client.post("/account/2fa/verify/", {"token": code}).status_code == 302
    return client


def test_a_key_deleted_in_the_admin_stops_working_within_a_second(
    acme, other_process, django_capture_on_commit_callbacks
):
    issued = services.api_key_create(org=acme, name="ci")
    other_process.resolve(issued.plaintext)
    operator = verified_operator()
    with django_capture_on_commit_callbacks(execute=True):
        response = operator.post(
            "/admin/accounts/apikey/",
            {"action": "delete_selected", "_selected_action": [issued.api_key.pk], "post": "yes"},
        )
    assert response.status_code == 302
    assert not ApiKey.objects.filter(pk=issued.api_key.pk).exists()
    assert _rejected_within(other_process, issued.plaintext, 1.0) == "unknown"


def test_deleting_an_organization_drops_its_keys_everywhere(
    acme, other_process, django_capture_on_commit_callbacks
):
    issued = services.api_key_create(org=acme, name="ci")
    other_process.resolve(issued.plaintext)
    with django_capture_on_commit_callbacks(execute=True):
        acme.delete()
    assert _rejected_within(other_process, issued.plaintext, 1.0) == "unknown"
