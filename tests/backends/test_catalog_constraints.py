from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, transaction

from backends.models import AIModel, Chip, Cluster, Deployment, Region, RegionLatency


@pytest.fixture
def paris(db):
    return Region.objects.create(
        slug="francecentral", name="France Central", country_code="FR", country="France",
        latitude=46.3772, longitude=2.373, eu_member=True, eea_member=True,
    )  # fmt: skip


@pytest.fixture
def deployment_kwargs(paris):
    chip = Chip.objects.create(slug="nvidia-h100", name="H100", vendor="NVIDIA", kind="gpu")
    cluster = Cluster.objects.create(
        slug="paris-h100", name="Paris H100", region=paris, chip=chip, operator="Tesseract",
        accelerators=8,
    )  # fmt: skip
    model = AIModel.objects.create(
        slug="llama-3.1-8b-instruct", name="Llama 3.1 8B", family="llama-3.1",
        parameters_b=Decimal("8"), context_length=131072,
    )  # fmt: skip
    return {
        "slug": "paris-h100--llama-3.1-8b-instruct", "cluster": cluster, "chip": chip,
        "model": model, "price_input_per_mtok": Decimal("0.1"),
        "price_output_per_mtok": Decimal("0.1"), "concurrency_slots": 64, "ttft_ms": 6.0,
        "reference_prompt_tokens": 480, "prefill_tokens_per_s": 84000.0,
        "decode_tokens_per_s": 288.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"price_input_per_mtok": Decimal("-0.01")},
        {"price_output_per_mtok": Decimal("-1")},
        {"concurrency_slots": 0},
        {"decode_tokens_per_s": 0.0},
        {"prefill_tokens_per_s": -5.0},
        {"ttft_ms": -1.0},
    ],
)
def test_a_deployment_with_an_impossible_profile_is_refused(deployment_kwargs, change):
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(**{**deployment_kwargs, **change})


def test_a_valid_deployment_is_stored(deployment_kwargs):
    assert Deployment.objects.create(**deployment_kwargs).pk


def test_one_model_is_deployed_once_per_cluster_and_chip(deployment_kwargs):
    Deployment.objects.create(**deployment_kwargs)
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(**{**deployment_kwargs, "slug": "other"})


def test_an_eu_member_that_is_not_in_the_eea_is_refused(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        Region.objects.create(
            slug="x", name="X", country_code="FR", country="France", latitude=0, longitude=0,
            eu_member=True, eea_member=False,
        )  # fmt: skip


def test_coordinates_must_be_on_earth(db):
    with pytest.raises(IntegrityError), transaction.atomic():
        Region.objects.create(
            slug="x", name="X", country_code="FR", country="France", latitude=91, longitude=0
        )


def test_a_region_has_no_latency_to_itself(paris):
    with pytest.raises(IntegrityError), transaction.atomic():
        RegionLatency.objects.create(src=paris, dst=paris, rtt_p50_ms=1, rtt_p95_ms=2, source="t")


def test_a_p95_below_the_p50_is_refused(paris):
    berlin = Region.objects.create(
        slug="germanywestcentral", name="Germany West Central", country_code="DE",
        country="Germany", latitude=50.11, longitude=8.68, eu_member=True, eea_member=True,
    )  # fmt: skip
    with pytest.raises(IntegrityError), transaction.atomic():
        RegionLatency.objects.create(
            src=paris, dst=berlin, rtt_p50_ms=12, rtt_p95_ms=10, source="t"
        )


def test_a_cluster_needs_accelerators(deployment_kwargs):
    cluster = deployment_kwargs["cluster"]
    with pytest.raises(IntegrityError), transaction.atomic():
        Cluster.objects.create(
            slug="empty", name="Empty", region=cluster.region, chip=cluster.chip,
            operator="Tesseract", accelerators=0,
        )  # fmt: skip
