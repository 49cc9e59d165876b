"""No tenant can read or change another tenant's keys, members or invitations."""

from __future__ import annotations

import pytest

from accounts import services
from accounts.models import ApiKey, Invitation, Membership
from tests.conftest import login


@pytest.fixture
def alices_key(acme):
    return services.api_key_create(org=acme, name="prod").api_key


def test_charlie_gets_404_on_every_page_of_acme(charlie, globex, acme, alices_key):
    client = login(charlie)
    for method, url in [
        ("get", f"/orgs/{acme.slug}/"),
        ("get", f"/orgs/{acme.slug}/members/"),
        ("post", f"/orgs/{acme.slug}/members/invite/"),
        ("post", f"/orgs/{acme.slug}/keys/"),
        ("post", f"/orgs/{acme.slug}/keys/{alices_key.pk}/revoke/"),
    ]:
        assert getattr(client, method)(url).status_code == 404, url
    alices_key.refresh_from_db()
    assert alices_key.revoked_at is None


def test_charlie_cannot_revoke_alices_key_through_his_own_org(charlie, globex, alices_key):
    response = login(charlie).post(f"/orgs/{globex.slug}/keys/{alices_key.pk}/revoke/")
    assert response.status_code == 404
    alices_key.refresh_from_db()
    assert alices_key.revoked_at is None


def test_charlie_sees_only_his_org_listed(charlie, globex, acme):
    response = login(charlie).get("/")
    assert response.status_code == 302
    assert response["Location"] == f"/orgs/{globex.slug}/"


@pytest.mark.parametrize("model", [ApiKey, Membership, Invitation])
def test_for_org_returns_only_that_tenants_rows(model, acme, globex, alice, charlie):
    services.api_key_create(org=acme, name="a")
    services.api_key_create(org=globex, name="c")
    services.invitation_create(org=acme, email="x@example.com", role="viewer", invited_by=alice)
    services.invitation_create(org=globex, email="y@example.com", role="viewer", invited_by=charlie)
    for org in (acme, globex):
        rows = model.objects.for_org(org)
        assert rows.exists()
        assert {row.org_id for row in rows} == {org.pk}


def test_a_key_resolves_only_to_its_own_org(acme, globex):
    from accounts.keycache import KeyCache

    a = services.api_key_create(org=acme, name="a").plaintext
    c = services.api_key_create(org=globex, name="c").plaintext
    cache = KeyCache()
    assert cache.resolve(a).org_id == acme.pk
    assert cache.resolve(c).org_id == globex.pk
