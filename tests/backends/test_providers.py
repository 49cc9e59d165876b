"""Providers: credentials sealed at rest, rotation, what the catalog hands the gateway."""

from __future__ import annotations

import json
import stat

import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError

from backends import providers, sealing
from backends.demo import demo_world_load
from backends.models import Deployment, Provider
from backends.presets import PRESETS
from backends.snapshot import load_world
from routing.engine import OUT_PROVIDER
from tesseract_web import local_secrets

SECRET = "gsk_live_0123456789abcdefWXYZ"
KEY_A = sealing.generate_key()
KEY_B = sealing.generate_key()


@pytest.fixture
def keys(settings):
    settings.TESSERACT_SEALING_KEYS = KEY_A
    return settings


def make_provider(**fields) -> Provider:
    defaults = {"slug": "groq", "name": "Groq", "base_url": "https://api.groq.com/openai/v1"}
    return Provider.objects.create(**{**defaults, **fields})


def test_a_sealed_credential_opens_with_its_key_and_is_not_the_plaintext(keys):
    token = sealing.seal(SECRET)
    assert SECRET not in token
    assert sealing.unseal(token).reveal() == SECRET


def test_a_secret_never_prints_more_than_its_last_four_characters():
    secret = sealing.Secret(SECRET)
    for shown in (repr(secret), str(secret), f"{secret}", f"{[secret]}"):
        assert SECRET not in shown
        assert "Secret('…WXYZ')" in shown


def test_a_token_sealed_with_an_old_key_still_opens_after_rotation_and_reseals_with_the_new(
    settings,
):
    settings.TESSERACT_SEALING_KEYS = KEY_A
    old = sealing.seal(SECRET)
    settings.TESSERACT_SEALING_KEYS = f"{KEY_B},{KEY_A}"
    assert sealing.unseal(old).reveal() == SECRET
    new = sealing.reseal(old)
    settings.TESSERACT_SEALING_KEYS = KEY_B  # the old key is gone
    assert sealing.unseal(new).reveal() == SECRET
    with pytest.raises(sealing.SealingError) as caught:
        sealing.unseal(old)
    assert SECRET not in str(caught.value)


def test_sealing_without_keys_or_with_a_malformed_key_is_a_clear_error(settings):
    settings.TESSERACT_SEALING_KEYS = ""
    with pytest.raises(sealing.SealingError, match="TESSERACT_SEALING_KEYS"):
        sealing.seal(SECRET)
    settings.TESSERACT_SEALING_KEYS = "not-a-key"
    with pytest.raises(sealing.SealingError, match="key 1 is not a Fernet key"):
        sealing.seal(SECRET)


def test_an_entered_credential_is_stored_sealed_with_only_its_last_four_in_clear(db, keys):
    provider = providers.credential_set(make_provider(), f"  {SECRET}\n")
    provider.refresh_from_db()
    assert provider.credential_last4 == "WXYZ"
    assert provider.credential_hint == "…WXYZ"
    assert SECRET not in provider.credential_sealed
    assert providers.credential_reveal(provider).reveal() == SECRET
    row = Provider.objects.filter(pk=provider.pk).values().get()
    assert not any(SECRET in str(value) for value in row.values())


def test_an_empty_or_multiline_credential_is_refused_and_changes_nothing(db, keys):
    provider = make_provider()
    for bad in ("", "   ", "abc\ndef"):
        with pytest.raises(ValueError, match=r"empty|line break"):
            providers.credential_set(provider, bad)
    provider.refresh_from_db()
    assert provider.credential_sealed == ""
    assert provider.credential_last4 == ""


def test_the_reseal_command_rotates_every_credential_to_the_first_key(db, settings, capsys):
    settings.TESSERACT_SEALING_KEYS = KEY_A
    providers.credential_set(make_provider(), SECRET)
    settings.TESSERACT_SEALING_KEYS = f"{KEY_B},{KEY_A}"
    call_command("providers_reseal")
    assert "Re-sealed 1" in capsys.readouterr().out
    settings.TESSERACT_SEALING_KEYS = KEY_B
    assert providers.credential_reveal(Provider.objects.get()).reveal() == SECRET


def test_the_reseal_command_fails_cleanly_when_a_credential_does_not_open(db, settings):
    settings.TESSERACT_SEALING_KEYS = KEY_A
    providers.credential_set(make_provider(), SECRET)
    before = Provider.objects.get().credential_sealed
    settings.TESSERACT_SEALING_KEYS = KEY_B
    with pytest.raises(CommandError, match="does not open"):
        call_command("providers_reseal")
    assert Provider.objects.get().credential_sealed == before


def test_local_secrets_gain_a_sealing_key_in_a_file_written_before_it_existed(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"SECRET_KEY": "s" * 40, "API_KEY_PEPPER": "p" * 40}))
    path.chmod(0o600)
    first = local_secrets.load_or_create(tmp_path)
    again = local_secrets.load_or_create(tmp_path)
    assert first["SECRET_KEY"] == "s" * 40
    assert first["TESSERACT_SEALING_KEYS"] == again["TESSERACT_SEALING_KEYS"]
    sealing.parse_keys(first["TESSERACT_SEALING_KEYS"])  # a valid Fernet key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def groq_world(db, keys, world_spec_small):
    demo_world_load(world_spec_small, simulator_url="http://127.0.0.1:9")
    provider = providers.credential_set(make_provider(), SECRET)
    deployment = Deployment.objects.filter(chip__slug="groq-lpu").order_by("slug").first()
    assert deployment is not None
    deployment.provider = provider
    deployment.provider_model_id = PRESETS["groq"].models[deployment.model.slug]
    deployment.endpoint_url = ""
    deployment.save()
    return provider, deployment


@pytest.fixture
def world_spec_small():
    from backends.world import demo_world

    return demo_world()


def test_the_world_reaches_a_provider_deployment_with_its_model_id_and_credential(groq_world):
    provider, deployment = groq_world
    endpoint = load_world().endpoints[deployment.slug]
    assert endpoint.url == provider.base_url
    assert endpoint.provider == "groq"
    assert endpoint.model == deployment.model.slug
    assert endpoint.upstream_model == deployment.provider_model_id != endpoint.model
    assert endpoint.upstream_headers()["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in repr(endpoint)


def test_without_its_own_model_id_a_deployment_uses_its_providers_preset_id(groq_world):
    provider, deployment = groq_world
    Provider.objects.filter(pk=provider.pk).update(preset="groq")
    Deployment.objects.filter(pk=deployment.pk).update(provider_model_id="")
    endpoint = load_world().endpoints[deployment.slug]
    assert endpoint.upstream_model == PRESETS["groq"].models[deployment.model.slug]
    Provider.objects.filter(pk=provider.pk).update(preset="")
    assert load_world().endpoints[deployment.slug].upstream_model == deployment.model.slug


def test_a_named_header_provider_sends_the_bare_credential_in_that_header(groq_world):
    provider, deployment = groq_world
    Provider.objects.filter(pk=provider.pk).update(auth_style="header", auth_header="API-Key")
    headers = load_world().endpoints[deployment.slug].upstream_headers()
    assert headers["api-key"] == SECRET
    assert "authorization" not in headers


def test_a_misconfigured_provider_takes_its_deployments_out_of_the_world(groq_world):
    provider, deployment = groq_world
    Provider.objects.filter(pk=provider.pk).update(status=Provider.Status.MISCONFIGURED)
    world = load_world()
    assert world.snapshot.backend(deployment.slug).state.out == OUT_PROVIDER


def test_a_credential_that_no_longer_opens_takes_the_provider_out_without_failing_the_world(
    groq_world, settings
):
    _, deployment = groq_world
    settings.TESSERACT_SEALING_KEYS = KEY_B
    world = load_world()
    assert world.snapshot.backend(deployment.slug).state.out == OUT_PROVIDER
    assert world.endpoints[deployment.slug].auth is None


def test_a_provider_that_needs_a_credential_but_has_none_is_out_and_said_once(groq_world, caplog):
    provider, deployment = groq_world
    Provider.objects.filter(pk=provider.pk).update(credential_sealed="", slug="groq-unkeyed")
    worlds = [load_world(), load_world()]
    assert all(w.snapshot.backend(deployment.slug).state.out == OUT_PROVIDER for w in worlds)
    said = [r for r in caplog.records if "groq-unkeyed" in r.getMessage()]
    assert len(said) == 1
    assert "no credential" in said[0].getMessage()


def test_the_model_id_in_an_answer_is_replaced_by_the_catalogs_slug(groq_world):
    _, deployment = groq_world
    endpoint = load_world().endpoints[deployment.slug]
    answer = b'{"id":"x","model": "' + endpoint.upstream_model.encode() + b'","choices":[]}'
    assert endpoint.own_model(answer) == (
        b'{"id":"x","model":"' + deployment.model.slug.encode() + b'","choices":[]}'
    )


def test_a_rejection_seen_by_a_gateway_marks_the_provider_misconfigured_and_mails_once(
    groq_world, settings
):
    import redis

    provider, _ = groq_world
    settings.ADMINS = [("Ops", "ops@example.com")]
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(providers.REJECTED)
    try:
        assert providers.mark_rejected(client, "groq", "the provider answered 401")
        assert not providers.mark_rejected(client, "groq", "again")
        assert providers.sync_rejections(client) == ["groq"]
        assert providers.sync_rejections(client) == []
        provider.refresh_from_db()
        assert provider.status == Provider.Status.MISCONFIGURED
        assert len(mail.outbox) == 1
        assert "Groq" in mail.outbox[0].subject
        assert SECRET not in mail.outbox[0].body
        providers.credential_set(provider, SECRET + "2")
        provider.refresh_from_db()
        assert provider.status == Provider.Status.ACTIVE
        assert not client.hexists(providers.REJECTED, "groq")
    finally:
        client.delete(providers.REJECTED)


# --------------------------------------------------------------------------- the admin


@pytest.fixture
def operator_client(db):
    from tests.conftest import staff_login

    return staff_login("oscar@example.com")


def add_form(**fields) -> dict:
    return {
        "name": "Groq",
        "slug": "groq",
        "preset": "groq",
        "base_url": "",
        "auth_style": "none",
        "auth_header": "",
        "extra_headers": "{}",
        "connect_timeout_s": "5",
        "first_token_timeout_s": "",
        "status": "active",
        "credential": SECRET,
        **fields,
    }


def test_an_operator_adds_a_provider_by_choosing_a_preset_and_pasting_a_key(operator_client, keys):
    added = operator_client.post("/admin/backends/provider/add/", add_form())
    assert added.status_code == 302, added.content.decode()[:2000]
    provider = Provider.objects.get(slug="groq")
    assert provider.base_url == PRESETS["groq"].base_url
    assert provider.auth_style == "bearer"  # the preset's, over the form's default
    assert providers.credential_reveal(provider).reveal() == SECRET
    page = operator_client.get(f"/admin/backends/provider/{provider.pk}/change/").content.decode()
    listing = operator_client.get("/admin/backends/provider/").content.decode()
    assert "…WXYZ" in page
    assert "…WXYZ" in listing
    assert SECRET not in page
    assert SECRET not in listing
    assert provider.credential_sealed not in page


def test_saving_a_provider_with_a_blank_credential_keeps_the_stored_one(operator_client, keys):
    operator_client.post("/admin/backends/provider/add/", add_form())
    provider = Provider.objects.get(slug="groq")
    form = add_form(credential="", auth_style="bearer", connect_timeout_s="3")
    changed = operator_client.post(f"/admin/backends/provider/{provider.pk}/change/", form)
    assert changed.status_code == 302
    provider.refresh_from_db()
    assert provider.connect_timeout_s == 3
    assert providers.credential_reveal(provider).reveal() == SECRET


def test_without_sealing_keys_the_admin_refuses_the_key_and_stores_nothing(
    operator_client, settings
):
    settings.TESSERACT_SEALING_KEYS = ""
    refused = operator_client.post("/admin/backends/provider/add/", add_form())
    assert refused.status_code == 200
    assert "TESSERACT_SEALING_KEYS" in refused.content.decode()
    assert SECRET not in refused.content.decode()
    assert not Provider.objects.exists()


# --------------------------------------------------------------------------- presets


def test_every_presets_price_and_speed_row_exists_in_the_data():
    for preset in PRESETS.values():
        for model, key in preset.price_keys.items():
            assert preset.price(model) is not None, (preset.key, key)
        for model in {*preset.ttft_rows, *preset.decode_rows}:
            speed = preset.speed(model)
            assert speed is not None
            if model in preset.ttft_rows:
                assert speed.ttft_ms is not None, (preset.key, model)
            if model in preset.decode_rows:
                assert speed.decode_tokens_per_s is not None, (preset.key, model)


def test_a_presets_speed_agrees_with_the_demo_worlds_profile_from_the_same_rows():
    from backends.world import load_profiles

    profile = load_profiles()[("groq-lpu", "llama-3.3-70b-instruct")]
    speed = PRESETS["groq"].speed("llama-3.3-70b-instruct")
    assert speed is not None
    assert speed.decode_tokens_per_s == pytest.approx(profile.decode_tokens_per_s, abs=0.1)
    assert speed.ttft_ms == pytest.approx(profile.ttft_ms, abs=0.1)


def test_every_preset_maps_only_catalog_models_and_names_a_known_auth_style():
    from backends.world import MODELS

    for preset in PRESETS.values():
        assert set(preset.models) <= set(MODELS), preset.key
        assert preset.auth_style in Provider.Auth.values, preset.key
