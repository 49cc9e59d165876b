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
from routing.engine import Health
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
    assert world.snapshot.backend(deployment.slug).state.health is Health.DOWN


def test_a_credential_that_no_longer_opens_takes_the_provider_out_without_failing_the_world(
    groq_world, settings
):
    _, deployment = groq_world
    settings.TESSERACT_SEALING_KEYS = KEY_B
    world = load_world()
    assert world.snapshot.backend(deployment.slug).state.health is Health.DOWN
    assert world.endpoints[deployment.slug].auth is None


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
