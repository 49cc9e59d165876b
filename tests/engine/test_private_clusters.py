"""Private clusters in the engine: an organization's own backends join the public ones
for its requests, and for every other organization they do not exist."""

from __future__ import annotations

import json
from dataclasses import replace

from routing.engine import Health, Request, route
from tests.engine.mini_world import make_backend, make_snapshot

ALICE, BOB = 1, 2


def req(**kw) -> Request:
    base = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10}
    base["client_region"] = "paris"
    return Request(**(base | kw))


def world():
    public = make_backend("public-frankfurt", "frankfurt")
    # Alice's own box sits where the client is: the fastest backend of all.
    mine = replace(make_backend("alice-paris", "paris"), org_id=ALICE)
    only_mine = replace(make_backend("alice-custom", "paris", model="m-custom"), org_id=ALICE)
    return make_snapshot(public, mine, only_mine)


def test_an_organizations_private_backend_is_a_candidate_for_its_own_requests():
    plan = route(world(), req(org_id=ALICE))
    assert plan.primary.backend_id == "alice-paris"
    assert plan.considered == 2


def test_another_organization_never_sees_the_private_backend_in_its_plan():
    for org in (BOB, None):
        plan = route(world(), req(org_id=org))
        assert plan.primary.backend_id == "public-frankfurt"
        assert plan.considered == 1
        text = json.dumps(plan.to_dict(), default=str)
        assert "alice" not in text


def test_a_model_served_only_privately_looks_nonexistent_to_other_organizations():
    nothing = route(world(), req(model="m-nonexistent", org_id=BOB))
    hidden = route(world(), req(model="m-custom", org_id=BOB))
    assert hidden.infeasible.code == nothing.infeasible.code == "model_not_served"
    assert hidden.infeasible.detail == nothing.infeasible.detail.replace(
        "m-nonexistent", "m-custom"
    )
    assert hidden.considered == nothing.considered == 0
    assert route(world(), req(model="m-custom", org_id=ALICE)).primary.backend_id == "alice-custom"


def test_an_infeasible_plan_for_another_organization_names_no_private_backend():
    plan = route(world(), req(org_id=BOB, max_ttft_ms=1.0))
    assert plan.status == "infeasible"
    assert plan.infeasible.best_backend_id == "public-frankfurt"
    assert "alice" not in json.dumps(plan.to_dict(), default=str)


def test_private_backends_obey_the_same_policy_filters():
    plan = route(world(), req(org_id=ALICE, allowed_countries=frozenset({"DE"})))
    assert plan.primary.backend_id == "public-frankfurt"
    assert plan.reason_for("alice-paris").code == "residency"


def test_fallback_models_never_reach_another_organizations_private_model():
    plan = route(world(), req(model="m-405b", org_id=BOB, fallback_models=("m-custom",)))
    assert plan.status == "infeasible"


def test_models_for_lists_private_models_only_to_their_owner():
    snap = world()
    assert snap.models == snap.models_for(BOB) == frozenset({"m-70b"})
    assert snap.models_for(ALICE) == frozenset({"m-70b", "m-custom"})
    assert snap.visible("alice-paris", ALICE)
    assert not snap.visible("alice-paris", BOB)


def test_load_counters_reach_the_private_index_the_organization_routes_on():
    snap = world()
    # Alice's box is full: her requests go to the public backend instead.
    loaded = snap.with_load({"alice-paris": (10, 10)}, models=("m-70b",), org_id=ALICE)
    plan = route(loaded, req(org_id=ALICE))
    assert plan.primary.backend_id == "public-frankfurt"
    assert plan.reason_for("alice-paris").code == "capacity"
    # Without an org every index of the model is refreshed, the private ones included.
    everywhere = snap.with_load({"alice-paris": (10, 10)})
    assert route(everywhere, req(org_id=ALICE)).primary.backend_id == "public-frankfurt"


def test_public_load_reaches_both_the_public_and_the_private_indexes():
    snap = world().with_load({"public-frankfurt": (10, 10)})
    assert route(snap, req(org_id=BOB)).status == "infeasible"
    assert route(snap, req(org_id=ALICE)).primary.backend_id == "alice-paris"


def test_an_organization_routes_on_its_index_exactly_as_if_its_backends_were_public():
    backends = [
        make_backend("public-frankfurt", "frankfurt", in_flight=3),
        make_backend("public-virginia", "virginia", health=Health.DEGRADED),
        replace(make_backend("alice-paris", "paris", queued=2, slots=1), org_id=ALICE),
        replace(make_backend("alice-tokyo", "tokyo"), org_id=ALICE),
    ]
    as_public = make_snapshot(*(replace(b, org_id=None) for b in backends))
    for r in (req(), req(max_ttft_ms=150.0), req(client_region="tokyo", input_tokens=20_000)):
        mine = route(make_snapshot(*backends), replace(r, org_id=ALICE)).to_dict()
        public = route(as_public, r).to_dict()
        for plan in (mine, public):
            plan.pop("snapshot_version", None)
            # (listed in index order: public backends first, then the organization's)
            plan["excluded"] = sorted(plan.get("excluded", []), key=lambda e: e["backend_id"])
        assert mine == public
