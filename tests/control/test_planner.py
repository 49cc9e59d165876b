"""The placement planner on its own: plain data in, decisions out, no database.

No test here asks for the `db` fixture, so pytest-django refuses any query; the demo
world comes from `backends.world` (pure Python), not from the catalog's tables. The
rules themselves are tested on hand-made inputs in `test_placement.py`; these tests pin
the planner's purity and the parts of applying a plan that are decisions too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backends.planner import (
    LOAD,
    MAX_UNLOADS_PER_RUN,
    UNLOAD,
    Action,
    Room,
    Site,
    accelerators_for,
    placement_plan,
    unrecorded,
)
from backends.world import WorldSpec, cold_start_s, demo_world

ROOT = Path(__file__).resolve().parents[2]
SEVENTY_B = "llama-3.3-70b-instruct"
KOREA_70B = f"koreacentral-tesseract-nvidia-h100--{SEVENTY_B}"


def world_sites(world: WorldSpec, *, unloaded: set[str]) -> list[Site]:
    """The planner's view of the demo world, every copy loaded but `unloaded`."""
    return [
        Site(
            slug=d.slug,
            cluster=d.cluster,
            region=world.clusters[d.cluster].region,
            model=d.model,
            loaded=d.slug not in unloaded,
            slots=d.concurrency_slots,
            accelerators=accelerators_for(world.models[d.model].parameters_b),
            cold_start_s=cold_start_s(world.models[d.model].parameters_b),
        )
        for d in world.deployments.values()
    ]


def test_the_planner_imports_no_framework_no_database_and_no_service():
    # A fresh interpreter without Django settings: importing the planner must not pull
    # in Django, Redis, an HTTP client, billing or the placement service.
    code = (
        "import json, sys; import backends.planner; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'redis', 'httpx', 'celery', 'billing', 'routing', 'accounts'} "
        "or m in {'backends.models', 'backends.placement', 'backends.simulator'})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )

    assert json.loads(done.stdout) == []


def test_from_the_world_spec_alone_demand_from_korea_loads_the_70b_in_korea():
    world = demo_world()
    sites = world_sites(world, unloaded={KOREA_70B})
    capacity = {slug: c.accelerators for slug, c in world.clusters.items()}

    plan = placement_plan(
        demand={("koreacentral", SEVENTY_B): 600},
        served={},
        sites=sites,
        capacity=capacity,
        rtt=world,  # the world spec's median RTTs: an RttMap like the engine's
        now=1_000_000.0,
        home_region="westeurope",
    )

    loads = [a for a in plan.actions if a.kind == LOAD]
    assert [a.slug for a in loads] == [KOREA_70B]
    assert "600 from koreacentral" in loads[0].reason
    assert f"cold start ~{cold_start_s(70):.0f} s" in loads[0].reason
    # The idle copies go a few at a time, and every model keeps a copy.
    unloaded = {a.slug for a in plan.actions if a.kind == UNLOAD}
    assert 0 < len(unloaded) <= MAX_UNLOADS_PER_RUN
    assert plan.deferred
    for model in world.models:
        copies = {s.slug for s in sites if s.model == model and s.loaded}
        assert copies - unloaded, f"the last copy of {model} was unloaded"


def test_a_load_finds_no_room_when_the_unload_it_counted_on_was_not_applied():
    big = Site("fc--405b", "fc", "francecentral", "405b", True, 128, 21, 212.5)
    seventy = Site("fc--70b", "fc", "francecentral", "70b", False, 128, 4, 45.0)
    room = Room.of([big, seventy], {"fc": 24})

    assert not room.fits(seventy)  # the 405B still holds 21 of 24
    room.applied(big, UNLOAD)
    assert room.fits(seventy)
    room.applied(seventy, LOAD)
    assert room.used == {"fc": 4}


def test_a_recommendation_already_standing_is_not_recorded_again():
    load = Action(slug="fc--70b", kind=LOAD, benefit=120.0, reason="load")
    unload = Action(slug="jp--8b", kind=UNLOAD, benefit=0.0, reason="unload")
    other_kind = Action(slug="jp--8b", kind=LOAD, benefit=150.0, reason="load")

    fresh, standing = unrecorded([load, unload, other_kind], [("jp--8b", UNLOAD)])

    assert fresh == [load, other_kind]
    assert standing == ["jp--8b"]
