"""What admission reserves and settles for a candidate: the drain's rule, at the right time."""

from __future__ import annotations

from decimal import Decimal as D
from types import SimpleNamespace

from backends.snapshot import Endpoint
from billing import limits, rating
from routing.gateway.admission import _Tariffs, rate, rates_from

T0 = 1_800_000_000.0
LISTED = rating.Price(D("5"), D("7"))
LATER = rating.Price(D("50"), D("70"))


def _endpoint(**options) -> Endpoint:
    fields = {
        "backend_id": "b", "url": "http://b/v1", "adapter": "openai", "model": "m",
        "region": "r", "cluster": "c", "chip": "h100", "price_input_per_mtok": 1.0,
        "price_output_per_mtok": 2.0, "certifications": (), "jurisdictions": (),
    }  # fmt: skip
    return Endpoint(**{**fields, **options})


def test_without_a_list_price_a_public_backend_is_billed_at_its_cost_with_the_margin():
    assert rate(_endpoint(), T0) == rating.Price(D("1.0"), D("2.0"))


def test_the_list_price_in_force_when_the_request_completes_is_the_one_billed():
    endpoint = _endpoint(list_prices=((T0, LISTED), (T0 + 60, LATER)))
    assert rate(endpoint, T0 - 1) == rating.Price(D("1.0"), D("2.0"))
    assert rate(endpoint, T0) == limits.Listed(LISTED)
    assert rate(endpoint, T0 + 59.9) == limits.Listed(LISTED)
    assert rate(endpoint, T0 + 60) == limits.Listed(LATER)


def test_a_request_admitted_before_a_scheduled_price_reserves_for_it_too():
    endpoint = _endpoint(list_prices=((T0, LISTED), (T0 + 60, LATER)))
    assert rates_from(endpoint, T0 - 1) == [
        rating.Price(D("1.0"), D("2.0")), limits.Listed(LISTED), limits.Listed(LATER)
    ]  # fmt: skip
    assert rates_from(endpoint, T0 + 1) == [limits.Listed(LISTED), limits.Listed(LATER)]
    assert rates_from(endpoint, T0 + 61) == [limits.Listed(LATER)]


def test_a_private_cluster_pays_the_platform_fee_whatever_the_list_price():
    endpoint = _endpoint(org_id=7, list_prices=((T0, LISTED),))
    assert rate(endpoint, T0 + 1) is limits.PLATFORM_FEE
    assert rates_from(endpoint, T0 - 1) == [limits.PLATFORM_FEE]


def test_remembered_tariffs_follow_a_scheduled_price_when_it_starts():
    lim = limits.Limits("pro", None, None, None, None, None, None, D("20"))
    endpoint = _endpoint(list_prices=((T0 + 60, LATER),))
    world = SimpleNamespace(endpoints={"b": endpoint})
    tariffs = _Tariffs()

    def worst(at: float) -> int:
        return tariffs.worst(world, lim, ["b"], at, input_tokens=1000, output_tokens=0)

    # Before the start: cost × 1.2 ($1.2 per 1M input), but LATER ($50) is reserved for.
    assert worst(T0) == worst(T0 + 59) == 1000 * 50 * 10**6
    assert tariffs.in_force(world, lim, endpoint, T0 + 59) == (0, 1_200_000, 2_400_000)
    assert tariffs.in_force(world, lim, endpoint, T0 + 60) == (0, 50 * 10**6, 70 * 10**6)
    assert worst(T0 + 61) == 1000 * 50 * 10**6
    assert tariffs.in_force(world, lim, endpoint, T0 + 61) == (0, 50 * 10**6, 70 * 10**6)
    assert tariffs.in_force(world, lim, endpoint, T0 + 1) == (0, 1_200_000, 2_400_000)


PRO_FEE = rating.PlatformFee(per_request=D("0.0001"), per_mtok=D("0.05"))
PRO = limits.Limits("pro", None, None, None, None, None, None, D("20"), platform_fee=PRO_FEE)


def _worst_usd(endpoints: dict[str, Endpoint], *backend_ids: str) -> D:
    world = SimpleNamespace(endpoints=endpoints)
    pico = _Tariffs().worst(world, PRO, backend_ids, T0, input_tokens=1000, output_tokens=500)
    return D(pico).scaleb(-12)


def test_the_reservation_is_the_dearest_candidate_s_charge_with_the_tier_margin():
    endpoints = {
        "a": _endpoint(price_input_per_mtok=1.0, price_output_per_mtok=2.0),
        "b": _endpoint(price_input_per_mtok=3.0, price_output_per_mtok=1.0),
    }
    # a: 1.2 per 1M input, 2.4 per 1M output: $0.0024 for 1000 in + 500 out.
    # b: 3.6 and 1.2: $0.0042, the dearest (one candidate serves the request).
    assert _worst_usd(endpoints, "a", "b") == D("0.0042")
    assert _worst_usd(endpoints) == 0


def test_a_private_candidate_counts_its_platform_fee_and_the_dearest_candidate_is_reserved():
    endpoints = {
        "cheap": _endpoint(price_input_per_mtok=0.01, price_output_per_mtok=0.02),  # $0.000024
        "dear": _endpoint(price_input_per_mtok=3.0, price_output_per_mtok=1.0),  # $0.0042
        "own": _endpoint(price_input_per_mtok=9.0, price_output_per_mtok=9.0, org_id=7),
    }
    fee = D("0.0001") + 1500 * D("0.05") / 1_000_000  # $0.000175: its cost is not charged
    assert _worst_usd(endpoints, "own") == fee
    assert _worst_usd(endpoints, "cheap", "own") == fee
    assert _worst_usd(endpoints, "own", "cheap") == fee
    assert _worst_usd(endpoints, "dear", "own", "cheap") == D("0.0042")
