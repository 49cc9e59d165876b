"""What admission reserves and settles for a candidate: the drain's rule, at the right time."""

from __future__ import annotations

from decimal import Decimal as D

from backends.snapshot import Endpoint
from billing import limits, rating
from routing.gateway.admission import rate, rates_from

T0 = 1_800_000_000.0
LISTED = rating.Price(D("5"), D("7"))
LATER = rating.Price(D("50"), D("70"))


def _endpoint(**options) -> Endpoint:
    return Endpoint(
        backend_id="b", url="http://b/v1", adapter="openai", model="m", region="r",
        cluster="c", chip="h100", price_input_per_mtok=1.0, price_output_per_mtok=2.0,
        certifications=(), jurisdictions=(), **options,
    )  # fmt: skip


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
    from types import SimpleNamespace

    from routing.gateway.admission import _Tariffs

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
