"""Unloading a model and loading it again, through a cold start sized by the model."""

from __future__ import annotations

import asyncio

import pytest

from backends.simulator import Simulator, cold_start_s

from .helpers import MODEL_8B, WESTEUROPE_8B, asgi_client, chat, run

BASE = f"/d/{WESTEUROPE_8B}"
CHAT = f"{BASE}/v1/chat/completions"


@pytest.mark.parametrize(("billions", "seconds"), [(8, 14.0), (70, 45.0), (405, 212.5)])
def test_a_cold_start_takes_longer_for_a_bigger_model(billions, seconds):
    assert cold_start_s(billions) == pytest.approx(seconds)


def test_an_unloaded_model_answers_503_until_a_cold_start_has_loaded_it(world):
    app = Simulator(world, time_scale=0.01)  # the 8B's 14 s cold start takes 0.14 s

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"{BASE}/control", json={"loaded": False})
            unloaded = await client.post(CHAT, json=chat(MODEL_8B))
            unloaded_health = await client.get(f"{BASE}/health")
            state = (await client.post(f"{BASE}/control", json={"loaded": True})).json()
            loading = await client.post(CHAT, json=chat(MODEL_8B))
            loading_health = await client.get(f"{BASE}/health")
            await asyncio.sleep(0.16)
            ready = await client.post(CHAT, json=chat(MODEL_8B))
            ready_state = (await client.get(f"{BASE}/control")).json()
            return unloaded, unloaded_health, state, loading, loading_health, ready, ready_state

    unloaded, unloaded_health, state, loading, loading_health, ready, ready_state = run(go())
    assert unloaded.status_code == 503
    assert unloaded.json()["error"]["code"] == "model_not_loaded"
    assert unloaded_health.status_code == 503
    assert unloaded_health.json()["status"] == "unloaded"
    assert state["availability"] == "loading"
    assert state["cold_start_s"] == 14.0
    assert 0.1 < state["loading_remaining_s"] <= 0.14
    assert loading.status_code == 503
    assert loading.json()["error"]["code"] == "model_loading"
    assert "cold start" in loading.json()["error"]["message"]
    assert loading.headers["retry-after"] == "1"
    assert loading_health.json()["status"] == "loading"
    assert ready.status_code == 200
    assert ready_state["loaded"] is True


def test_loading_a_model_that_is_loaded_changes_nothing(world):
    app = Simulator(world, time_scale=1.0)

    async def go():
        async with asgi_client(app) as client:
            state = (await client.post(f"{BASE}/control", json={"loaded": True})).json()
            return state, await client.post(CHAT, json=chat(MODEL_8B, max_tokens=1))

    state, r = run(go())
    assert state["availability"] == "ready"
    assert r.status_code == 200
