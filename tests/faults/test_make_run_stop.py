"""Ctrl-C on `make run` loses no usage: what the gateway metered after the last
scheduled drain is stored before the embedded Redis, which keeps nothing on disk,
goes with it. The whole of `make run` (python -m tesseract_web.run) on embedded
defaults in a temporary folder, called with the official `openai` SDK."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from tests.servers import free_port

REQUESTS = 16
ROOT = Path(__file__).resolve().parents[2]
#: Settings that would point `make run` away from its embedded defaults.
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "STRIPE_", "TESSERACT_", "DJANGO_SETTINGS_MODULE")


def wait_for(condition, what: str, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not in {timeout_s:.0f} s"
        time.sleep(0.2)


def api_key(var: Path) -> str | None:
    logins = var / "make-run.txt"
    found = re.search(r"tsk_\w+", logins.read_text()) if logins.exists() else None
    return found.group(0) if found else None


def test_usage_metered_in_the_last_moment_before_ctrl_c_is_stored_exactly_once(tmp_path):
    var = tmp_path / "var"
    port, web_port, sim_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(NOT_INHERITED)}
    env |= {
        "TESSERACT_VAR_DIR": str(var),
        "PORT": str(port),
        "WEB_PORT": str(web_port),
        "TESSERACT_SIMULATOR_URL": f"http://127.0.0.1:{sim_port}",
    }
    log = (tmp_path / "run.log").open("w+")
    run = subprocess.Popen(
        [sys.executable, "-m", "tesseract_web.run"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,  # its own process group, as a terminal gives it
    )
    try:
        key = wait_for(lambda: api_key(var), "make run printed no API key")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)

        def ask(i: int) -> str:
            reply = client.chat.completions.with_raw_response.create(
                model="llama-3.1-8b-instruct",
                messages=[{"role": "user", "content": f"request {i}"}],
                max_tokens=3,
            )
            return reply.headers["x-request-id"]

        def answers() -> bool:
            try:
                ask(-1)
            except openai.APIError:
                return False
            return True

        wait_for(answers, "the gateway did not answer")
        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(ask, range(REQUESTS)))
        # Ctrl-C at once, to the whole group as a terminal sends it: the drain that
        # Celery beat schedules every second has not come round for most of them.
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=120) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):  # nothing it started outlives it
            os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        log.seek(0)
        output = log.read()
        log.close()

    assert "Tesseract stopped." in output, output[-3000:]
    # No Stripe key in its environment: it says billing is local-only.
    assert "Billing     local-only (no STRIPE_SECRET_KEY)" in output, output[-3000:]
    with sqlite3.connect(var / "tesseract.sqlite3") as db:
        stored = [r for (r,) in db.execute("SELECT request_id FROM billing_usageevent")]
    assert len(set(ids)) == REQUESTS
    assert set(ids) <= set(stored), f"{len(set(ids) - set(stored))} of {REQUESTS} lost"
    assert len(stored) == len(set(stored))  # none twice
