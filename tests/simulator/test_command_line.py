"""`python -m backends.simulator` starts a labelled server on the port it is given."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from backends.simulator.__main__ import _select

REPO = Path(__file__).resolve().parents[2]


def test_the_command_line_serves_the_chosen_deployments():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "backends.simulator", "--port", str(port), "--time-scale", "0"]
    proc = subprocess.Popen(
        [*command, "--deployments", "*groq*"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health")
                break
            except httpx.ConnectError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.05)
        listing = httpx.get(f"http://127.0.0.1:{port}/deployments").json()["deployments"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=5)

    assert health.json()["simulator"] == "tesseract-simulator"
    assert health.json()["deployments"] == 6
    assert all("groq" in d["deployment"] for d in listing)
    assert b"SIMULATOR" in err


def test_deployments_are_chosen_by_slug_or_pattern():
    slugs = ["a-groq--8b", "b-groq--70b", "c-h100--8b"]

    assert _select("all", slugs) == slugs
    assert _select("*groq*", slugs) == ["a-groq--8b", "b-groq--70b"]
    assert _select("c-h100--8b,*--8b", slugs) == ["c-h100--8b", "a-groq--8b"]
    with pytest.raises(SystemExit, match="matches no deployment"):
        _select("nothing", slugs)


def test_the_simulator_is_a_standalone_process_without_django():
    code = "import sys, backends.simulator.__main__; sys.exit('django' in sys.modules)"

    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0
