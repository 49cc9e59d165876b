"""The demo accounts of `make run`: one active demo key per run, never in production."""

from __future__ import annotations

import pytest

from accounts import demo
from accounts.keycache import KeyCache, KeyRejected
from accounts.models import ApiKey


def test_each_run_revokes_the_previous_demo_key_and_leaves_one_active(
    db, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = demo.demo_accounts_ensure()
    with django_capture_on_commit_callbacks(execute=True):
        second = demo.demo_accounts_ensure()
    assert first.api_key != second.api_key
    active = ApiKey.objects.for_org(second.org).usable()
    assert active.count() == 1
    cache = KeyCache()
    assert cache.resolve(second.api_key).org_id == second.org.pk
    with pytest.raises(KeyRejected) as rejected:
        cache.resolve(first.api_key)
    assert rejected.value.reason == "revoked"


def test_keys_the_developer_made_are_left_alone(db):
    from accounts import services

    logins = demo.demo_accounts_ensure()
    own = services.api_key_create(org=logins.org, name="my script").api_key
    demo.demo_accounts_ensure()
    own.refresh_from_db()
    assert own.is_active


def test_demo_accounts_are_refused_in_production(db, settings):
    settings.PRODUCTION = True
    with pytest.raises(RuntimeError, match="production"):
        demo.demo_accounts_ensure()
