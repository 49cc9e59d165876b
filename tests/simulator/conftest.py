from __future__ import annotations

import pytest

from backends.world import WorldSpec, demo_world


@pytest.fixture(scope="session")
def world() -> WorldSpec:
    return demo_world()
