"""Hard filters: each one alone, with its reason code and its sentence."""

from routing.engine import Health, Request, route
from tests.engine.mini_world import make_backend, make_snapshot


def req(**kw) -> Request:
    base = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10}
    base["client_region"] = "paris"
    return Request(**(base | kw))


def test_a_backend_serving_another_model_is_never_a_candidate():
    snap = make_snapshot(make_backend("a", model="m-8b"), make_backend("b", model="m-70b"))
    plan = route(snap, req())
    assert plan.primary.backend_id == "b"
    assert [c.backend_id for c in plan.choices] == ["b"]


def test_a_model_nobody_serves_is_infeasible_with_model_not_served():
    plan = route(make_snapshot(make_backend("a")), req(model="m-405b"))
    assert plan.status == "infeasible"
    assert plan.infeasible.code == "model_not_served"


def test_a_backend_where_the_model_is_not_loaded_is_excluded():
    snap = make_snapshot(make_backend("a", loaded=False), make_backend("b", "frankfurt"))
    plan = route(snap, req())
    assert plan.primary.backend_id == "b"
    assert plan.reason_for("a").code == "not_loaded"


def test_a_drained_backend_is_excluded():
    snap = make_snapshot(make_backend("a", drained=True), make_backend("b", "frankfurt"))
    plan = route(snap, req())
    assert plan.primary.backend_id == "b"
    assert plan.reason_for("a").code == "drained"


def test_a_down_backend_is_excluded():
    snap = make_snapshot(make_backend("a", health=Health.DOWN), make_backend("b", "frankfurt"))
    plan = route(snap, req())
    assert plan.primary.backend_id == "b"
    assert plan.reason_for("a") == ("a", "down", "health: DOWN")


def test_a_request_needing_hipaa_skips_a_backend_without_it():
    snap = make_snapshot(
        make_backend("eu", "paris", certs={"soc2"}),
        make_backend("us", "virginia", certs={"soc2", "hipaa"}),
    )
    plan = route(snap, req(compliance=frozenset({"hipaa"})))
    assert plan.primary.backend_id == "us"
    assert plan.reason_for("eu").code == "compliance"
    assert plan.reason_for("eu").detail == "compliance: missing hipaa"


def test_every_compliance_tag_is_required_not_any_of_them():
    snap = make_snapshot(
        make_backend("only-hipaa", "virginia", certs={"hipaa"}),
        make_backend("both", "oregon", certs={"hipaa", "soc2"}),
    )
    plan = route(snap, req(compliance=frozenset({"hipaa", "soc2"})))
    assert [c.backend_id for c in plan.choices] == ["both"]
    assert plan.reason_for("only-hipaa").detail == "compliance: missing soc2"


def test_an_eu_only_request_never_gets_a_us_backend():
    snap = make_snapshot(make_backend("us", "virginia"), make_backend("eu", "frankfurt"))
    plan = route(snap, req(client_region="virginia", allowed_jurisdictions=frozenset({"EU"})))
    assert [c.backend_id for c in plan.choices] == ["eu"]
    assert plan.reason_for("us").detail == "residency: region virginia (US) not in EU"


def test_allowed_countries_and_regions_each_restrict():
    snap = make_snapshot(
        make_backend("fr", "paris"), make_backend("de", "frankfurt"), make_backend("us", "oregon")
    )
    by_country = route(snap, req(allowed_countries=frozenset({"DE"})))
    assert [c.backend_id for c in by_country.choices] == ["de"]
    by_region = route(snap, req(allowed_regions=frozenset({"oregon"})))
    assert [c.backend_id for c in by_region.choices] == ["us"]
    assert by_region.reason_for("fr").detail == "residency: region paris not in oregon"


def test_a_full_queue_excludes_a_backend_for_capacity():
    snap = make_snapshot(
        make_backend("full", slots=2, max_queue=3, in_flight=2, queued=3),
        make_backend("free", "frankfurt"),
    )
    plan = route(snap, req())
    assert plan.primary.backend_id == "free"
    assert plan.reason_for("full").code == "capacity"


def test_max_price_is_the_blended_price_of_this_request():
    cheap_in = make_backend("a")  # $1 in, $2 out
    snap = make_snapshot(cheap_in)
    # 1000 in + 1000 out: blended (1000·1 + 1000·2) / 2000 = 1.5 USD per 1M tokens
    ok = route(snap, req(max_output_tokens=1000, max_price_per_mtok=1.5))
    assert ok.primary.price_per_mtok == 1.5
    too_dear = route(snap, req(max_output_tokens=1000, max_price_per_mtok=1.49))
    assert too_dear.status == "infeasible"
    assert too_dear.infeasible.code == "price"
    assert too_dear.reason_for("a").code == "price"


def test_an_unknown_client_to_backend_path_is_unreachable_not_zero():
    snap = make_snapshot(make_backend("a"))
    plan = route(snap, req(client_region="mars"))
    assert plan.status == "infeasible"
    assert plan.infeasible.code == "unreachable"


def test_the_first_failing_filter_is_the_reason_given():
    snap = make_snapshot(
        make_backend("a", "virginia", certs=set(), health=Health.DOWN), make_backend("b")
    )
    plan = route(
        snap, req(compliance=frozenset({"hipaa"}), allowed_jurisdictions=frozenset({"EU"}))
    )
    assert plan.reason_for("a").code == "down"
    assert plan.reason_for("b").code == "compliance"


def test_baselines_apply_the_hard_filters_too():
    snap = make_snapshot(make_backend("us", "virginia"), make_backend("eu", "frankfurt"))
    for name in ("nearest", "round_robin", "least_loaded", "lowest_latency", "cheapest", "seed"):
        for _ in range(3):
            plan = route(
                snap, req(client_region="virginia", allowed_jurisdictions=frozenset({"EU"})), name
            )
            assert plan.primary.backend_id == "eu", name
