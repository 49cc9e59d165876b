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
