"""What rate limits and budgets cost the gateway: the same gateway with them on and off.

    make bench-limits        (python -m bench.limits [--quick])

One run starts, on loopback: the backend simulator at `--time-scale 0` (answers at
once), and two Tesseract gateways (one uvicorn worker each, uvloop, httptools) on the
same SQLite catalog and the same Redis: one as deployed (`TESSERACT_LIMITS=1`: every
request runs the admission script, and its settlement rides the usage XADD), one with
`TESSERACT_LIMITS=0` (the switch exists for this "off" run only). The demo org is moved
to a tier whose limits and budget are far out of reach, so every request is checked
and none is refused.

The two gateways are measured in alternating rounds (on, off, on, off, ...), so both see
the same contention on a shared machine; the report quotes the medians over rounds of
  * latency at concurrency 1: p50 and p99 of sequential non-streamed requests;
  * throughput at concurrency 32 (an aiohttp load generator: `wrk` is not installed
    here, so absolute req/s are lower than `make bench-gateway`'s; the delta is what
    counts).
and, in this process, the admission itself against the same Redis: the median time
of one `billing.limits.admit` call (the script's round trip) next to a bare PING (the
loopback round trip it cannot beat), and of a usage XADD pipeline with and without the
settle script in it. These are what limits add to a request, measured without the
HTTP stack whose noise dominates on a loaded 2-core machine.
Results: bench/results/limits.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import aiohttp

from bench.gateway import (
    BODY,
    RESULTS,
    bench_env,
    catalog_and_key,
    free_port,
    pct,
    start_gateway,
    start_simulator,
    wait_http,
)


async def sequential(url: str, headers: dict[str, str], n: int) -> list[float]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(url, json=BODY, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {await r.text()}")
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def throughput(url: str, headers: dict[str, str], seconds: float, c: int = 32) -> float:
    done = 0
    stop = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                async with session.post(url, json=BODY, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{r.status}: {await r.text()}")
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    n = 200 if args.quick else 500
    seconds = 3.0 if args.quick else 6.0

    work = Path(tempfile.mkdtemp(prefix="tesseract-bench-limits-"))
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = bench_env(work, sim_url)

    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(lambda: [p.terminate() for p in procs])
        procs.append(start_simulator(sim_port, env, work))
        key = catalog_and_key(env)
        urls = {}
        for mode, flag in (("on", "1"), ("off", "0")):
            port = free_port()
            log = work / f"gateway-{mode}.log"
            procs.append(start_gateway(port, {**env, "TESSERACT_LIMITS": flag}, log))
            urls[mode] = f"http://127.0.0.1:{port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {key}"}
        wait_http(f"{sim_url}/health")
        for url in urls.values():
            wait_http(url.replace("/chat/completions", "/models"), headers=headers)
        body_headers = headers
        results: dict[str, dict[str, list[float]]] = {
            m: {"p50": [], "p99": [], "rps": []} for m in urls
        }
        for url in urls.values():  # warm up both (key cache, world, scripts)
            asyncio.run(sequential(url, body_headers, 50))
        for r in range(rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                url = urls[mode]
                lat = asyncio.run(sequential(url, body_headers, n))
                results[mode]["p50"].append(statistics.median(lat))
                results[mode]["p99"].append(pct(lat, 0.99))
                results[mode]["rps"].append(asyncio.run(throughput(url, body_headers, seconds)))
                print(
                    f"round {r + 1} {mode}: p50 {results[mode]['p50'][-1]:.3f} ms, "
                    f"{results[mode]['rps'][-1]:.0f} req/s",
                    flush=True,
                )
        checked = asyncio.run(_has_limit_headers(urls["on"], body_headers))
        micro = asyncio.run(in_process(env["REDIS_URL"], 3000 if not args.quick else 500))
    write(results, rounds=rounds, n=n, seconds=seconds, checked=checked, micro=micro)


async def in_process(redis_url: str, n: int) -> dict[str, float]:
    """Median µs of: a PING; an admission; an XADD; the same XADD with its settlement."""
    from decimal import Decimal

    import redis.asyncio as aioredis

    from billing import limits

    client = aioredis.Redis.from_url(redis_url)
    scripts = limits.Scripts(client)
    lim = limits.Limits(
        "bench", 10**9, 10**12, 10**9, 10**12, Decimal(10**6), Decimal(10**6), Decimal(12)
    )
    keys = limits.redis_keys(org_id=999_999_999, key_id=1, month="2026-11")
    await limits.seed(client, keys, org_nano=0, key_nano=0)
    record = b"x" * 900  # about a usage record's size
    stream = "bench:limits:usage"
    verdict = await limits.admit(scripts, keys, lim, tokens=30, reserve_nano=1000)
    settle = limits.settle_args(
        verdict, reserved_tokens=30, actual_tokens=20, reserve_nano=1000, actual_nano=800
    )

    async def ping() -> None:
        await client.ping()

    async def admit() -> None:
        await limits.admit(scripts, keys, lim, tokens=30, reserve_nano=1000)

    async def xadd() -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, {b"r": record}, maxlen=1000, approximate=True)
            await pipe.execute()

    async def xadd_settle() -> None:
        async with client.pipeline(transaction=False) as pipe:
            pipe.xadd(stream, {b"r": record}, maxlen=1000, approximate=True)
            pipe.evalsha(scripts.settle.sha, len(keys), *keys, *settle)
            await pipe.execute(raise_on_error=False)

    await client.script_load(limits.SETTLE)
    out: dict[str, float] = {}
    for name, fn in (
        ("ping", ping),
        ("admit", admit),
        ("xadd", xadd),
        ("xadd+settle", xadd_settle),
    ):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - t0) * 1e6)
        out[name] = statistics.median(times)
    await client.delete(*keys, stream)
    await client.aclose()
    return out


async def _has_limit_headers(url: str, headers: dict[str, str]) -> bool:
    """Proof that the "on" gateway ran the script: its answers carry the headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=BODY, headers=headers) as r,
    ):
        await r.read()
        return "x-ratelimit-remaining-requests" in r.headers


def write(
    results: dict[str, dict[str, list[float]]],
    *,
    rounds: int,
    n: int,
    seconds: float,
    checked: bool,
    micro: dict[str, float],
) -> None:
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    on, off = med["on"], med["off"]
    overhead = on["p50"] - off["p50"]
    loss = (off["rps"] - on["rps"]) / off["rps"] * 100
    lines = [
        "# Rate limits and budgets: what they cost the gateway",
        "",
        f"`make bench-limits`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared with other work; run with `nice`). Upstream: the "
        "backend simulator at time scale 0. Two gateways on one Redis and one catalog, "
        "`TESSERACT_LIMITS=1` and `=0`, measured in alternating rounds; medians of "
        f"{rounds} rounds, each {n} sequential requests (latency) and {seconds:.0f} s at "
        "32 concurrent requests from an aiohttp load generator (throughput; it shares the "
        "cores, so req/s are lower than with wrk). "
        f"Limit headers present with limits on: {'yes' if checked else 'NO'}.",
        "",
        "| limits | p50 ms | p99 ms | req/s c=32 |",
        "|---|---|---|---|",
    ]
    for mode in ("on", "off"):
        m = med[mode]
        lines.append(f"| {mode} | {m['p50']:.3f} | {m['p99']:.3f} | {m['rps']:.0f} |")
    lines += [
        "",
        "| measure | measured | target |",
        "|---|---|---|",
        f"| p50 added by limits and budgets | {overhead:.3f} ms | ≤ 0.15 ms |",
        f"| throughput lost | {loss:.1f}% | ≤ 10% |",
        "",
        "In process, against the same Redis (median µs of sequential calls):",
        "",
        "| call | µs |",
        "|---|---|",
        *(f"| {name} | {us:.0f} |" for name, us in micro.items()),
        "",
        f"Admission adds one round trip: {micro['admit']:.0f} µs, of which "
        f"{micro['ping']:.0f} µs is the bare loopback round trip; settlement adds "
        f"{micro['xadd+settle'] - micro['xadd']:.0f} µs to the usage XADD it rides with.",
        "",
        "Per round (on / off):",
        "",
        "| round | p50 on | p50 off | req/s on | req/s off |",
        "|---|---|---|---|---|",
    ]
    for i in range(rounds):
        lines.append(
            f"| {i + 1} | {results['on']['p50'][i]:.3f} | {results['off']['p50'][i]:.3f} | "
            f"{results['on']['rps'][i]:.0f} | {results['off']['rps'][i]:.0f} |"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "limits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
