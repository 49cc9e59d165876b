"""Placement: load models where the demand is, unload them where it is not.

The planner is a pure function, tested on hand-made inputs; the service runs against
the database, a real Redis and the real simulator served on loopback.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import httpx
import pytest
import redis
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import Organization, User
from accounts.services import backup_codes_regenerate
from backends.demo import demo_world_load
from backends.models import ControlSettings, Deployment, PlacementAction
from backends.placement import LOCK_KEY, demand_by_region, placement_run, served_by_deployment
from backends.planner import (
    COOLDOWN_S,
    LOAD,
    UNLOAD,
    LastAction,
    Rules,
    Site,
    accelerators_for,
    placement_plan,
)
from backends.signals import WORLD_CHANNEL
from backends.simulator import create_app
from backends.tasks.placement import run_placement
from backends.world import WorldSpec, demo_world
from billing.models import UsageEvent
from routing.engine import LatencyMap
from tests.conftest import login
from tests.pubsub import next_message
from tests.servers import serve

# --------------------------------------------------------------------------- the planner

M8, M70, M405 = "llama-8b", "llama-70b", "llama-405b"
NOW = 1_000_000.0
WINDOW = Rules(window_s=900.0)

#: Made-up but plausible round trips between a few European sites and Tokyo.
RTT = LatencyMap(
    rtt={
        ("francecentral", "westeurope"): 13.0,
        ("francecentral", "switzerlandnorth"): 6.0,
        ("francecentral", "uksouth"): 9.0,
        ("francecentral", "japaneast"): 230.0,
        ("westeurope", "switzerlandnorth"): 15.0,
        ("westeurope", "japaneast"): 240.0,
        ("switzerlandnorth", "japaneast"): 235.0,
    },
    intra_region_ms=1.0,
)
CLUSTERS = {"we": 32, "fc": 32, "ch": 32, "uk": 32, "jp": 32}
REGION = {
    "we": "westeurope",
    "fc": "francecentral",
    "ch": "switzerlandnorth",
    "uk": "uksouth",
    "jp": "japaneast",
}
SIZE = {M8: 8, M70: 70, M405: 405}
COLD = {M8: 14.0, M70: 45.0, M405: 212.5}


def site(cluster: str, model: str, *, loaded: bool, routable: bool = True, slots: int = 128):
    return Site(
        slug=f"{cluster}--{model}",
        cluster=cluster,
        region=REGION[cluster],
        model=model,
        loaded=loaded,
        slots=slots,
        accelerators=accelerators_for(SIZE[model]),
        cold_start_s=COLD[model],
        routable=routable,
    )


def plan(demand, sites, *, capacity=None, history=None, now=NOW, rules=WINDOW, served=None):
    return placement_plan(
        demand=demand,
        served=served,
        sites=sites,
        capacity=CLUSTERS if capacity is None else capacity,
        rtt=RTT,
        history=history,
        now=now,
        rules=rules,
        home_region="westeurope",
    )


def kinds(p) -> list[tuple[str, str]]:
    return [(a.kind, a.slug) for a in p.actions]


def test_a_loaded_model_uses_accelerators_by_its_parameter_count():
    # bf16 weights on half of an 80 GB accelerator: 16 GB, 140 GB, 810 GB of weights.
    assert [accelerators_for(b) for b in (8, 70, 405)] == [1, 4, 21]
    assert accelerators_for(70, memory_gb=192) == 2


def test_every_cluster_of_the_demo_world_holds_what_it_serves():
    world = demo_world()
    used: dict[str, int] = {}
    for d in world.deployments.values():
        size = world.models[d.model].parameters_b
        used[d.cluster] = used.get(d.cluster, 0) + accelerators_for(size)
    assert all(used[slug] <= c.accelerators for slug, c in world.clusters.items())


def test_it_loads_a_model_where_demand_grew():
    sites = [site("we", M70, loaded=True), site("fc", M70, loaded=False)]

    p = plan({("francecentral", M70): 600}, sites)

    assert kinds(p) == [(LOAD, "fc--llama-70b")]
    action = p.actions[0]
    # 40 requests a minute save 12 ms each, warm 95% of the window, over 4 accelerators.
    assert action.benefit == pytest.approx(40 * 12 * (1 - 45 / 900) / 4)
    assert "600 from francecentral (13 ms from we--llama-70b → 1 ms, 12 ms saved each)" in (
        action.reason
    )
    assert action.demand["regions"]["francecentral"]["requests"] == 600


def test_it_does_not_load_for_a_trickle_of_demand():
    sites = [site("we", M70, loaded=True), site("fc", M70, loaded=False)]

    assert plan({("francecentral", M70): 30}, sites).actions == ()


def test_it_does_not_load_a_copy_only_a_little_nearer():
    sites = [site("we", M70, loaded=True), site("uk", M70, loaded=False)]

    # From Paris, UK South is 9 ms away, West Europe 13: 4 ms are not worth a cold start.
    assert plan({("francecentral", M70): 100_000}, sites).actions == ()


def test_it_picks_the_best_benefit_per_accelerator_when_both_do_not_fit():
    sites = [
        site("we", M8, loaded=True),
        site("we", M70, loaded=True),
        site("fc", M8, loaded=False),
        site("fc", M70, loaded=False),
    ]
    demand = {("francecentral", M70): 1200, ("francecentral", M8): 600}

    # The 70B would save twice the latency in all, but uses four accelerators for it.
    p = plan(demand, sites, capacity={**CLUSTERS, "fc": 4})

    assert kinds(p) == [(LOAD, "fc--llama-8b")]
    both = plan(demand, sites)
    assert kinds(both) == [(LOAD, "fc--llama-8b"), (LOAD, "fc--llama-70b")]
    assert both.actions[0].benefit > both.actions[1].benefit


def test_it_respects_the_capacity_of_each_cluster():
    sites = [
        site("we", M70, loaded=True),
        site("fc", M8, loaded=True),  # 1 of 4 accelerators used: no room for a 70B
        site("fc", M70, loaded=False),
        site("ch", M70, loaded=False),
    ]
    demand = {("francecentral", M70): 1200, ("francecentral", M8): 10}

    p = plan(demand, sites, capacity={**CLUSTERS, "fc": 4})

    assert kinds(p) == [(LOAD, "ch--llama-70b")]  # the next nearest, 6 ms from Paris
    assert "Uses 4 of 32 accelerators of ch (28 left)" in p.actions[0].reason


def test_it_counts_a_later_load_against_the_copy_an_earlier_one_placed():
    sites = [
        site("we", M70, loaded=True),
        site("fc", M70, loaded=False),
        site("ch", M70, loaded=False),
    ]

    # Once Paris has its copy, Switzerland North saves Paris nothing more.
    p = plan({("francecentral", M70): 100_000}, sites)

    assert kinds(p) == [(LOAD, "fc--llama-70b")]


def test_a_cold_start_longer_than_the_window_is_not_worth_it():
    sites = [site("we", M405, loaded=True), site("fc", M405, loaded=False)]

    assert plan({("francecentral", M405): 100_000}, sites, rules=Rules(window_s=200)).actions == ()


def test_it_unloads_a_copy_that_no_demand_reaches():
    sites = [site("we", M8, loaded=True), site("fc", M8, loaded=True), site("jp", M8, loaded=True)]
    demand = {("westeurope", M8): 50, ("francecentral", M8): 50}

    p = plan(demand, sites)

    assert kinds(p) == [(UNLOAD, "jp--llama-8b")]
    assert p.actions[0].benefit == 0
    assert (
        "none of the 100 requests for it in the last 15 min ran here or was nearest here; "
        "frees 1 accelerator of jp; still loaded in 2 other places"
    ) in p.actions[0].reason


def test_it_keeps_a_copy_that_requests_ran_on_even_if_another_is_nearer():
    sites = [site("we", M8, loaded=True), site("fc", M8, loaded=True), site("jp", M8, loaded=True)]
    demand = {("westeurope", M8): 50, ("francecentral", M8): 50}

    # Five requests that had to stay in Japan (residency) ran on the Tokyo copy.
    assert plan(demand, sites, served={"jp--llama-8b": 5}).actions == ()


def test_it_never_unloads_the_last_copy_of_a_model():
    two = [site("jp", M405, loaded=True), site("we", M405, loaded=True)]
    one = [site("jp", M405, loaded=True)]

    # Nobody asked for the 405B: the copy nearest the gateway region stays.
    assert kinds(plan({}, two)) == [(UNLOAD, "jp--llama-405b")]
    assert plan({}, one).actions == ()
    # A copy that cannot serve (drained or down) does not count as the other copy.
    drained = [site("we", M405, loaded=True), site("fc", M405, loaded=True, routable=False)]
    assert plan({}, drained).actions == ()


def test_its_loads_may_use_what_its_unloads_free():
    sites = [
        site("we", M70, loaded=True),
        site("fc", M405, loaded=True),  # 21 accelerators nobody asks for...
        site("we", M405, loaded=True),
        site("fc", M70, loaded=False),  # ...in the way of the 70B Paris wants
    ]

    p = plan({("francecentral", M70): 600}, sites, capacity={**CLUSTERS, "fc": 24})

    assert kinds(p) == [(UNLOAD, "fc--llama-405b"), (LOAD, "fc--llama-70b")]


def test_it_unloads_a_few_copies_a_run_but_always_those_a_load_needs_room_from():
    sites = [site(c, M8, loaded=True) for c in ("we", "fc", "ch", "uk", "jp")]
    sites += [site("we", M70, loaded=True), site("jp", M70, loaded=True)]
    sites += [site("fc", M70, loaded=False)]
    demand = {("westeurope", M8): 50, ("francecentral", M70): 600}
    rules = Rules(window_s=900, max_unloads=1)

    # Paris's 8B is idle, and in the way of the 70B Paris asks for: it goes first,
    # beyond the limit of one; of the others, one goes now and the rest wait.
    p = plan(demand, sites, capacity={**CLUSTERS, "fc": 4}, rules=rules)

    assert kinds(p) == [
        (UNLOAD, "fc--llama-8b"),
        (UNLOAD, "jp--llama-70b"),
        (LOAD, "fc--llama-70b"),
    ]
    assert p.deferred == ("ch--llama-8b", "jp--llama-8b", "uk--llama-8b")


def test_it_does_not_flap_within_the_cooldown():
    sites = [site("we", M70, loaded=True), site("fc", M70, loaded=False)]
    demand = {("francecentral", M70): 600}
    unloaded = {"fc--llama-70b": LastAction(UNLOAD, PlacementAction.Status.APPLIED, at=NOW)}

    soon = plan(demand, sites, history=unloaded, now=NOW + 60)
    later = plan(demand, sites, history=unloaded, now=NOW + COOLDOWN_S + 1)

    assert soon.actions == ()
    assert soon.held == ("fc--llama-70b",)
    assert kinds(later) == [(LOAD, "fc--llama-70b")]


def test_a_failed_action_waits_for_the_cooldown_too():
    sites = [site("we", M8, loaded=True), site("jp", M8, loaded=True)]
    failed = {"jp--llama-8b": LastAction(UNLOAD, PlacementAction.Status.FAILED, at=NOW)}

    assert plan({}, sites, history=failed, now=NOW + 60).actions == ()


def test_it_keeps_the_copy_a_just_loaded_one_needs_until_its_cold_start_ends():
    sites = [site("we", M70, loaded=True), site("fc", M70, loaded=True)]
    demand = {("francecentral", M70): 600}
    loaded = {"fc--llama-70b": LastAction(LOAD, PlacementAction.Status.APPLIED, at=NOW)}

    # West Europe serves Paris while the Paris copy loads (45 s); then it is idle.
    assert plan(demand, sites, history=loaded, now=NOW + 10).actions == ()
    assert kinds(plan(demand, sites, history=loaded, now=NOW + 50)) == [(UNLOAD, "we--llama-70b")]


def test_it_neither_loads_nor_unloads_a_drained_deployment():
    sites = [
        site("we", M70, loaded=True),
        site("fc", M70, loaded=False, routable=False),
        site("we", M8, loaded=True),
        site("jp", M8, loaded=True, routable=False),
    ]

    assert plan({("francecentral", M70): 100_000}, sites).actions == ()


def test_a_model_with_no_copy_loads_wherever_demand_is():
    sites = [site("jp", M8, loaded=False), site("fc", M8, loaded=False)]

    p = plan({("francecentral", M8): 20}, sites)

    assert kinds(p) == [(LOAD, "fc--llama-8b")]
    assert "20 from francecentral (no loaded copy → 1 ms" in p.actions[0].reason


# --------------------------------------------------------------------------- the service

#: Simulated time runs 100× faster: the 70B's 45 s cold start takes 0.45 s.
TIME_SCALE = 0.01
M8_SLUG, M70_SLUG = "llama-3.1-8b-instruct", "llama-3.3-70b-instruct"
WE_8B = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
FC_8B = "francecentral-tesseract-nvidia-h100--llama-3.1-8b-instruct"
FC_70B = "francecentral-tesseract-nvidia-h100--llama-3.3-70b-instruct"
WE_70B = "westeurope-tesseract-nvidia-h100--llama-3.3-70b-instruct"
KEEP = {"westeurope-tesseract-nvidia-h100", "francecentral-tesseract-nvidia-h100"}


@pytest.fixture(scope="module")
def small_world() -> WorldSpec:
    """Two hubs of the demo world: West Europe (8B, 70B, 405B) and France Central."""
    world = demo_world()
    regions = {"westeurope", "francecentral"}
    return replace(
        world,
        regions={k: v for k, v in world.regions.items() if k in regions},
        clusters={k: v for k, v in world.clusters.items() if k in KEEP},
        deployments={k: v for k, v in world.deployments.items() if v.cluster in KEEP},
        rtt={k: v for k, v in world.rtt.items() if set(k) <= regions},
    )


@dataclass
class Mesh:
    url: str
    redis: Any

    def control(self, slug: str, **body: Any) -> dict[str, Any]:
        if body:
            response = httpx.post(f"{self.url}/d/{slug}/control", json=body)
        else:
            response = httpx.get(f"{self.url}/d/{slug}/control")
        response.raise_for_status()
        return response.json()


@pytest.fixture
def mesh(db, small_world, settings) -> Iterator[Mesh]:
    """The small world in the catalog and on a simulator; Paris has no 70B loaded, and
    a window of 5 minutes of demand: Paris asks for the 70B, West Europe for the 8B."""
    settings.TESSERACT_PLACEMENT_WINDOW_S = 300
    settings.TESSERACT_GATEWAY_REGION = "westeurope"
    with serve(create_app(small_world, time_scale=TIME_SCALE)) as url:
        demo_world_load(small_world, simulator_url=url)
        m = Mesh(url, redis.Redis.from_url(settings.REDIS_URL))
        m.control(FC_70B, loaded=False)
        Deployment.objects.filter(slug=FC_70B).update(loaded=False)
        requests(600, M70_SLUG, client_region="francecentral")
        requests(100, M8_SLUG)  # no client region: the gateway's, West Europe
        yield m


def requests(n: int, model: str, *, client_region: str | None = None, ago_s: float = 10) -> None:
    """`n` requests for `model`, all served in West Europe."""
    deployment = WE_70B if model == M70_SLUG else WE_8B
    org, _ = Organization.objects.get_or_create(slug="acme", defaults={"name": "Acme"})
    at = timezone.now() - timedelta(seconds=ago_s)
    UsageEvent.objects.bulk_create(
        UsageEvent(
            request_id=uuid.uuid4().hex,
            org=org,
            created_at=at,
            endpoint="chat.completions",
            model=model,
            served_model=model,
            deployment=deployment,
            region="westeurope",
            cluster="westeurope-tesseract-nvidia-h100",
            chip="nvidia-h100",
            input_tokens=10,
            output_tokens=16,
            usage_source="upstream",
            cost_usd=0,
            constraints={"client_region": client_region} if client_region else {},
        )
        for _ in range(n)
    )


def set_mode(mode: str) -> None:
    ControlSettings.objects.update_or_create(pk=1, defaults={"placement_mode": mode})


def test_demand_falls_back_to_the_gateway_region_and_forgets_the_old(db):
    requests(3, M70_SLUG, client_region="francecentral")
    requests(2, M70_SLUG)
    requests(5, M8_SLUG, client_region="francecentral", ago_s=3600)

    demand = demand_by_region(
        since=timezone.now() - timedelta(seconds=900), default_region="westeurope"
    )

    assert demand == {("francecentral", M70_SLUG): 3, ("westeurope", M70_SLUG): 2}
    assert served_by_deployment(since=timezone.now() - timedelta(seconds=900)) == {WE_70B: 5}


def test_recommend_mode_records_the_plan_and_changes_nothing(mesh):
    run = placement_run(client=mesh.redis)

    assert run.mode == "recommend"
    assert [(a.kind, a.deployment.slug, a.status) for a in run.recorded] == [
        (UNLOAD, FC_8B, "recommended"),  # nobody in Paris asked for the 8B
        (LOAD, FC_70B, "recommended"),
    ]
    load = run.recorded[1]
    assert f"600 from francecentral (13 ms from {WE_70B} → 1 ms" in load.reason
    assert load.benefit > 0
    assert load.applied_at is None
    assert not Deployment.objects.get(slug=FC_70B).loaded
    assert Deployment.objects.get(slug=FC_8B).loaded
    assert mesh.control(FC_70B)["availability"] == "unloaded"
    assert mesh.control(FC_8B)["availability"] == "ready"

    again = placement_run(client=mesh.redis)

    assert again.recorded == []
    assert again.standing == [FC_8B, FC_70B]
    assert PlacementAction.objects.count() == 2


def test_apply_mode_loads_the_model_on_the_backend_and_tells_the_gateways(transactional_db, mesh):
    set_mode("apply")
    pubsub = mesh.redis.pubsub()
    pubsub.subscribe(WORLD_CHANNEL)
    next_message(pubsub, "subscribe")  # confirmed: nothing published from now is missed

    run = placement_run(client=mesh.redis)  # commits: the gateways hear of it

    assert [(a.kind, a.deployment.slug, a.status) for a in run.recorded] == [
        (UNLOAD, FC_8B, "applied"),
        (LOAD, FC_70B, "applied"),
    ]
    assert "Applied: the backend reports 'loading'" in run.recorded[1].reason
    assert run.recorded[1].applied_at is not None
    assert Deployment.objects.get(slug=FC_70B).loaded
    assert not Deployment.objects.get(slug=FC_8B).loaded
    assert mesh.control(FC_8B)["availability"] == "unloaded"
    state = mesh.control(FC_70B)
    # Loading when applied (the reason above quotes the backend); its 0.45 s cold start
    # may be over already on a busy machine.
    assert state["availability"] in ("loading", "ready")
    assert state["cold_start_s"] == 45.0
    deadline = time.monotonic() + 30
    while mesh.control(FC_70B)["availability"] == "loading" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mesh.control(FC_70B)["availability"] == "ready"
    assert next_message(pubsub, "message")["data"] == b"changed"
    pubsub.close()


def test_running_the_task_twice_proposes_nothing_new(mesh):
    set_mode("apply")

    first = run_placement()
    second = run_placement()

    assert [a["status"] for a in first["actions"]] == ["applied", "applied"]
    assert second["actions"] == []
    assert PlacementAction.objects.count() == 2
    # The 70B of West Europe stays: Paris's own copy is still in its cold start.
    assert Deployment.objects.get(slug=WE_70B).loaded


def test_a_provider_without_a_control_api_gets_a_failed_action_and_is_left_alone(mesh):
    set_mode("apply")
    Deployment.objects.filter(slug=FC_70B).update(
        adapter=Deployment.Adapter.OPENAI, endpoint_url="https://api.provider.invalid/v1"
    )

    run = placement_run(client=mesh.redis)

    load = next(a for a in run.recorded if a.kind == LOAD)
    assert load.status == "failed"
    assert "has no control API" in load.reason
    assert not Deployment.objects.get(slug=FC_70B).loaded
    again = placement_run(client=mesh.redis)
    assert again.recorded == []
    assert FC_70B in again.plan.held


def test_a_run_while_another_holds_the_lock_does_nothing(mesh):
    lock = mesh.redis.lock(LOCK_KEY, timeout=10)
    assert lock.acquire(blocking=False)
    try:
        run = placement_run(client=mesh.redis)
    finally:
        lock.release()

    assert run.busy
    assert PlacementAction.objects.count() == 0


def test_an_operator_reads_the_actions_and_switches_the_mode_in_the_admin(mesh):
    oscar = User.objects.create_superuser("oscar@example.com")
    TOTPDevice.objects.create(user=oscar, confirmed=True)
    client = login(oscar)
    client.post("/account/2fa/verify/", {"token": backup_codes_regenerate(user=oscar)[0]})
    placement_run(client=mesh.redis)

    listing = client.get("/admin/backends/placementaction/")
    action = PlacementAction.objects.get(kind=LOAD)
    detail = client.get(f"/admin/backends/placementaction/{action.pk}/change/")
    to_settings = client.get("/admin/backends/controlsettings/")
    switched = client.post(to_settings["Location"], {"placement_mode": "apply"})

    assert listing.status_code == 200
    assert FC_70B in listing.content.decode()
    assert "600 from francecentral" in detail.content.decode()
    assert "Save" not in detail.content.decode()  # history is read-only
    assert to_settings.status_code == 302
    assert switched.status_code == 302
    assert ControlSettings.current().placement_mode == "apply"
