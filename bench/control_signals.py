"""How fast the control plane's signals reach a running gateway.

    make bench-control        (python -m bench.control_signals [--rounds N])

Starts the simulator and one uvicorn gateway worker (as `bench.gateway` does), then
repeats, for each signal, "change it here, poll the gateway's `/v1/route` until its
plan shows the change", and reports the time from the change to the first plan that
reflects it:

* drain: an operator drains a region (a catalog write; gateways reload the catalog);
* health: a deployment goes DOWN (three failures into the live maps; no query);
* revocation: an API key is revoked (the key cache drops it);
* load: a backend reports a queue (a metrics scrape into the live maps).

Polling costs ~1 ms a round trip, so the numbers carry that much resolution.
Output: bench/results/control_signals.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx

from bench.gateway import PY, ROOT, free_port, start, wait_http

RESULTS = ROOT / "bench" / "results"
BODY = {
    "model": "llama-3.1-8b-instruct",
    "input_tokens": 100,
    "max_tokens": 10,
    "tesseract": {"client_region": "westeurope"},
}


def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError("the gateway never saw the change")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tesseract-signals-"))
    sim_port, gw_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    os.environ.update(
        {
            "DEBUG": "1",
            "TESSERACT_VAR_DIR": str(work),
            "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
            "TESSERACT_SIMULATOR_URL": sim_url,
            "DJANGO_SETTINGS_MODULE": "tesseract_web.settings",
        }
    )
    if "REDIS_URL" not in os.environ:
        from tesseract_web import embedded_redis

        os.environ["REDIS_URL"] = embedded_redis.start()

    import django

    django.setup()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import redis
    from django.core.management import call_command

    from accounts import keys, services
    from accounts.demo import demo_accounts_ensure
    from accounts.models import ApiKey
    from backends import health, livestate
    from backends.services import drain_by_slug

    call_command("migrate", verbosity=0)
    call_command("load_demo_world", verbosity=0)
    logins = demo_accounts_ensure()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(lambda: [p.terminate() for p in procs])
        env = dict(os.environ)
        procs.append(
            start(
                [PY, "-m", "backends.simulator", "--port", str(sim_port), "--time-scale", "0"],
                env,
                work / "simulator.log",
            )
        )
        gateway = [
            PY, "-m", "uvicorn", "tesseract_web.asgi:gateway", "--port", str(gw_port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        procs.append(start(gateway, env, work / "gateway.log"))
        url = f"http://127.0.0.1:{gw_port}"
        auth = {"Authorization": f"Bearer {logins.api_key}"}
        wait_http(f"{sim_url}/health")
        wait_http(f"{url}/v1/models", headers=auth)
        http = stack.enter_context(httpx.Client(base_url=url, headers=auth))

        def primary() -> dict:
            return http.post("/v1/route", json=BODY).json()["primary"]

        timings: dict[str, list[float]] = {"drain": [], "health": [], "revocation": [], "load": []}
        for _ in range(args.rounds):
            region = primary()["region"]
            drain_by_slug("region", region, drained=True, by="bench")
            timings["drain"].append(until(lambda r=region: primary()["region"] != r))
            drain_by_slug("region", region, drained=False, by="bench")
            until(lambda r=region: primary()["region"] == r)

            slug = primary()["backend_id"]
            started = time.perf_counter()
            for _ in range(health.DOWN_AFTER):
                health.observe(client, slug, health.FAIL, source="check", reason="bench")
            until(lambda s=slug: primary()["backend_id"] != s)
            timings["health"].append((time.perf_counter() - started) * 1000)
            health.set_by_operator(client, slug, "healthy", "bench reset")
            until(lambda s=slug: primary()["backend_id"] == s)

            slug = primary()["backend_id"]
            started = time.perf_counter()
            livestate.deployment_update(client, slug, running=10_000, waiting=10_000)
            until(lambda s=slug: primary()["backend_id"] != s)
            timings["load"].append((time.perf_counter() - started) * 1000)
            livestate.deployment_update(client, slug, running=0, waiting=0)
            until(lambda s=slug: primary()["backend_id"] == s)

            key = services.api_key_create(org=logins.org, name="bench").plaintext
            mine = {"Authorization": f"Bearer {key}"}
            assert http.get("/v1/models", headers=mine).status_code == 200  # now cached
            started = time.perf_counter()
            services.api_key_revoke(api_key=ApiKey.objects.get(lookup=keys.parse_lookup(key)))
            until(lambda h=mine: http.get("/v1/models", headers=h).status_code == 401)
            timings["revocation"].append((time.perf_counter() - started) * 1000)

    lines = [
        "# How fast control-plane signals reach a gateway",
        "",
        f"`make bench-control`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared), {args.rounds} rounds; one uvicorn gateway worker, "
        "time from the change (as its writer returns) to the first `/v1/route` plan, or "
        "`/v1/models` answer, that reflects it. Polling adds up to ~1 ms.",
        "",
        "| signal | path | median ms | p95 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    paths = {
        "drain": "catalog save → pub/sub → catalog reload (worker thread) → new world",
        "health": "3 failures → Lua state machine → pub/sub → live-map re-read",
        "load": "metrics scrape → live map → pub/sub → live-map re-read",
        "revocation": "revoke → pub/sub → key cache entry dropped",
    }
    for name, values in timings.items():
        ordered = sorted(values)
        p95 = ordered[min(int(0.95 * len(ordered)), len(ordered) - 1)]
        lines.append(
            f"| {name} | {paths[name]} | {statistics.median(values):.1f} | {p95:.1f} "
            f"| {max(values):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "control_signals.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
