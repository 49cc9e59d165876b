"""The demo world served by one simulator for a whole test module, on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.db import transaction

from backends.demo import demo_world_load
from backends.world import WorldSpec, demo_world
from tests.servers import Swappable, serve


@pytest.fixture(scope="module")
def spec() -> WorldSpec:
    return demo_world()


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    swappable = Swappable()
    with serve(swappable) as url:
        yield swappable, url


@pytest.fixture(scope="module")
def catalog(django_db_setup, django_db_blocker, spec, server) -> Iterator[None]:
    """The demo world in the database, pointing at the simulator, once for the module:
    each test runs in a savepoint inside this transaction (and rolls back to it)."""
    with django_db_blocker.unblock(), transaction.atomic():
        demo_world_load(spec, simulator_url=server[1])
        yield
        transaction.set_rollback(True)
