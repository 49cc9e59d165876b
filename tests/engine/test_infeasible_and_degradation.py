"""Nothing fits: an honest answer, or the degradation the request allows."""

import json

import pytest

from routing.engine import Health, Profile, Request, route
from tests.engine.mini_world import make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}


def world():
    return make_snapshot(
        make_backend("70b-paris"),
        make_backend("70b-virginia", "virginia", certs={"soc2", "hipaa"}),
        make_backend(
            "8b-paris", model="m-8b", profile=Profile(10.0, 1000, 200_000.0, 1000.0, 0.1, 0.1)
        ),
    )


def test_an_impossible_ttft_names_the_sla_and_the_best_achievable():
    plan = route(world(), Request(**BASE, max_ttft_ms=50))
    assert plan.status == "infeasible"
    assert plan.primary is None
    inf = plan.infeasible
    assert inf.code == "sla_ttft"
    assert inf.best_ttft_ms == pytest.approx(106.0)  # 1 ms network + 105 ms prefill in Paris
    assert inf.best_total_ms == pytest.approx(206.0)
    assert inf.best_backend_id == "70b-paris"
    assert "within 50" in inf.detail
    assert "106 ms" in inf.detail


def test_a_latency_bound_alone_is_named_sla_latency():
    plan = route(world(), Request(**BASE, max_ttft_ms=500, max_latency_ms=150))
    assert plan.infeasible.code == "sla_latency"


def test_compliance_that_no_backend_meets_is_the_binding_constraint():
    plan = route(world(), Request(**BASE, compliance=frozenset({"fedramp"})))
    assert plan.infeasible.code == "compliance"
    assert plan.infeasible.best_ttft_ms is None  # nothing is policy-allowed


def test_compliance_and_residency_together_name_the_one_that_emptied_the_set():
    plan = route(
        world(),
        Request(**BASE, compliance=frozenset({"hipaa"}), allowed_jurisdictions=frozenset({"EU"})),
    )
    assert plan.infeasible.code == "residency"


def test_every_backend_down_is_named_down():
    snap = make_snapshot(
        make_backend("a", health=Health.DOWN), make_backend("b", health=Health.DOWN)
    )
    assert route(snap, Request(**BASE)).infeasible.code == "down"


def test_all_queues_full_is_named_capacity_and_still_reports_the_best_latency():
    snap = make_snapshot(make_backend("a", slots=1, in_flight=1, queued=1, max_queue=1))
    plan = route(snap, Request(**BASE))
    assert plan.infeasible.code == "capacity"
    assert plan.infeasible.best_ttft_ms is not None


def test_an_infeasible_plan_still_explains_every_candidate():
    plan = route(world(), Request(**BASE, max_ttft_ms=50))
    codes = {e.backend_id: e.code for e in plan.exclusions}
    assert codes == {"70b-paris": "sla_ttft", "70b-virginia": "sla_ttft"}
    json.dumps(plan.to_dict(), allow_nan=False)


def test_a_named_fallback_model_serves_when_the_model_asked_cannot():
    req = Request(**BASE, max_ttft_ms=50, fallback_models=("m-405b", "m-8b"))
    plan = route(world(), req)
    assert plan.status == "degraded"
    assert plan.model == "m-8b"
    assert plan.primary.backend_id == "8b-paris"
    assert plan.degraded.kind == "fallback_model"
    assert (plan.degraded.from_model, plan.degraded.to_model) == ("m-70b", "m-8b")
    assert plan.degraded.reason.code == "sla_ttft"


def test_a_fallback_model_never_relaxes_compliance_or_residency():
    req = Request(**BASE, compliance=frozenset({"hipaa"}), fallback_models=("m-8b",))
    plan = route(world(), req)
    assert plan.primary.backend_id == "70b-virginia"  # the 70b that has hipaa
    req = Request(
        **BASE, compliance=frozenset({"hipaa"}), max_ttft_ms=50, fallback_models=("m-8b",)
    )
    assert route(world(), req).status == "infeasible"


def test_a_relaxed_deadline_serves_the_fastest_allowed_backend_late_and_says_so():
    req = Request(**BASE, max_ttft_ms=50, allow_relaxed_deadline=True)
    plan = route(world(), req)
    assert plan.status == "degraded"
    assert plan.degraded.kind == "relaxed_deadline"
    assert plan.primary.backend_id == "70b-paris"
    assert plan.primary.meets_sla is False


def test_fallback_models_come_before_relaxing_the_deadline():
    req = Request(**BASE, max_ttft_ms=50, allow_relaxed_deadline=True, fallback_models=("m-8b",))
    assert route(world(), req).degraded.kind == "fallback_model"


def test_a_relaxed_deadline_does_not_rescue_a_compliance_failure():
    req = Request(**BASE, compliance=frozenset({"fedramp"}), allow_relaxed_deadline=True)
    assert route(world(), req).status == "infeasible"


# --------------------------------------------------------------------------- outages


def eu_out_us_up(*eu_states: dict):
    """EU backends in the given states (paris, paris, frankfurt, ...), one healthy in Virginia."""
    regions = ["paris", "paris", "frankfurt", "frankfurt"]
    eu = [make_backend(f"eu-{n}", regions[n], **s) for n, s in enumerate(eu_states)]
    return make_snapshot(*eu, make_backend("us", "virginia"))


EU_ONLY = {**BASE, "allowed_jurisdictions": frozenset({"EU"})}


def test_a_region_whose_backends_are_all_drained_or_down_is_an_outage_not_the_policy():
    snap = eu_out_us_up({"drained": True}, {"drained": True}, {"health": Health.DOWN})
    plan = route(snap, Request(**EU_ONLY))
    inf = plan.infeasible
    assert inf.code == "drained"  # the most common reason among the allowed backends
    assert "every backend of m-70b in EU is out" in inf.detail
    assert "2 drained by an operator" in inf.detail
    assert "1 DOWN" in inf.detail
    assert inf.unavailable == ("eu-0", "eu-1", "eu-2")
    assert inf.to_dict()["unavailable"] == ["eu-0", "eu-1", "eu-2"]


def test_a_policy_that_matches_no_backend_at_all_is_still_the_policy_when_others_are_down():
    snap = make_snapshot(
        make_backend("a", health=Health.DOWN), make_backend("b", "virginia", drained=True)
    )
    plan = route(snap, Request(**BASE, compliance=frozenset({"fedramp"})))
    assert plan.infeasible.code == "compliance"
    assert plan.infeasible.unavailable == ()
    plan = route(snap, Request(**BASE, allowed_countries=frozenset({"JP"})))
    assert plan.infeasible.code == "residency"


def test_a_deployment_resting_after_its_providers_429_is_named_cooling():
    snap = eu_out_us_up({"out": "cooling"}, {"health": Health.DOWN})
    plan = route(snap, Request(**EU_ONLY))
    assert plan.reason_for("eu-0").code == "cooling"
    assert "429" in plan.reason_for("eu-0").detail
    assert plan.infeasible.code in ("cooling", "down")
    assert "1 resting after its provider's 429" in plan.infeasible.detail


def test_a_deployment_whose_provider_rejected_our_credential_is_named_provider_out():
    snap = eu_out_us_up({"out": "provider_out"})
    plan = route(snap, Request(**EU_ONLY))
    assert plan.reason_for("eu-0").code == "provider_out"
    assert "credential" in plan.reason_for("eu-0").detail
    assert plan.infeasible.code == "provider_out"
    assert plan.infeasible.unavailable == ("eu-0",)


def test_allowed_backends_that_are_full_or_down_are_named_capacity_and_listed():
    snap = eu_out_us_up(
        {"health": Health.DOWN}, {"in_flight": 10, "queued": 10}, {"in_flight": 10, "queued": 10}
    )
    inf = route(snap, Request(**EU_ONLY)).infeasible
    assert inf.code == "capacity"
    assert "2 with a full queue" in inf.detail
    assert "1 DOWN" in inf.detail
    assert inf.unavailable == ("eu-0", "eu-1", "eu-2")


def test_an_sla_that_healthy_allowed_backends_cannot_meet_stays_an_sla_failure():
    snap = eu_out_us_up({"drained": True}, {})
    inf = route(snap, Request(**EU_ONLY, max_ttft_ms=50)).infeasible
    assert inf.code == "sla_ttft"
    assert inf.unavailable == ()
