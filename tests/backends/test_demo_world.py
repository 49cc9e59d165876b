from __future__ import annotations

import csv

import pytest

from backends import world
from backends.demo import demo_world_load
from backends.models import AIModel, Chip, Cluster, Deployment, Region, RegionLatency


@pytest.fixture
def loaded(db):
    return demo_world_load()


def test_the_demo_world_has_every_azure_region_and_every_measured_pair(loaded):
    assert Region.objects.count() == 54
    assert RegionLatency.objects.count() == 54 * 53
    assert loaded.deployments == Deployment.objects.count() > 50


def test_the_latency_map_holds_the_published_france_to_germany_rtt(loaded):
    rtt = RegionLatency.objects.get(src__slug="francecentral", dst__slug="germanywestcentral")
    assert (rtt.rtt_p50_ms, rtt.rtt_p95_ms) == (12, 14)
    east_to_west_europe = RegionLatency.objects.get(src__name="East US", dst__name="West Europe")
    assert east_to_west_europe.rtt_p50_ms == 83


def test_loading_twice_changes_nothing(loaded):
    counts = [
        m.objects.count() for m in (Region, RegionLatency, Chip, AIModel, Cluster, Deployment)
    ]
    demo_world_load()
    assert counts == [
        m.objects.count() for m in (Region, RegionLatency, Chip, AIModel, Cluster, Deployment)
    ]


def test_hipaa_clusters_are_only_ours_and_only_in_the_us(loaded):
    hipaa = [c for c in Cluster.objects.select_related("region") if "hipaa" in c.certifications]
    assert hipaa
    assert {c.region.country_code for c in hipaa} == {"US"}
    assert {c.owner for c in hipaa} == {"tesseract"}
    assert not any("hipaa" in r.certifications for r in Region.objects.all())


def test_a_partner_beside_our_us_site_does_not_inherit_our_hipaa_baa(loaded):
    from backends.snapshot import load_world

    ours = Cluster.objects.filter(owner="tesseract", region__country_code="US")
    partner = Cluster.objects.filter(owner="partner", region__in=ours.values("region")).first()
    assert partner is not None, "the demo world should put a partner next to one of our US sites"
    backends = {b.id: b for b in load_world().snapshot.backends}
    for d in partner.deployments.all():
        assert "hipaa" not in backends[d.slug].certifications
    for d in Deployment.objects.filter(cluster__in=ours):
        assert "hipaa" in backends[d.slug].certifications


def test_sovereign_sites_are_in_the_eu(loaded):
    sovereign = Region.objects.filter(sovereign=True)
    assert sovereign.exists()
    assert all(r.eu_member for r in sovereign)


def test_gdpr_follows_the_eea(loaded):
    for region in Region.objects.all():
        assert ("gdpr" in region.certifications) == region.eea_member, region.slug


def test_big_models_sit_in_hubs_and_edges_serve_only_the_small_one(loaded):
    for cluster in Cluster.objects.filter(name__contains=" edge "):
        assert set(cluster.deployments.values_list("model__slug", flat=True)) == {
            "llama-3.1-8b-instruct"
        }
    assert Deployment.objects.filter(model__slug="llama-3.1-405b-instruct").count() >= 2


def test_several_kinds_of_chip_serve_the_70b_model(loaded):
    kinds = set(
        Deployment.objects.filter(model__slug="llama-3.3-70b-instruct").values_list(
            "chip__kind", flat=True
        )
    )
    assert kinds == {"gpu", "lpu", "wafer_scale"}


def test_no_measured_rtt_beats_the_speed_of_light():
    spec = world.demo_world()
    for (src, dst), (p50, _) in spec.rtt.items():
        assert p50 >= spec.floor_ms(src, dst), (src, dst)


def test_the_physical_floor_is_the_fibre_round_trip():
    # Paris to Frankfurt is ~480 km: ~4.8 ms there and back at 200,000 km/s.
    floor = world.physical_rtt_floor_ms(48.8566, 2.3522, 50.1109, 8.6821)
    assert 4.7 < floor < 4.9


def _csv_rows(name):
    with open(world.DATA_DIR / name, newline="") as fh:
        return list(csv.DictReader(fh))


def test_groq_speeds_and_prices_are_the_published_ones():
    profiles = world.load_profiles()
    groq_8b = profiles[("groq-lpu", "llama-3.1-8b-instruct")]
    hw = _csv_rows("hw_provider_profiles.csv")
    published = next(
        r for r in hw if r["backend"] == "groq" and r["model"] == "Llama-3.1-8B-Instruct"
    )
    assert groq_8b.decode_tokens_per_s == float(published["decode_tok_s_per_user_p50"])
    fastest = min(
        float(r["ttft_p50_s"])
        for r in hw
        if r["backend"] == "groq.com" and r["model"] == "Llama-3-8B-Instruct"
    )
    assert groq_8b.ttft_ms == pytest.approx(1000 * fastest)
    price = next(
        r
        for r in _csv_rows("llm_api_prices_litellm_llama.csv")
        if r["litellm_key"] == "groq/llama-3.1-8b-instant"
    )
    assert groq_8b.price_input_per_mtok == float(price["input_usd_per_mtok"])
    assert groq_8b.price_output_per_mtok == float(price["output_usd_per_mtok"])


def test_every_profile_names_its_sources(loaded):
    for deployment in Deployment.objects.all():
        assert "hw_provider_profiles.csv" in deployment.profile_source
        assert "llm_api_prices_litellm_llama.csv" in deployment.profile_source


def test_an_rtt_matrix_and_its_long_form_give_the_same_map():
    regions = world.load_regions()
    long_form = world.load_rtt(world.RTT_CSV, regions)
    matrix = world.load_rtt(world.DATA_DIR / "azure_region_rtt_p50_matrix_2026-07.csv", regions)
    assert {k: v[0] for k, v in long_form.items()} == {k: v[0] for k, v in matrix.items()}


def test_an_unknown_region_in_an_rtt_table_is_an_error(tmp_path):
    path = tmp_path / "rtt.csv"
    path.write_text("src_region,dst_region,rtt_p50_ms\nFrance Central,Atlantis,5\n")
    with pytest.raises(world.WorldDataError, match="Atlantis"):
        world.load_rtt(path, world.load_regions())
