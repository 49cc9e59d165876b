"""A hung backend does not eat the deadline: each attempt gets a budget
(`routing.gateway.attempt.attempt_budget`), the first-token timeout applies to
non-streamed calls too, and the next candidate gets its chance.

Real simulator (its `hang` fault), real gateway, real Redis; small deadlines.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.gateway import conftest as gateway

# The gateway suite's fixtures: a live simulator and gateway, a private usage stream.
world_spec = gateway.world_spec
simulator_server = gateway.simulator_server
gateway_url = gateway.gateway_url
mesh = gateway.mesh
usage = gateway.usage
api_key = gateway.api_key

EIGHT_B = "llama-3.1-8b-instruct"
#: Two EU candidates: the primary (1 ms away) and its fallback.
REGIONS = ["westeurope", "francecentral"]


def ask(max_tokens: int = 3, **tesseract: Any) -> dict[str, Any]:
    return {
        "model": EIGHT_B,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "tesseract": {"client_region": "westeurope", "regions": REGIONS, **tesseract},
    }


def plan(mesh, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{mesh.gateway_url}/v1/route", headers={"Authorization": f"Bearer {key}"}, json=body
    )
    assert response.status_code == 200, response.text
    return response.json()


def call(mesh, key: str, body: dict[str, Any], stream: bool) -> tuple[int, dict[str, Any], float]:
    """Status, the `tesseract` info (or the error) and the seconds it took."""
    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={**body, "stream": stream},
        timeout=httpx.Timeout(30),
    ) as response:
        raw = response.read().decode()
    took = time.monotonic() - started
    if response.status_code != 200:
        return response.status_code, json.loads(raw), took
    if not stream:
        return 200, json.loads(raw)["tesseract"], took
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return 200, json.loads(events[-2])["tesseract"], took


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_hung_primary_is_abandoned_after_the_first_token_timeout(
    mesh, api_key, usage, settings, stream
):
    settings.TESSERACT_FIRST_TOKEN_TIMEOUT_S = 1
    settings.TESSERACT_DEADLINE_S = 10  # the default deadline, made small for the test
    body = ask()
    route = plan(mesh, api_key, body)
    primary, fallback = route["primary"]["backend_id"], route["fallbacks"][0]["backend_id"]
    mesh.fault(primary, fault="hang")

    status, info, took = call(mesh, api_key, body, stream)

    assert status == 200, info
    assert info["route"]["backend"] == fallback
    assert info["attempts"] == 2
    assert took < 6  # ~1 s on the hung primary, not the whole 10 s deadline
    [event] = usage()
    assert event.status == "ok"
    assert event.attempts == 2


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_under_a_tight_deadline_a_hung_primary_leaves_the_fallback_its_share(
    mesh, api_key, usage, stream
):
    # The first-token timeout (15 s) is longer than the whole deadline: the primary
    # may use only its fair share of it (half), the fallback gets the rest.
    body = ask(max_latency_ms=3000)
    route = plan(mesh, api_key, body)
    primary, fallback = route["primary"]["backend_id"], route["fallbacks"][0]["backend_id"]
    mesh.fault(primary, fault="hang")

    status, info, took = call(mesh, api_key, body, stream)

    assert status == 200, info
    assert info["route"]["backend"] == fallback
    assert info["attempts"] == 2
    assert 1.4 < took < 3.0  # half of the deadline on the primary, then the answer
    [event] = usage()
    assert event.status == "ok"


def test_a_single_candidate_is_waited_on_for_the_whole_deadline(mesh, api_key, usage, settings):
    settings.TESSERACT_FIRST_TOKEN_TIMEOUT_S = 1
    settings.TESSERACT_DEADLINE_S = 10
    # Only westeurope: nothing to fail over to. Slowed 120× (at the mesh's 1/20 time
    # scale), its 100 tokens take ~2 s: more than the first-token timeout, well within
    # the deadline. Patience serves the request; giving up would fail it.
    body = ask(100, regions=["westeurope"])
    [only] = [plan(mesh, api_key, body)["primary"]["backend_id"]]
    assert plan(mesh, api_key, body)["fallbacks"] == []
    mesh.fault(only, fault="slow", slow_factor=120)

    status, info, took = call(mesh, api_key, body, stream=False)

    assert status == 200, info
    assert info["route"]["backend"] == only
    assert info["attempts"] == 1
    assert took > 1.5
    [event] = usage()
    assert event.status == "ok"


def test_when_every_candidate_hangs_the_answer_is_a_timeout_at_the_deadline(mesh, api_key, usage):
    body = ask(max_latency_ms=2000)
    for slug in (plan(mesh, api_key, body)["primary"]["backend_id"],
                 *(f["backend_id"] for f in plan(mesh, api_key, body)["fallbacks"])):  # fmt: skip
        mesh.fault(slug, fault="hang")

    status, error, took = call(mesh, api_key, body, stream=False)

    assert status == 504
    assert error["error"]["code"] == "backend_timeout"
    assert 1.9 < took < 4.0
    [event] = usage()
    assert event.status == "error"
    assert event.input_tokens == event.output_tokens == 0


def test_the_attempt_budget_shares_the_deadline_and_never_cuts_below_the_prediction():
    from routing.engine import Prediction
    from routing.gateway.attempt import attempt_budget

    quick = Prediction(1, 0, 10, 20, 11, 31)  # ms
    long = Prediction(1, 0, 10, 7_000, 11, 7_011)

    def budget(p: Prediction, remaining: float, *, stream: bool = False, last: bool = False):
        return attempt_budget(p, remaining_s=remaining, first_token_s=15, stream=stream, last=last)

    assert budget(quick, 120) == pytest.approx(15.04)  # first-token timeout + 2 × decode
    assert budget(quick, 120, stream=True) == 15
    assert budget(quick, 10) == 5  # a fair share: half of what is left
    assert budget(quick, 10, last=True) == 10  # nobody to fail over to: all of it
    assert budget(long, 10) == 10  # its own prediction (× 1.5) needs it all
    assert budget(long, 30) == 15  # half of what is left
    assert budget(long, 20) == pytest.approx(10.5165)  # not below 1.5 × its prediction
