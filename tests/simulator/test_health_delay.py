"""The health endpoint pays the network round trip, so that a latency probe can measure it."""

from __future__ import annotations

import time

from backends.simulator import Simulator

from .helpers import EASTUS_70B, asgi_client, run

HEALTH = f"/d/{EASTUS_70B}/health"


def timed_health(app: Simulator) -> tuple[float, dict]:
    async def go():
        async with asgi_client(app) as client:
            start = time.perf_counter()
            r = await client.get(HEALTH)
            return time.perf_counter() - start, r

    elapsed, response = run(go())
    assert response.status_code == 200
    return elapsed, response.json()


def test_a_health_check_answers_after_one_rtt_times_the_time_scale(world):
    rtt_s = world.rtt_ms("westeurope", "eastus") / 1000  # 85 ms

    elapsed, body = timed_health(Simulator(world, time_scale=0.5))

    assert rtt_s * 0.5 - 0.002 <= elapsed <= rtt_s * 0.5 + 0.05
    assert body == {"status": "ok", "simulator": True, "time_scale": 0.5}


def test_the_slow_fault_stretches_the_path_but_not_the_reported_time_scale(world):
    rtt_s = world.rtt_ms("westeurope", "eastus") / 1000
    app = Simulator(world, time_scale=0.2)
    app.deployments[EASTUS_70B].apply_control(
        {"fault": "slow", "slow_factor": 4}, now=0.0, time_scale=0.2
    )

    elapsed, body = timed_health(app)

    assert rtt_s * 0.2 * 4 - 0.002 <= elapsed <= rtt_s * 0.2 * 4 + 0.05
    assert body["time_scale"] == 0.2
