from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tesseract_web import env


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("true", True), ("No", False), ("0", False)]
)
def test_booleans_read_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env.env_bool("FLAG", not expected) is expected


def test_a_malformed_boolean_stops_start_up(monkeypatch):
    monkeypatch.setenv("FLAG", "maybe")
    with pytest.raises(env.ImproperlyConfiguredEnv, match="FLAG"):
        env.env_bool("FLAG", False)


def test_a_malformed_integer_stops_start_up(monkeypatch):
    monkeypatch.setenv("N", "12ms")
    with pytest.raises(env.ImproperlyConfiguredEnv, match="N="):
        env.env_int("N", 1)


def test_an_integer_below_its_minimum_stops_start_up(monkeypatch):
    monkeypatch.setenv("N", "-1")
    with pytest.raises(env.ImproperlyConfiguredEnv):
        env.env_int("N", 1, minimum=0)


def test_a_secret_can_come_from_a_file(monkeypatch, tmp_path):
    path = tmp_path / "secret"
    path.write_text("s3cret\n")
    monkeypatch.setenv("TOKEN_FILE", str(path))
    monkeypatch.delenv("TOKEN", raising=False)
    assert env.env_secret("TOKEN") == "s3cret"


def test_a_secret_given_twice_is_ambiguous(monkeypatch, tmp_path):
    path = tmp_path / "secret"
    path.write_text("a")
    monkeypatch.setenv("TOKEN_FILE", str(path))
    monkeypatch.setenv("TOKEN", "b")
    with pytest.raises(env.ImproperlyConfiguredEnv):
        env.env_secret("TOKEN")


def test_a_list_is_split_on_commas(monkeypatch):
    monkeypatch.setenv("HOSTS", "a.example, b.example,,")
    assert env.env_list("HOSTS", []) == ["a.example", "b.example"]


# --------------------------------------------------------------------------- environments


ROOT = Path(__file__).resolve().parents[1]
SHOW = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'debug': s.DEBUG, 'secret': s.SECRET_KEY, 'pepper': s.API_KEY_PEPPER, "
    "'secure_cookies': s.SESSION_COOKIE_SECURE, 'sealing': s.TESSERACT_SEALING_KEYS, "
    "'sealing_generated': s.TESSERACT_SEALING_KEYS_GENERATED}))"
)
CONFIG = ("DEBUG", "SECRET_KEY", "API_KEY_PEPPER", "TESSERACT_ENV", "SECRET_KEY_FILE",
          "API_KEY_PEPPER_FILE", "SESSION_COOKIE_SECURE", "TESSERACT_SEALING_KEYS",
          "TESSERACT_SEALING_KEYS_FILE", "REDIS_BROKER_URL")  # fmt: skip


def settings_in_a_fresh_process(var_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Load the settings as a new process would, from this environment only."""
    clean = {k: v for k, v in os.environ.items() if k not in CONFIG}
    clean.update(
        DJANGO_SETTINGS_MODULE="tesseract_web.settings",
        TESSERACT_VAR_DIR=str(var_dir),
        DATABASE_URL=f"sqlite:///{var_dir / 'db.sqlite3'}",
        REDIS_URL="redis://127.0.0.1:1/0",  # read, never used
    )
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", SHOW], env=clean, cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_a_local_run_is_not_in_debug_unless_asked(tmp_path):
    shown = json.loads(settings_in_a_fresh_process(tmp_path).stdout)
    assert shown["debug"] is False
    assert shown["secure_cookies"] is False  # plain http on localhost must still sign in
    asked = json.loads(settings_in_a_fresh_process(tmp_path, DEBUG="1").stdout)
    assert asked["debug"] is True


def test_local_secrets_are_generated_once_and_kept_private(tmp_path):
    first = json.loads(settings_in_a_fresh_process(tmp_path).stdout)
    again = json.loads(settings_in_a_fresh_process(tmp_path).stdout)
    assert len(first["secret"]) >= 50
    assert len(first["pepper"]) >= 50
    assert first["secret"] != first["pepper"]
    assert (first["secret"], first["pepper"]) == (again["secret"], again["pepper"])
    secrets_file = tmp_path / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    given = json.loads(settings_in_a_fresh_process(tmp_path, SECRET_KEY="from-env").stdout)
    assert given["secret"] == "from-env"


def test_a_local_run_generates_a_sealing_key_once_and_says_so_unless_one_is_given(tmp_path):
    first = json.loads(settings_in_a_fresh_process(tmp_path).stdout)
    again = json.loads(settings_in_a_fresh_process(tmp_path).stdout)
    assert first["sealing_generated"] is True
    assert first["sealing"] == again["sealing"]
    assert (
        json.loads((tmp_path / "secrets.json").read_text())["TESSERACT_SEALING_KEYS"]
        == (first["sealing"])
    )
    key_file = tmp_path / "sealing"
    key_file.write_text("k1,k2\n")
    given = settings_in_a_fresh_process(tmp_path, TESSERACT_SEALING_KEYS_FILE=str(key_file))
    shown = json.loads(given.stdout)
    assert (shown["sealing"], shown["sealing_generated"]) == ("k1,k2", False)


def test_production_generates_no_sealing_key(tmp_path):
    run = settings_in_a_fresh_process(
        tmp_path, TESSERACT_ENV="production", SECRET_KEY="s", API_KEY_PEPPER="p"
    )
    shown = json.loads(run.stdout)
    assert (shown["sealing"], shown["sealing_generated"]) == ("", False)
    assert not (tmp_path / "secrets.json").exists()


def test_production_refuses_to_start_without_its_secrets(tmp_path):
    run = settings_in_a_fresh_process(tmp_path, TESSERACT_ENV="production")
    assert run.returncode != 0
    assert "SECRET_KEY must be set when TESSERACT_ENV=production" in run.stderr
    run = settings_in_a_fresh_process(tmp_path, TESSERACT_ENV="production", SECRET_KEY="s")
    assert "API_KEY_PEPPER must be set" in run.stderr
    assert not (tmp_path / "secrets.json").exists()


def test_production_refuses_debug_and_a_misspelt_environment(tmp_path):
    run = settings_in_a_fresh_process(
        tmp_path, TESSERACT_ENV="production", SECRET_KEY="s", API_KEY_PEPPER="p", DEBUG="1"
    )
    assert "DEBUG=1 is refused" in run.stderr
    misspelt = settings_in_a_fresh_process(tmp_path, TESSERACT_ENV="prod")
    assert "TESSERACT_ENV='prod'" in misspelt.stderr


def test_production_starts_with_its_secrets_and_secure_cookies(tmp_path):
    run = settings_in_a_fresh_process(
        tmp_path, TESSERACT_ENV="production", SECRET_KEY="s" * 50, API_KEY_PEPPER="p" * 50
    )
    assert run.returncode == 0, run.stderr
    shown = json.loads(run.stdout)
    assert shown["debug"] is False
    assert shown["secure_cookies"] is True
    assert shown["pepper"] == "p" * 50


def test_a_cluster_redis_url_needs_a_broker_beside_it_for_celery_and_channels(tmp_path):
    cluster = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"
    alone = settings_in_a_fresh_process(tmp_path, REDIS_URL=cluster)
    assert alone.returncode != 0
    assert "cannot run on Redis Cluster" in alone.stderr
    assert "REDIS_BROKER_URL" in alone.stderr
    beside = settings_in_a_fresh_process(
        tmp_path, REDIS_URL=cluster, REDIS_BROKER_URL="redis://127.0.0.1:6390/0"
    )
    assert beside.returncode == 0, beside.stderr
