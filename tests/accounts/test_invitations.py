from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts import services
from accounts.models import Membership, Role


def test_an_invited_person_joins_with_the_role_offered(acme, alice, charlie):
    issued = services.invitation_create(
        org=acme, email="Charlie@Example.com", role=Role.VIEWER, invited_by=alice
    )
    membership = services.invitation_accept(token=issued.token, user=charlie)
    assert membership.org == acme
    assert membership.role == Role.VIEWER


def test_an_invitation_works_once(acme, alice, charlie):
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.DEVELOPER, invited_by=alice
    )
    services.invitation_accept(token=issued.token, user=charlie)
    with pytest.raises(services.AccountsError):
        services.invitation_accept(token=issued.token, user=charlie)


def test_an_invitation_for_someone_else_is_refused(acme, alice, bob, charlie):
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.ADMIN, invited_by=alice
    )
    with pytest.raises(services.AccountsError):
        services.invitation_accept(token=issued.token, user=bob)
    assert Membership.objects.get(org=acme, user=bob).role == Role.DEVELOPER


def test_an_expired_invitation_is_refused(acme, alice, charlie, time_machine):
    time_machine.move_to(timezone.now())
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.ADMIN, invited_by=alice
    )
    time_machine.shift(timedelta(days=8))
    with pytest.raises(services.AccountsError):
        services.invitation_accept(token=issued.token, user=charlie)
    assert not Membership.objects.filter(org=acme, user=charlie).exists()


def test_only_a_hash_of_the_invitation_token_is_stored(acme, alice, charlie):
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.ADMIN, invited_by=alice
    )
    issued.invitation.refresh_from_db()
    assert issued.token not in issued.invitation.token_digest


def test_an_admin_cannot_invite_an_owner(acme, bob):
    services.membership_add(org=acme, user=bob, role=Role.ADMIN)
    with pytest.raises(services.AccountsError):
        services.invitation_create(org=acme, email="z@example.com", role=Role.OWNER, invited_by=bob)


def test_an_owner_invites_through_the_dashboard_and_the_link_works_once(acme, alice, charlie):
    from tests.conftest import login

    response = login(alice).post(
        f"/orgs/{acme.slug}/members/invite/", {"email": charlie.email, "role": "viewer"}
    )
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    link = response.context["link"]
    path = link.split("testserver", 1)[1]

    as_charlie = login(charlie)
    assert as_charlie.get(path).status_code == 200
    assert as_charlie.post(path).status_code == 302
    assert Membership.objects.get(org=acme, user=charlie).role == Role.VIEWER
    assert as_charlie.get(path).status_code == 404


def test_a_developer_cannot_invite(acme, bob):
    from tests.conftest import login

    response = login(bob).post(
        f"/orgs/{acme.slug}/members/invite/", {"email": "z@example.com", "role": "developer"}
    )
    assert response.status_code == 404
    assert not acme.invitations.exists()
