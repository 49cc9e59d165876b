"""How fast the control plane's signals reach every running gateway process.

    make bench-control        (python -m bench.control_signals [--rounds N] [--gateways N])

Starts the simulator and `--gateways` uvicorn gateway processes (2 by default, each
with its own `TESSERACT_GATEWAY_REGION`, as `bench.gateway` starts one), then repeats,
for each signal, "change it here, poll every gateway's `/v1/route` until its plan
shows the change", and reports, from the change to the first plan that reflects it,
the time until the first gateway and until the last one (every gateway) saw it:

* drain: an operator drains a region (a catalog write; gateways reload the catalog);
* health: a deployment goes DOWN (three failures into the live maps; no query);
* revocation: an API key is revoked (the key cache drops it);
* load: a backend reports a queue (a metrics scrape into the live maps);
* catalog: a deployment of a new model is added (routable), then removed (not).

The gateways' periodic refreshes (world, live maps, key cache) are put off for an
hour, so every number is the announcement's path (Redis pub/sub), not a timer's.
The gateways are polled in turn, ~1 ms a round trip each, so the numbers carry that
much resolution per gateway. Output: bench/results/control_signals.md.
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
MODEL = "llama-3.1-8b-instruct"
BODY = {
    "model": MODEL,
    "input_tokens": 100,
    "max_tokens": 10,
    "tesseract": {"client_region": "westeurope"},
}


#: Regions the gateway processes are started in, in turn.
REGIONS = ("westeurope", "eastus", "westus2", "southeastasia")
#: The gateways' periodic refreshes, put off: only the announcements carry a change.
NO_REFRESH = {
    "TESSERACT_WORLD_REFRESH_S": "3600",
    "TESSERACT_LIVE_REFRESH_S": "3600",
    "TESSERACT_KEY_CACHE_TTL_S": "3600",
}
#: the model the catalog signal adds a deployment of, and removes again
NEW_MODEL = "bench-signal-1b"


def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError("the gateway never saw the change")
    return (time.perf_counter() - started) * 1000


def until_each(
    gateways: list[httpx.Client],
    shows: Callable[[httpx.Client], bool],
    started: float,
    timeout_s: float = 10.0,
) -> list[float]:
    """Poll every gateway in turn until each `shows` the change; the milliseconds from
    `started` (`time.perf_counter()`) at which each first did."""
    seen: dict[int, float] = {}
    while len(seen) < len(gateways):
        for i, gateway in enumerate(gateways):
            if i not in seen and shows(gateway):
                seen[i] = (time.perf_counter() - started) * 1000
        if time.perf_counter() - started > timeout_s:
            raise RuntimeError("a gateway never saw the change")
    return [seen[i] for i in range(len(gateways))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument(
        "--gateways", type=int, default=2, choices=range(1, len(REGIONS) + 1),
        help="gateway processes, each in its own region (default 2)",
    )  # fmt: skip
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tesseract-signals-"))
    sim_port = free_port()
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
    from backends.models import AIModel, Deployment
    from backends.services import drain_by_slug

    call_command("migrate", verbosity=0)
    call_command("load_demo_world", verbosity=0)
    logins = demo_accounts_ensure()
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    new_model = AIModel.objects.create(
        slug=NEW_MODEL, name=NEW_MODEL, family="bench", parameters_b=1, context_length=8192
    )

    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            for proc in procs:
                proc.terminate()

        stack.callback(stop)
        env = {**os.environ, **NO_REFRESH}
        procs.append(
            start(
                [PY, "-m", "backends.simulator", "--port", str(sim_port), "--time-scale", "0"],
                env,
                work / "simulator.log",
            )
        )
        auth = {"Authorization": f"Bearer {logins.api_key}"}
        gateways: list[httpx.Client] = []
        for region in REGIONS[: args.gateways]:
            port = free_port()
            command = [
                PY, "-m", "uvicorn", "tesseract_web.asgi:gateway", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", "--no-access-log",
                "--log-level", "warning",
            ]  # fmt: skip
            gateway_env = {**env, "TESSERACT_GATEWAY_REGION": region}
            procs.append(start(command, gateway_env, work / f"gateway-{region}.log"))
            url = f"http://127.0.0.1:{port}"
            gateways.append(stack.enter_context(httpx.Client(base_url=url, headers=auth)))
        wait_http(f"{sim_url}/health")
        for gateway in gateways:
            wait_http(str(gateway.base_url.join("/v1/models")), headers=auth)
        first = gateways[0]

        def plan(gateway: httpx.Client, model: str = MODEL) -> dict:
            return gateway.post("/v1/route", json={**BODY, "model": model}).json()

        def primary(gateway: httpx.Client = first) -> dict:
            return plan(gateway)["primary"]

        def measure(name: str, change: Callable[[], object], shows: Callable[..., bool]) -> None:
            started = time.perf_counter()
            change()
            timings[name].append(until_each(gateways, shows, started))

        def settle(shows: Callable[..., bool]) -> None:
            until_each(gateways, shows, time.perf_counter())

        timings: dict[str, list[list[float]]] = {name: [] for name in PATHS}

        def one_round() -> None:
            region = primary()["region"]
            measure(
                "drain",
                lambda: drain_by_slug("region", region, drained=True, by="bench"),
                lambda g: primary(g)["region"] != region,
            )
            drain_by_slug("region", region, drained=False, by="bench")
            settle(lambda g: primary(g)["region"] == region)

            slug = primary()["backend_id"]

            def down() -> None:
                for _ in range(health.DOWN_AFTER):
                    health.observe(client, slug, health.FAIL, source="check", reason="bench")

            measure("health", down, lambda g: primary(g)["backend_id"] != slug)
            health.set_by_operator(client, slug, "healthy", "bench reset")
            settle(lambda g: primary(g)["backend_id"] == slug)

            slug = primary()["backend_id"]
            measure(
                "load",
                lambda: livestate.deployment_update(client, slug, running=10_000, waiting=10_000),
                lambda g: primary(g)["backend_id"] != slug,
            )
            livestate.deployment_update(client, slug, running=0, waiting=0)
            settle(lambda g: primary(g)["backend_id"] == slug)

            key = services.api_key_create(org=logins.org, name="bench").plaintext
            mine = {"Authorization": f"Bearer {key}"}
            for gateway in gateways:  # now cached by every gateway
                assert gateway.get("/v1/models", headers=mine).status_code == 200
            measure(
                "revocation",
                lambda: services.api_key_revoke(
                    api_key=ApiKey.objects.get(lookup=keys.parse_lookup(key))
                ),
                lambda g: g.get("/v1/models", headers=mine).status_code == 401,
            )

            like = Deployment.objects.get(slug=primary()["backend_id"])
            like.pk, like.slug, like.model = None, f"{like.cluster.slug}--{NEW_MODEL}", new_model
            measure(
                "catalog: added",
                like.save,
                lambda g: (plan(g, NEW_MODEL)["primary"] or {}).get("backend_id") == like.slug,
            )
            measure(
                "catalog: removed",
                like.delete,
                lambda g: plan(g, NEW_MODEL)["primary"] is None,
            )

        for _ in range(args.rounds):
            one_round()

    lines = [
        "# How fast control-plane signals reach every gateway",
        "",
        f"`make bench-control`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared), {args.rounds} rounds; {len(gateways)} uvicorn "
        f"gateway processes ({', '.join(REGIONS[: len(gateways)])}), their periodic "
        "refreshes put off for an hour (only the announcements carry a change). Time from "
        "the change (as its writer is called) to the first `/v1/route` plan, or "
        "`/v1/models` answer, that reflects it: on the first gateway to show it, and on "
        "every gateway (the last one). The gateways are polled in turn, ~1 ms each.",
        "",
        "| signal | path | first: median ms | every gateway: median ms | p95 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    for name, rounds in timings.items():
        firsts = [min(r) for r in rounds]
        lasts = sorted(max(r) for r in rounds)
        p95 = lasts[min(int(0.95 * len(lasts)), len(lasts) - 1)]
        lines.append(
            f"| {name} | {PATHS[name]} | {statistics.median(firsts):.1f} "
            f"| {statistics.median(lasts):.1f} | {p95:.1f} | {max(lasts):.1f} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / "control_signals.md").write_text(text)
    sys.stdout.write(text)


#: How each signal travels, for the results table.
PATHS = {
    "drain": "catalog save → pub/sub `tesseract:world` → catalog reload (worker thread)",
    "health": "3 failures → Lua state machine → pub/sub `tesseract:live` → live-map re-read",
    "load": "metrics scrape → live map → pub/sub `tesseract:live` → live-map re-read",
    "revocation": "revoke → pub/sub `tesseract:apikeys` → key cache entry dropped",
    "catalog: added": "deployment saved → pub/sub `tesseract:world` → catalog reload",
    "catalog: removed": "deployment deleted → pub/sub `tesseract:world` → catalog reload",
}


if __name__ == "__main__":
    main()
