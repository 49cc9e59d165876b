"""The timing model: network RTT, TTFT from the profile, decode speed, time scale, slow."""

from __future__ import annotations

import itertools
import time

import httpx

from backends.simulator import Simulator

from .helpers import EASTUS_70B, asgi_client, chat, run, serve

CHAT = f"/d/{EASTUS_70B}/v1/chat/completions"
#: Slack for a busy 2-core machine; the lower bounds are tight (sleeps never end early).
LATE_S = 0.05


def model_times(world, prompt_tokens, tokens, scale=1.0):
    """(first token, last token) in seconds as the client sees them, per the package doc."""
    spec = world.deployments[EASTUS_70B]
    p = spec.profile
    rtt = world.rtt_ms("westeurope", world.clusters[spec.cluster].region) / 1000
    first = rtt + p.ttft_floor_ms / 1000 + prompt_tokens / p.prefill_tokens_per_s
    return first * scale, (first + (tokens - 1) / p.decode_tokens_per_s) * scale


def stream_arrivals(base, body):
    """Seconds from sending `body` to each content chunk of the stream."""
    arrivals = []
    with httpx.Client(base_url=base) as client:
        start = time.perf_counter()
        with client.stream("POST", CHAT, json=body) as r:
            for line in r.iter_lines():
                if '"content":" ' in line:
                    arrivals.append(time.perf_counter() - start)
    return arrivals


def test_the_first_token_arrives_after_the_rtt_and_the_modelled_ttft(world):
    first, _ = model_times(world, prompt_tokens=1000, tokens=2)
    with serve(Simulator(world, time_scale=1.0)) as base:
        stream_arrivals(base, chat(max_tokens=1))  # warm the connection path
        arrivals = stream_arrivals(base, chat(content="x" * 4000, max_tokens=2, stream=True))

    assert first > 0.15  # 85 ms RTT + 17 ms floor + 69 ms of prefill for 1,000 tokens
    assert first - 0.002 <= arrivals[0] <= first + LATE_S


def test_tokens_then_follow_at_the_decode_speed(world):
    scale = 4.0  # 68 ms between tokens: a busy machine's jitter is small beside it
    first, last = model_times(world, prompt_tokens=2, tokens=10, scale=scale)
    with serve(Simulator(world, time_scale=scale)) as base:
        arrivals = stream_arrivals(base, chat(max_tokens=10, stream=True))

    assert len(arrivals) == 10
    # Sleeps never end early: counted from the request, no token comes before its time.
    assert arrivals[-1] >= last - 0.002
    # The tokens are spread over nine decode steps, not sent in one burst. A first token
    # delivered late (the machine was busy) shortens the span, by at most the slack.
    span = last - first
    assert span - LATE_S <= arrivals[-1] - arrivals[0] <= span + LATE_S
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    assert gaps[len(gaps) // 2] > span / 9 / 2


def test_a_whole_answer_arrives_after_the_last_token(world):
    _, last = model_times(world, prompt_tokens=2, tokens=8)

    async def go():
        async with asgi_client(Simulator(world, time_scale=1.0)) as client:
            start = time.perf_counter()
            r = await client.post(CHAT, json=chat(max_tokens=8))
            return r, time.perf_counter() - start

    r, elapsed = run(go())
    assert r.status_code == 200
    assert last - 0.002 <= elapsed <= last + LATE_S


def test_the_slow_fault_multiplies_every_delay(world):
    _, last = model_times(world, prompt_tokens=2, tokens=8)
    app = Simulator(world, time_scale=0.2)

    async def go():
        async with asgi_client(app) as client:
            await client.post(f"/d/{EASTUS_70B}/control", json={"fault": "slow", "slow_factor": 5})
            start = time.perf_counter()
            await client.post(CHAT, json=chat(max_tokens=8))
            return time.perf_counter() - start

    assert last - 0.002 <= run(go()) <= last + LATE_S  # 0.2 x 5 = real time


def test_time_scale_zero_answers_at_once(world):
    app = Simulator(world, time_scale=1.0)
    slow_one = "australiaeast-tesseract-nvidia-h100--llama-3.3-70b-instruct"

    async def go():
        async with asgi_client(app) as client:
            r = await client.post("/control/time_scale", json={"time_scale": 0})
            assert r.json() == {"time_scale": 0.0}
            start = time.perf_counter()
            body = chat(content="y" * 40_000, max_tokens=2000)
            whole = await client.post(f"/d/{slow_one}/v1/chat/completions", json=body)
            streamed = await client.post(
                f"/d/{slow_one}/v1/chat/completions", json={**body, "stream": True}
            )
            return whole, streamed, time.perf_counter() - start

    whole, streamed, elapsed = run(go())
    # At time scale 1 this would take 265 ms of RTT and 34 s of decoding, each.
    assert elapsed < 0.5
    assert whole.json()["usage"]["completion_tokens"] == 2000
    assert streamed.text.endswith("data: [DONE]\n\n")
