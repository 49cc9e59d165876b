"""What admission reserves and settles for a candidate: the drain's rule, at the right time."""

from __future__ import annotations

from decimal import Decimal as D

from backends.snapshot import Endpoint
from billing import limits, rating
from routing.gateway.admission import _Tariffs, rate

T0 = 1_800_000_000.0
LISTED = rating.Price(D("5"), D("7"))
LATER = rating.Price(D("50"), D("70"))
PRO_FEE = rating.PlatformFee(per_request=D("0.0001"), per_mtok=D("0.05"))
PRO = limits.Limits("pro", None, None, None, None, None, None, D("20"), platform_fee=PRO_FEE)


def _endpoint(backend_id: str = "b", **options) -> Endpoint:
    fields = {
        "url": "http://b/v1", "adapter": "openai", "model": "m", "region": "r",
        "cluster": "c", "chip": "h100", "price_input_per_mtok": 1.0,
        "price_output_per_mtok": 2.0, "certifications": (), "jurisdictions": (),
    }  # fmt: skip
    return Endpoint(backend_id=backend_id, **{**fields, **options})


def _catalog(*endpoints: Endpoint) -> dict[str, Endpoint]:
    return {e.backend_id: e for e in endpoints}


def _worst_usd(tariffs: _Tariffs, catalog, *ids: str, at: float = T0, runs_s: float = 60) -> D:
    pico = tariffs.worst(catalog, PRO, ids, at, at + runs_s, input_tokens=1000, output_tokens=500)
    return D(pico).scaleb(-12)


def test_without_a_list_price_a_public_backend_is_billed_at_its_cost_with_the_margin():
    assert rate(_endpoint(), T0) == rating.Price(D("1.0"), D("2.0"))


def test_the_list_price_in_force_when_the_request_completes_is_the_one_billed():
    endpoint = _endpoint(list_prices=((T0, LISTED), (T0 + 60, LATER)))
    assert rate(endpoint, T0 - 1) == rating.Price(D("1.0"), D("2.0"))
    assert rate(endpoint, T0) == limits.Listed(LISTED)
    assert rate(endpoint, T0 + 59.9) == limits.Listed(LISTED)
    assert rate(endpoint, T0 + 60) == limits.Listed(LATER)


def test_a_private_cluster_pays_the_platform_fee_whatever_the_list_price():
    own = _endpoint(org_id=7, list_prices=((T0, LISTED), (T0 + 60, LATER)))
    assert rate(own, T0 + 1) is limits.PLATFORM_FEE
    fee = D("0.0001") + 1500 * D("0.05") / 1_000_000
    assert _worst_usd(_Tariffs(), _catalog(own), "b", at=T0 - 1, runs_s=3600) == fee


def test_the_reservation_is_the_dearest_candidate_s_charge_with_the_tier_margin():
    catalog = _catalog(
        _endpoint("a", price_input_per_mtok=1.0, price_output_per_mtok=2.0),
        _endpoint("b", price_input_per_mtok=3.0, price_output_per_mtok=1.0),
    )
    # a: 1.2 per 1M input, 2.4 per 1M output: $0.0024 for 1000 in + 500 out.
    # b: 3.6 and 1.2: $0.0042, the dearest (one candidate serves the request).
    assert _worst_usd(_Tariffs(), catalog, "a", "b") == D("0.0042")
    assert _worst_usd(_Tariffs(), catalog) == 0


def test_a_private_candidate_counts_its_platform_fee_and_the_dearest_candidate_is_reserved():
    catalog = _catalog(
        _endpoint("cheap", price_input_per_mtok=0.01, price_output_per_mtok=0.02),  # $0.000024
        _endpoint("dear", price_input_per_mtok=3.0, price_output_per_mtok=1.0),  # $0.0042
        _endpoint("own", price_input_per_mtok=9.0, price_output_per_mtok=9.0, org_id=7),
    )
    fee = D("0.0001") + 1500 * D("0.05") / 1_000_000  # $0.000175: its cost is not charged
    tariffs = _Tariffs()
    assert _worst_usd(tariffs, catalog, "own") == fee
    assert _worst_usd(tariffs, catalog, "cheap", "own") == fee
    assert _worst_usd(tariffs, catalog, "own", "cheap") == fee
    assert _worst_usd(tariffs, catalog, "dear", "own", "cheap") == D("0.0042")


def test_a_list_price_scheduled_to_start_while_the_request_may_run_is_reserved_for():
    catalog = _catalog(_endpoint(list_prices=((T0 + 60, LATER),)))
    cost = D("0.0024")  # cost × 1.2 for 1000 in + 500 out
    later = D("0.085")  # 1000 × 50 + 500 × 70, per 1M
    tariffs = _Tariffs()
    assert _worst_usd(tariffs, catalog, "b", at=T0, runs_s=30) == cost  # done before it
    assert _worst_usd(tariffs, catalog, "b", at=T0, runs_s=120) == later
    assert _worst_usd(tariffs, catalog, "b", at=T0 + 61, runs_s=30) == later  # in force


def test_remembered_tariffs_follow_a_scheduled_price_when_it_starts():
    catalog = _catalog(_endpoint(list_prices=((T0 + 60, LATER),)))
    tariffs = _Tariffs()
    cost, later = (0, 1_200_000, 2_400_000), (0, 50 * 10**6, 70 * 10**6)
    _worst_usd(tariffs, catalog, "b", at=T0)  # remembered from here
    assert tariffs.in_force(catalog, PRO, "b", T0 + 59) == cost
    assert tariffs.in_force(catalog, PRO, "b", T0 + 60) == later
    assert tariffs.in_force(catalog, PRO, "b", T0 + 61) == later
    assert tariffs.in_force(catalog, PRO, "b", T0 + 1) == cost


def test_a_new_catalog_is_priced_afresh_and_an_old_one_still_settles_by_its_own_prices():
    before = _catalog(_endpoint())
    after = _catalog(_endpoint(list_prices=((T0 - 10, LATER),)))
    tariffs = _Tariffs()
    assert _worst_usd(tariffs, before, "b") == D("0.0024")
    assert _worst_usd(tariffs, after, "b") == D("0.085")
    assert tariffs.in_force(before, PRO, "b", T0) == (0, 1_200_000, 2_400_000)
    assert _worst_usd(tariffs, after, "b") == D("0.085")


def test_one_process_pricing_keys_of_different_tiers_in_turn_prices_each_by_its_own_terms():
    catalog = _catalog(_endpoint("a"), _endpoint("own", org_id=7))
    free = limits.Limits("free", None, None, None, None, None, None, D("50"))
    pro_again = limits.Limits(
        "pro", None, None, None, None, None, None, D("20"), platform_fee=PRO_FEE
    )  # the same terms as PRO in another object: a key reloaded

    def worst(lim: limits.Limits, *ids: str) -> D:
        pico = tariffs.worst(catalog, lim, ids, T0, T0 + 60, input_tokens=1000, output_tokens=500)
        return D(pico).scaleb(-12)

    tariffs = _Tariffs()
    pro_fee = D("0.0001") + 1500 * D("0.05") / 1_000_000
    for _ in range(2):  # each tier after the other, twice: nothing is carried across
        assert worst(PRO, "a") == D("0.0024")  # 1000 × 1.2 + 500 × 2.4 per 1M
        assert worst(free, "a") == D("0.003")  # 1000 × 1.5 + 500 × 3.0 per 1M
        assert worst(free, "own") == 0  # the free tier has no platform fee
        assert worst(pro_again, "own") == pro_fee
        assert worst(PRO, "a", "own") == D("0.0024")
