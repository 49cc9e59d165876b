"""What the tenancy filters need to know of a tenant and a person, below the models.

`querysets.py` filters rows by an organization and organizations by a user, and
`models.py` attaches those querysets to its models. Had the querysets named the models
in their signatures, the two modules would import each other; they name these shapes
instead, which `Organization` and `User` (and Django's `AnonymousUser`) satisfy as
they are. Nothing here imports Django.
"""

from __future__ import annotations

from typing import Any, Protocol


class Tenant(Protocol):
    """An organization, as `for_org()` filters on it (by primary key)."""

    @property
    def pk(self) -> Any: ...


class Person(Protocol):
    """A signed-in user or an anonymous visitor, as `for_user()` sees them."""

    @property
    def is_authenticated(self) -> bool: ...
