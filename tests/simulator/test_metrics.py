"""`/d/<slug>/metrics`: Prometheus text with vLLM's names and a model_name label."""

from __future__ import annotations

import re

from backends.simulator import Simulator

from .helpers import EASTUS_70B, MODEL_70B, asgi_client, chat, run

BASE = f"/d/{EASTUS_70B}"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def parse(text):
    """{(name, labels): value} of every sample; asserts every line is well formed."""
    samples = {}
    for line in text.strip().splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \S+ .+$", line), line
            continue
        match = SAMPLE.match(line)
        assert match, line
        samples[(match[1], match[2] or "")] = float(match[3])
    return samples


def scrape(world, time_scale, *bodies):
    """Send `bodies` to a fresh simulator, then read its metrics."""
    app = Simulator(world, time_scale=time_scale)

    async def go():
        async with asgi_client(app) as client:
            for body in bodies:
                assert (await client.post(f"{BASE}/v1/chat/completions", json=body)).is_success
            return await client.get(f"{BASE}/metrics")

    return run(go())


def test_metrics_count_tokens_and_requests_under_vllm_names(world):
    r = scrape(
        world,
        0.001,
        chat(content="12345678", max_tokens=5),  # 2 prompt tokens
        chat(content="1234", max_tokens=3, stream=True, stream_options={"include_usage": True}),
    )

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert r.headers["x-simulator"] == "tesseract"
    samples = parse(r.text)
    label = f'{{model_name="{MODEL_70B}"}}'
    assert samples[("vllm:num_requests_running", label)] == 0
    assert samples[("vllm:num_requests_waiting", label)] == 0
    assert samples[("vllm:prompt_tokens_total", label)] == 3
    assert samples[("vllm:generation_tokens_total", label)] == 8
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds"):
        assert samples[(f"{histogram}_count", label)] == 2
        assert samples[(f"{histogram}_bucket", f'{{model_name="{MODEL_70B}",le="+Inf"}}')] == 2
        assert samples[(f"{histogram}_sum", label)] > 0
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in r.text
    assert "# TYPE vllm:prompt_tokens_total counter" in r.text
    assert "# TYPE vllm:num_requests_running gauge" in r.text
    reasons = f'{{model_name="{MODEL_70B}",finished_reason="length"}}'
    assert samples[("vllm:request_success_total", reasons)] == 2


def test_the_ttft_histogram_sees_the_modelled_time_to_first_token(world):
    r = scrape(world, 1.0, chat(max_tokens=1))

    samples = parse(r.text)
    floor_s = world.deployments[EASTUS_70B].profile.ttft_floor_ms / 1000  # ~17 ms
    ttft_sum = samples[("vllm:time_to_first_token_seconds_sum", f'{{model_name="{MODEL_70B}"}}')]
    assert floor_s <= ttft_sum < floor_s + 0.01  # measured at the backend: no network in it
    le_002 = f'{{model_name="{MODEL_70B}",le="0.02"}}'
    assert samples[("vllm:time_to_first_token_seconds_bucket", le_002)] == 1


def test_metrics_say_they_come_from_the_simulator(world):
    samples = parse(scrape(world, 0).text)

    info = next(k for k in samples if k[0] == "tesseract_simulator_info")
    assert f'deployment="{EASTUS_70B}"' in info[1]
    assert samples[("tesseract_simulator_model_loaded", f'{{model_name="{MODEL_70B}"}}')] == 1
