"""The plan: JSON-ready, ranked, with a reason for every candidate that lost."""

import json

import pytest

from routing.engine import Request, route
from tests.engine.mini_world import make_backend, make_snapshot

BASE = {"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10, "client_region": "paris"}


def world():
    return make_snapshot(
        make_backend("paris"),
        make_backend("frankfurt", "frankfurt"),
        make_backend("virginia", "virginia"),
        make_backend("oregon", "oregon"),
        make_backend("tokyo", "tokyo"),
        make_backend("paris-8b", model="m-8b"),
    )


def test_the_plan_is_json_serialisable_with_no_infinities():
    plan = route(world(), Request(**BASE))
    body = json.loads(json.dumps(plan.to_dict(), allow_nan=False))
    assert body["status"] == "ok"
    assert body["strategy"] == "deadline"
    assert body["snapshot_version"] == 1
    assert body["primary"]["backend_id"] == "paris"
    assert set(body["primary"]["predicted"]) == {
        "rtt_ms", "queue_ms", "prefill_ms", "decode_ms", "ttft_ms", "total_ms",
    }  # fmt: skip
    assert body["degraded"] is None
    assert body["infeasible"] is None


def test_fallbacks_are_ordered_and_bounded():
    plan = route(world(), Request(**BASE), max_fallbacks=2)
    assert [c.backend_id for c in plan.choices] == ["paris", "frankfurt", "virginia"]
    totals = [c.prediction.total_ms for c in plan.choices]
    assert totals == sorted(totals)


def test_every_candidate_of_the_model_is_chosen_or_explained_exactly_once():
    plan = route(world(), Request(**BASE, max_ttft_ms=200), max_fallbacks=1)
    chosen = {c.backend_id for c in plan.choices}
    explained = [e.backend_id for e in plan.exclusions]
    assert len(explained) == len(set(explained))
    assert chosen | set(explained) == {"paris", "frankfurt", "virginia", "oregon", "tokyo"}
    assert not chosen & set(explained)
    assert plan.reason_for("virginia").code == "outranked"
    assert plan.reason_for("oregon").code == "sla_ttft"
    assert plan.considered == 5


def test_the_cost_of_the_request_is_predicted_at_list_price():
    plan = route(world(), Request(**BASE))
    assert plan.primary.cost_usd == pytest.approx((1000 * 1.0 + 10 * 2.0) / 1e6)


def test_request_validation_rejects_a_priority_out_of_range():
    with pytest.raises(ValueError, match="priority"):
        Request(**BASE, priority=0)
