from __future__ import annotations

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
