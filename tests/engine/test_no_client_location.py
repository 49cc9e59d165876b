"""A request without a client location (the openai SDK's default call) comes from the
gateway: the gateway's round trip to each backend is counted (issue 8)."""

from dataclasses import dataclass
from decimal import Decimal

import pytest

from routing.engine import LiveState, Profile, Request, Snapshot, build_backend, route
from tests.engine.mini_world import LATENCY, PROFILE, make_backend

#: A fast chip: 5 ms to the first token for the reference prompt.
FAST = Profile(
    ttft_ms=5.0,
    reference_prompt_tokens=1000,
    prefill_tokens_per_s=1_000_000.0,
    decode_tokens_per_s=1000.0,
    price_input_per_mtok=1.0,
    price_output_per_mtok=2.0,
)
#: A slower one: 40 ms.
SLOW = Profile(
    ttft_ms=40.0,
    reference_prompt_tokens=1000,
    prefill_tokens_per_s=100_000.0,
    decode_tokens_per_s=100.0,
    price_input_per_mtok=1.0,
    price_output_per_mtok=2.0,
)


def snapshot_at(gateway, *backends):
    return Snapshot(backends, LATENCY, 1, gateway_region=gateway)


def ask(**kw):
    return Request(**({"model": "m-70b", "input_tokens": 1000, "max_output_tokens": 10} | kw))


def test_without_a_client_location_the_gateways_round_trip_is_counted():
    snap = snapshot_at("paris", make_backend("tok", "tokyo"))
    plan = route(snap, ask())
    assert plan.primary.prediction.rtt_ms == 220.0  # paris -> tokyo
    assert plan.primary.prediction.ttft_ms == pytest.approx(220.0 + 105.0)


def test_a_tight_deadline_without_location_stays_near_the_gateway_not_on_a_faster_far_chip():
    # From a Paris gateway, the Virginia chip is 35 ms faster but 80 ms away: with the
    # network counted, only the Paris backend meets 50 ms.
    snap = snapshot_at(
        "paris",
        make_backend("us-fast", "virginia", profile=FAST),
        make_backend("eu-slow", "paris", profile=SLOW),
    )
    plan = route(snap, ask(max_ttft_ms=50.0))
    assert plan.status == "ok"
    assert plan.primary.backend_id == "eu-slow"
    assert plan.primary.prediction.ttft_ms <= 50.0
    assert plan.reason_for("us-fast").code == "sla_ttft"


def test_a_given_client_location_wins_over_the_gateway_region():
    snap = snapshot_at("paris", make_backend("tok", "tokyo"), make_backend("par", "paris"))
    plan = route(snap, ask(client_region="tokyo", max_ttft_ms=150.0))
    assert plan.primary.backend_id == "tok"
    assert plan.primary.prediction.rtt_ms == 1.0


def test_nearest_without_location_picks_the_backend_nearest_the_gateway():
    snap = snapshot_at("virginia", make_backend("par", "paris"), make_backend("ore", "oregon"))
    assert route(snap, ask(), "nearest").primary.backend_id == "ore"  # 60 ms vs 80 ms


def test_new_load_and_another_gateway_keep_or_change_the_origin_as_asked():
    snap = snapshot_at("paris", make_backend("tok", "tokyo"))
    loaded = snap.with_load({"tok": (3, 0)})
    assert loaded.gateway_region == "paris"
    assert route(loaded, ask()).primary.prediction.rtt_ms == 220.0
    moved = snap.at_gateway("oregon")
    assert moved.gateway_region == "oregon"
    assert snap.gateway_region == "paris"
    assert route(moved, ask()).primary.prediction.rtt_ms == 100.0


@dataclass
class _Row:
    """Stands for a catalog row: prices are Decimals there."""

    ttft_ms: float = 105.0
    reference_prompt_tokens: int = 1000
    prefill_tokens_per_s: float = 10_000.0
    decode_tokens_per_s: float = 100.0
    price_input_per_mtok: Decimal = Decimal("1.0")
    price_output_per_mtok: Decimal = Decimal("2.0")


def test_one_builder_makes_the_same_backend_from_a_row_and_from_a_spec():
    common = {"id": "a", "model": "m-70b", "region": "paris", "country": "FR",
              "concurrency_slots": 10, "jurisdictions": {"FR", "EU"}}  # fmt: skip
    from_row = build_backend(figures=_Row(), certifications=("SOC2", "gdpr"), **common)
    from_spec = build_backend(figures=PROFILE, certifications=("soc2", "GDPR"), **common)
    assert from_row == from_spec
    assert from_row.profile == PROFILE
    assert from_row.certifications == frozenset({"soc2", "gdpr"})
    assert from_row.state == LiveState()
