"""The one way a dashboard page learns its organization.

`@org_view("permission")` signs the user in, resolves the `org_slug` of the URL
through `accounts.selectors.access_membership` (a stranger's organization, or one the
member's role may not use this way, is a 404: it does not exist for them), and calls
the view with the membership. The view then reads only through the org it was
handed (`for_org` querysets, `access_*` selectors): there is no other source of an
organization for a page, so a forgotten filter has nothing to leak from.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse

from accounts import selectors
from accounts.models import Membership, User

OrgView = Callable[..., HttpResponse]


def org_view(permission: str = "view") -> Callable[[OrgView], OrgView]:
    def wrap(view: OrgView) -> OrgView:
        @login_required
        @functools.wraps(view)
        def inner(request: HttpRequest, org_slug: str, **kwargs: Any) -> HttpResponse:
            user = request.user
            assert isinstance(user, User)  # login_required ran first
            membership = selectors.access_membership(
                user=user, org_slug=org_slug, permission=permission
            )
            return view(request, membership, **kwargs)

        return inner

    return wrap


def nav_context(membership: Membership, active: str) -> dict[str, Any]:
    """What every org page's navigation needs (no query: the membership has its org)."""
    return {"org": membership.org, "membership": membership, "active": active}
