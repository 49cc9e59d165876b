"""The container health checks (`tesseract_web/healthcheck.py`) that compose.yaml and the
Kubernetes manifests run: they must fail when the process is unhealthy, not only pass."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tesseract_web import healthcheck
from tests.servers import serve

SCRIPT = Path(healthcheck.__file__)


def test_beat_is_alive_while_it_writes_its_schedule_file(tmp_path):
    (tmp_path / "celerybeat-schedule").write_bytes(b"")
    assert healthcheck.beat_alive(tmp_path)


def test_beat_is_stuck_when_its_schedule_file_is_old(tmp_path):
    schedule = tmp_path / "celerybeat-schedule.dat"  # dbm.dumb's name for it
    schedule.write_bytes(b"")
    old = time.time() - 601
    os.utime(schedule, (old, old))
    assert not healthcheck.beat_alive(tmp_path)


def test_beat_is_not_alive_before_it_wrote_anything(tmp_path):
    assert not healthcheck.beat_alive(tmp_path)


@pytest.mark.django_db(transaction=True)
def test_the_http_check_passes_on_a_healthy_web_and_fails_on_a_degraded_one(settings):
    from tesseract_web import asgi

    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    with serve(asgi.web) as web_url:
        assert healthcheck.main(["http", f"{web_url}/health"]) == 0
        settings.REDIS_URL = "redis://127.0.0.1:1/0"  # /health answers 503
        assert healthcheck.main(["http", f"{web_url}/health"]) == 1


def test_the_http_check_fails_when_nothing_listens():
    assert not healthcheck.http_ok("http://127.0.0.1:1/health", timeout_s=2)


def test_the_script_runs_as_a_file_without_django(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = ""
    (tmp_path / "celerybeat-schedule").write_bytes(b"")
    ran = subprocess.run(
        [sys.executable, "-X", "importtime", str(SCRIPT), "beat", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "django" not in ran.stderr
    assert "celery" not in ran.stderr
