"""Concurrency slots, the FIFO queue behind them, overload, and disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest

from backends.simulator import Simulator
from tests.waiting import eventually

from .helpers import MODEL_8B, WESTEUROPE_8B, asgi_client, chat, run, serve

BASE = f"/d/{WESTEUROPE_8B}"
CHAT = f"{BASE}/v1/chat/completions"


def service_s(world, tokens):
    """How long one request holds a slot: TTFT then (tokens - 1) decode steps."""
    p = world.deployments[WESTEUROPE_8B].profile
    return (
        p.ttft_floor_ms / 1000 + 2 / p.prefill_tokens_per_s + (tokens - 1) / p.decode_tokens_per_s
    )


def gauge(metrics_text, name):
    for line in metrics_text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_a_request_beyond_the_slots_waits_in_the_queue(world):
    app = Simulator(world, time_scale=1.0)
    service = service_s(world, tokens=30)  # ~0.1 s on the 8B profile

    async def timed(client, start):
        r = await client.post(CHAT, json=chat(MODEL_8B, max_tokens=30))
        assert r.status_code == 200
        return time.perf_counter() - start

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"{BASE}/control", json={"concurrency_slots": 1})
            start = time.perf_counter()
            first = asyncio.create_task(timed(client, start))
            await asyncio.sleep(0.01)
            second = asyncio.create_task(timed(client, start))
            await asyncio.sleep(0.02)
            metrics = (await client.get(f"{BASE}/metrics")).text
            return await first, await second, metrics

    first, second, metrics = run(go())
    assert gauge(metrics, "vllm:num_requests_running") == 1
    assert gauge(metrics, "vllm:num_requests_waiting") == 1
    assert second - first >= 0.9 * service  # it started only when the first one finished
    assert second >= 2 * service


def test_requests_are_admitted_first_come_first_served(world):
    app = Simulator(world, time_scale=1.0)
    done = []

    async def one(client, i):
        await client.post(CHAT, json=chat(MODEL_8B, max_tokens=3))
        done.append(i)

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"{BASE}/control", json={"concurrency_slots": 1})
            tasks = []
            for i in range(5):
                tasks.append(asyncio.create_task(one(client, i)))
                await asyncio.sleep(0.002)
            await asyncio.gather(*tasks)

    run(go())
    assert done == [0, 1, 2, 3, 4]


def test_waiting_requests_are_admitted_lowest_priority_first_then_in_arrival_order(world):
    """As vLLM started with `--scheduling-policy priority`: the gateway's deadline-ordered
    queue. A request without a priority (0) goes ahead of the epoch-ms deadlines."""
    app = Simulator(world, time_scale=1.0)
    dep = app.deployments[WESTEUROPE_8B]
    done = []

    async def one(client, name, priority):
        fields = {} if priority is None else {"priority": priority}
        r = await client.post(CHAT, json=chat(MODEL_8B, max_tokens=2, **fields))
        assert r.status_code == 200
        done.append(name)

    async def go():
        async with asgi_client(app) as client:
            dep.slots.resize(0)  # nobody is admitted until all of them wait
            asks = [
                ("late", 1_700_000_030_000), ("soon", 1_700_000_010_000), ("none", None),
                ("later", 1_700_000_020_000), ("soon too", 1_700_000_010_000),
            ]  # fmt: skip
            tasks = []
            for name, priority in asks:
                tasks.append(asyncio.create_task(one(client, name, priority)))
                deadline = time.monotonic() + 30
                while dep.slots.waiting < len(tasks):
                    assert time.monotonic() < deadline, "the request did not reach the queue"
                    await asyncio.sleep(0.001)
            dep.slots.resize(1)
            await asyncio.gather(*tasks)

    run(go())
    assert done == ["none", "soon", "soon too", "later", "late"]


def test_a_priority_that_is_not_an_integer_is_refused(world):
    app = Simulator(world, time_scale=0)

    async def go():
        async with asgi_client(app) as client:
            return await client.post(CHAT, json=chat(MODEL_8B, max_tokens=2, priority="high"))

    r = run(go())
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "priority"


def test_past_max_waiting_a_request_is_turned_away_with_503(world):
    app = Simulator(world, time_scale=1.0)

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"{BASE}/control", json={"concurrency_slots": 1, "max_waiting": 1})
            running = asyncio.create_task(client.post(CHAT, json=chat(MODEL_8B, max_tokens=20)))
            await asyncio.sleep(0.01)
            waiting = asyncio.create_task(client.post(CHAT, json=chat(MODEL_8B, max_tokens=20)))
            await asyncio.sleep(0.01)
            refused = await client.post(CHAT, json=chat(MODEL_8B, max_tokens=20))
            return await running, await waiting, refused

    running, waiting, refused = run(go())
    assert running.status_code == waiting.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"


def test_a_client_that_disconnects_frees_its_slot(world):
    app = Simulator(world, time_scale=1.0)
    dep = app.deployments[WESTEUROPE_8B]
    with serve(app) as base, httpx.Client(base_url=base) as client:
        client.post(f"{BASE}/control", json={"concurrency_slots": 1})
        # A stream of 10,000 tokens (35 s) left after its first chunk...
        with client.stream("POST", CHAT, json=chat(MODEL_8B, max_tokens=10_000, stream=True)) as r:
            lines = r.iter_lines()  # kept: a dropped iterator closes the connection
            next(lines)
            assert dep.slots.running == 1
        # Well before the answer would end by itself (35 s): the hang-up freed it.
        eventually(lambda: dep.slots.running == 0, timeout_s=20)
        # ... and a whole answer the client stops waiting for.
        with pytest.raises(httpx.ReadTimeout):
            client.post(CHAT, json=chat(MODEL_8B, max_tokens=10_000), timeout=0.1)
        eventually(lambda: dep.slots.running == 0, timeout_s=20)

        r = client.post(CHAT, json=chat(MODEL_8B, max_tokens=2), timeout=1)

    assert r.status_code == 200
    assert dep.slots.waiting == 0
    assert dep.metrics.requests["abort"] == 2
    assert dep.metrics.generation_tokens >= 3  # what the stream had sent, then the 2 tokens


def test_a_request_for_n_choices_holds_n_slots_as_vllm_schedules_n_sequences(world):
    """vLLM runs each of a request's `n` choices as its own sequence in the batch, so
    they count against `max_num_seqs` and in its running and waiting gauges."""
    app = Simulator(world, time_scale=1.0)
    dep = app.deployments[WESTEUROPE_8B]

    async def go():
        async with asgi_client(app) as client:
            dep.slots.resize(4)
            three = asyncio.create_task(
                client.post(CHAT, json=chat(MODEL_8B, max_tokens=2000, n=3))
            )
            deadline = time.monotonic() + 30
            while dep.slots.running < 3:
                assert time.monotonic() < deadline, "the first request was not admitted"
                await asyncio.sleep(0.001)
            two = asyncio.create_task(client.post(CHAT, json=chat(MODEL_8B, max_tokens=2, n=2)))
            while dep.slots.waiting < 2:
                assert time.monotonic() < deadline, "the second request did not wait"
                await asyncio.sleep(0.001)
            metrics = (await client.get(f"{BASE}/metrics")).text
            assert not two.done()  # one slot is free, but it asked for two
            dep.slots.resize(5)
            second = await two
            three.cancel()
            return second, metrics

    second, metrics = run(go())
    assert second.status_code == 200
    assert len(second.json()["choices"]) == 2
    assert gauge(metrics, "vllm:num_requests_running") == 3
    assert gauge(metrics, "vllm:num_requests_waiting") == 2
    assert dep.slots.waiting == 0


def test_a_request_for_more_choices_than_there_are_slots_takes_them_all_and_is_served(world):
    app = Simulator(world, time_scale=1.0)
    dep = app.deployments[WESTEUROPE_8B]

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"{BASE}/control", json={"concurrency_slots": 2})
            r = await client.post(CHAT, json=chat(MODEL_8B, max_tokens=2, n=5))
            return r

    r = run(go())
    assert r.status_code == 200
    assert len(r.json()["choices"]) == 5
    assert dep.slots.running == 0


def test_a_request_that_fits_goes_ahead_of_a_larger_one_it_outranks_at_once(world):
    """Head-of-line blocking holds smaller requests *behind* a large head of the queue;
    a newcomer that sorts ahead of it and fits takes a free slot when it arrives."""
    app = Simulator(world, time_scale=1.0)
    dep = app.deployments[WESTEUROPE_8B]
    slots = dep.slots

    async def go():
        slots.resize(4)
        running = [await slots.acquire(0, 1) for _ in range(3)]  # 1 slot free
        big = asyncio.create_task(slots.acquire(5, 2))  # waits for 2
        await asyncio.sleep(0)
        urgent = asyncio.create_task(slots.acquire(1, 1))  # sorts ahead of it, fits
        await asyncio.sleep(0)
        admitted = urgent.done()
        big.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await big
        for n in running:
            slots.release(n)
        if admitted:
            slots.release(await urgent)
        else:
            urgent.cancel()
        return admitted

    assert run(go())
    assert (slots.running, slots.waiting) == (0, 0)
