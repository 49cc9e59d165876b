"""An organization always keeps an owner, whatever path a change takes."""

from __future__ import annotations

import pytest
from django.forms.models import inlineformset_factory

from accounts import services
from accounts.admin import MembershipFormSet
from accounts.models import Invitation, Membership, Organization, Role
from tests.conftest import login


def role(org, user) -> str:
    return Membership.objects.get(org=org, user=user).role


def test_accepting_a_viewer_invitation_never_demotes_the_last_owner(acme, alice, bob):
    services.membership_add(org=acme, user=bob, role=Role.ADMIN)
    issued = services.invitation_create(
        org=acme, email=alice.email, role=Role.VIEWER, invited_by=bob
    )
    with pytest.raises(services.AccountsError, match="owner"):
        services.invitation_accept(token=issued.token, user=alice)
    assert role(acme, alice) == Role.OWNER
    assert Invitation.objects.get(pk=issued.invitation.pk).accepted_at is None


def test_the_invitation_page_says_why_it_refuses(acme, alice, bob):
    services.membership_add(org=acme, user=bob, role=Role.ADMIN)
    issued = services.invitation_create(
        org=acme, email=alice.email, role=Role.VIEWER, invited_by=bob
    )
    response = login(alice).post(f"/account/invitations/{issued.token}/")
    assert response.status_code == 400
    assert "owner" in response.content.decode()
    assert role(acme, alice) == Role.OWNER


def test_an_admin_invitation_cannot_demote_one_of_two_owners(acme, alice, bob, charlie):
    services.membership_add(org=acme, user=charlie, role=Role.OWNER)
    services.membership_add(org=acme, user=bob, role=Role.ADMIN)
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.VIEWER, invited_by=bob
    )
    with pytest.raises(services.AccountsError, match="only another owner"):
        services.invitation_accept(token=issued.token, user=charlie)
    assert role(acme, charlie) == Role.OWNER


def test_an_owner_may_invite_a_co_owner_to_step_down(acme, alice, charlie):
    services.membership_add(org=acme, user=charlie, role=Role.OWNER)
    issued = services.invitation_create(
        org=acme, email=charlie.email, role=Role.DEVELOPER, invited_by=alice
    )
    services.invitation_accept(token=issued.token, user=charlie)
    assert role(acme, charlie) == Role.DEVELOPER


def test_the_last_owner_cannot_be_demoted(acme, alice):
    membership = Membership.objects.get(org=acme, user=alice)
    for lower in (Role.ADMIN, Role.DEVELOPER, Role.VIEWER):
        with pytest.raises(services.LastOwnerError, match="last owner of Acme"):
            services.membership_role_set(membership=membership, role=lower)
    assert role(acme, alice) == Role.OWNER


def test_the_last_owner_cannot_be_removed(acme, alice):
    with pytest.raises(services.LastOwnerError):
        services.membership_remove(membership=Membership.objects.get(org=acme, user=alice))
    assert role(acme, alice) == Role.OWNER


def test_with_a_second_owner_the_first_may_step_down_or_leave(acme, alice, bob):
    services.membership_role_set(
        membership=Membership.objects.get(org=acme, user=bob), role=Role.OWNER
    )
    services.membership_role_set(
        membership=Membership.objects.get(org=acme, user=alice), role=Role.VIEWER
    )
    assert role(acme, alice) == Role.VIEWER
    with pytest.raises(services.LastOwnerError):
        services.membership_remove(membership=Membership.objects.get(org=acme, user=bob))
    services.membership_remove(membership=Membership.objects.get(org=acme, user=alice))
    assert list(Membership.objects.filter(org=acme).values_list("user__email", "role")) == [
        (bob.email, Role.OWNER)
    ]


def _admin_formset(org: Organization, changes: dict[int, dict[str, object]]):
    """The admin's inline formset for the org's memberships, with some rows changed."""
    FormSet = inlineformset_factory(
        Organization, Membership, formset=MembershipFormSet, fields=["user", "role"],
        can_delete=True, extra=0,
    )  # fmt: skip
    rows = list(Membership.objects.filter(org=org).order_by("pk"))
    prefix = FormSet.get_default_prefix()
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(len(rows)),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for i, m in enumerate(rows):
        row = {"id": m.pk, "org": org.pk, "user": m.user_id, "role": m.role}
        data.update({f"{prefix}-{i}-{name}": str(value) for name, value in row.items()})
        for field, value in changes.get(m.user_id, {}).items():
            data[f"{prefix}-{i}-{field}"] = value
    return FormSet(data, instance=org, queryset=Membership.objects.filter(org=org).order_by("pk"))


def test_the_admin_refuses_to_demote_or_delete_the_last_owner(acme, alice):
    demote = _admin_formset(acme, {alice.pk: {"role": Role.VIEWER}})
    assert not demote.is_valid()
    assert "at least one owner" in str(demote.non_form_errors())
    delete = _admin_formset(acme, {alice.pk: {"DELETE": "on"}})
    assert not delete.is_valid()
    swap = _admin_formset(acme, {alice.pk: {"role": Role.VIEWER}, **{
        m.user_id: {"role": Role.OWNER} for m in Membership.objects.filter(org=acme)
        if m.user_id != alice.pk
    }})  # fmt: skip
    assert swap.is_valid(), swap.errors
