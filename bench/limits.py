"""What rate limits and budgets cost the gateway: the same gateway with them on and off.

    make bench-limits        (python -m bench.limits [--quick])

One run starts, on loopback, the backend simulator at `--time-scale 0` (answers at
once), and then, for every round, three fresh Tesseract gateways (one uvicorn worker
each, uvloop, httptools) on the same SQLite catalog and the same Redis: one as deployed
(`TESSERACT_LIMITS=1`: every request runs the admission script, and its settlement rides
the usage XADD), one with limits on and every admission answered before the backend is
called (`TESSERACT_ADMISSION_OVERLAP=0`), and one with `TESSERACT_LIMITS=0` (the switch
exists for this "off" run only). The demo org is moved to a tier whose limits and budget
are far out of reach, so every request is checked and none is refused.

Each round's processes are new, so the draw of one process (about a tenth of CPU per
request here) does not decide the run. The report quotes the medians over rounds of
  * latency at concurrency 1: p50 and p99 of sequential non-streamed requests, taken in
    turn (one to each gateway, then the next), so that every side meets the same
    moments of a shared machine;
  * throughput at concurrency 32, in slices of about 2 s interleaved between the
    gateways in rotating order, 6 s in all on each: wrk, as
    `make bench-gateway` (an aiohttp load generator where wrk is not installed: it
    shares the cores, so its req/s are lower; the delta is what counts).
and, in this process, the admission itself against the same Redis, in alternating
rounds: the median time of an admission alone (c=1) and of each of 32 concurrent ones
(wall time / 32: what each costs the event loop), by the path as shipped (one
auto-pipelined connection, `accounts.autopipe`), redis-py's paths before it, and
Cluster's (a redis-py pipeline per turn), next to a bare PING (the loopback round trip
an admission cannot beat); and a usage XADD with and without the settle script beside
it. These are what limits add to a request, measured without the HTTP stack whose
noise dominates on a loaded machine.
`make bench-gateway` runs the same on/off comparison (`compare`) in its own run, beside
its other targets. `--in-process-only` runs only the in-process part (prints it).
Results: bench/results/limits.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench import notes
from bench.gateway import (
    BODY,
    RESULTS,
    Target,
    bench_env,
    catalog_and_key,
    cpu_s,
    free_port,
    pct,
    redis_stats,
    start_gateway,
    start_simulator,
    wait_http,
    wrk,
)
from tesseract_web.run import stop_processes


async def taken_in_turn(
    urls: dict[str, str], headers: dict[str, str], n: int
) -> dict[str, list[float]]:
    """`n` sequential requests to each gateway (ms), taken in turn: one to each, in the
    order given, then the next. Every side meets the same moments of a shared machine,
    whose speed here moves by more than a limit costs from one second to the next."""
    out: dict[str, list[float]] = {mode: [] for mode in urls}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            for mode, url in urls.items():
                t0 = time.perf_counter()
                async with session.post(url, json=BODY, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{mode} {r.status}: {await r.text()}")
                out[mode].append((time.perf_counter() - t0) * 1000)
    return out


async def sequential(url: str, headers: dict[str, str], n: int) -> list[float]:
    """`n` sequential requests to one gateway (ms)."""
    return (await taken_in_turn({url: url}, headers, n))[url]


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


#: The gateways compared: as deployed; limits on with every admission answered before
#: the backend is called (no overlap, `routing.gateway.admission.Admission.overlap`);
#: limits off.
MODES = {
    "on": {"TESSERACT_LIMITS": "1"},
    "waited": {
        "TESSERACT_LIMITS": "1",
        "TESSERACT_ADMISSION_OVERLAP": "0",
        "TESSERACT_ADMISSION_DEFER": "0",
    },
    "off": {"TESSERACT_LIMITS": "0"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    parser.add_argument(
        "--in-process-only",
        action="store_true",
        help="only the in-process admission paths, against REDIS_URL (prints, writes nothing)",
    )
    args = parser.parse_args()
    if args.in_process_only:
        for name, us in uvloop.run(in_process(os.environ["REDIS_URL"], 2000)).items():
            print(f"{us:8.0f} µs  {name}")
        return
    rounds = 3 if args.quick else 9
    n = 200 if args.quick else 500
    seconds = 3.0 if args.quick else 6.0

    work = Path(tempfile.mkdtemp(prefix="tesseract-bench-limits-"))
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = bench_env(work, sim_url)

    with ExitStack() as stack:
        simulator = start_simulator(sim_port, env, work)
        stack.callback(simulator.terminate)
        key = catalog_and_key(env)
        headers = {"Authorization": f"Bearer {key}"}
        wait_http(f"{sim_url}/health")
        results = compare(
            env, work, headers, rounds=rounds, n=n, seconds=seconds,
        )  # fmt: skip
        with gateways(env, work, headers, "checked", modes=("on",)) as (urls, _):
            checked = asyncio.run(has_limit_headers(urls["on"], headers))
        micro = uvloop.run(in_process(env["REDIS_URL"], 2000 if not args.quick else 500))
    write(results, rounds=rounds, n=n, seconds=seconds, checked=checked, micro=micro)


def waits(pid: int) -> int:
    """How many times a process has gone to sleep waiting (voluntary context switches):
    each is a wait for the CPU again once woken, which a loaded machine makes long."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def redis_cpu_s(redis_url: str) -> float:
    return redis_stats(redis_url)[0]


@contextmanager
def gateways(
    env: dict[str, str],
    work: Path,
    headers: dict[str, str],
    tag: str,
    modes: Sequence[str] = tuple(MODES),
) -> Iterator[tuple[dict[str, str], dict[str, int]]]:
    """A fresh gateway per mode (`MODES`; uvicorn, as `make bench-gateway`'s default
    server), started together, each its own live process, answering and warmed up (key
    cache, world, scripts, and 32 connections' pools and buffers: a new process's first
    seconds at c=32 cost more CPU per request than its later ones): their URLs and worker
    pids. Stopped on leaving."""
    procs: list[subprocess.Popen[bytes]] = []
    urls, pids = {}, {}
    try:
        for mode in modes:
            port = free_port()
            log = work / f"gateway-{mode}-{tag}.log"
            procs.append(start_gateway(port, {**env, **MODES[mode]}, log))
            urls[mode] = f"http://127.0.0.1:{port}/v1/chat/completions"
            pids[mode] = procs[-1].pid
        for url in urls.values():
            wait_http(url.replace("/chat/completions", "/models"), headers=headers)
        # Two modes given one port (free_port lets it go before uvicorn binds) would be
        # answered by one process: each must be up, on a port of its own.
        if len(set(urls.values())) < len(urls) or any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a gateway did not start on a port of its own (logs in {work})")
        for mode, url in urls.items():
            asyncio.run(sequential(url, headers, 50))
            load_at_32(Target(mode, url, headers, BODY), 1)  # warm up
        yield urls, pids
    finally:
        stop_processes(procs, timeout_s=30)


def load_at_32(target: Target, seconds: int) -> float:
    """`seconds` at 32 concurrent requests: req/s, by wrk when installed, else by the
    aiohttp load generator."""
    if shutil.which("wrk"):
        return wrk(target, stream=False, seconds=seconds)
    return asyncio.run(throughput(target.url, target.headers, seconds))


#: The load at 32 connections is taken in slices of about this many seconds, the
#: gateways' slices interleaved: over one contiguous run per side the machine's speed
#: moved by more than the limits cost between the sides (up to 1.5× between rounds).
SLICE_S = 2.0


def compare(
    env: dict[str, str],
    work: Path,
    headers: dict[str, str],
    *,
    rounds: int,
    n: int,
    seconds: float,
) -> dict[str, dict[str, list[float]]]:
    """The gateways (`MODES`) round by round, fresh processes each round, measured in
    rotating order: per round, each one's p50 and p99 of `n` sequential requests, its
    req/s at 32 concurrent (wrk when installed, else the aiohttp load generator), and the
    CPU time per request under that load of the gateway's process and of Redis (what a
    machine to itself would turn into throughput; the wall-clock req/s of a shared
    machine swing with its other load). The load is taken in interleaved slices of
    about SLICE_S seconds, `seconds` in all per gateway, each slice's gateways in
    rotating order.

    Fresh processes every round, because on this kind of machine two processes of the
    same code differ by about a tenth in CPU per request (memory layout, hash seeds), as
    much as what is measured: one process per mode for the whole run would measure
    that draw; a new draw per round lets the medians over rounds average it out."""
    redis_url = env["REDIS_URL"]
    results: dict[str, dict[str, list[float]]] = {
        m: {"p50": [], "p99": [], "rps": [], "cpu_us": [], "redis_cpu_us": [], "waits": []}
        for m in MODES
    }
    modes = list(MODES)
    slices = max(1, round(seconds / SLICE_S))
    per = max(1, round(seconds / slices))
    for r in range(rounds):
        with gateways(env, work, headers, f"round-{r + 1}") as (urls, pids):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            waits0 = {mode: waits(pids[mode]) for mode in order}
            latencies = asyncio.run(taken_in_turn({m: urls[m] for m in order}, headers, n))
            for mode in order:
                lat = latencies[mode]
                results[mode]["waits"].append((waits(pids[mode]) - waits0[mode]) / n)
                results[mode]["p50"].append(statistics.median(lat))
                results[mode]["p99"].append(pct(lat, 0.99))
            load = {mode: [0.0, 0.0, 0.0, 0.0] for mode in order}  # requests, s, CPU, Redis
            for s in range(slices):
                # Slices in rotating order: every side meets the same stretches of the
                # machine's speed, as the sequential requests do one by one.
                for mode in order[s % len(order) :] + order[: s % len(order)]:
                    cpu0, redis0 = cpu_s(pids[mode]), redis_cpu_s(redis_url)
                    t0 = time.perf_counter()
                    rps = load_at_32(Target(mode, urls[mode], headers, BODY), per)
                    elapsed = time.perf_counter() - t0  # wrk's own start-up is negligible
                    totals = load[mode]
                    totals[0] += rps * elapsed
                    totals[1] += elapsed
                    totals[2] += cpu_s(pids[mode]) - cpu0
                    totals[3] += redis_cpu_s(redis_url) - redis0
            for mode in order:
                requests, elapsed, cpu, redis_cpu = load[mode]
                results[mode]["rps"].append(requests / elapsed)
                results[mode]["cpu_us"].append(cpu / requests * 1e6)
                results[mode]["redis_cpu_us"].append(redis_cpu / requests * 1e6)
                print(
                    f"round {r + 1} {mode}: p50 {results[mode]['p50'][-1]:.3f} ms, "
                    f"{results[mode]['waits'][-1]:.1f} sleeps/request, "
                    f"{results[mode]['rps'][-1]:.0f} req/s, CPU/request: gateway "
                    f"{results[mode]['cpu_us'][-1]:.0f} µs, Redis "
                    f"{results[mode]['redis_cpu_us'][-1]:.0f} µs",
                    flush=True,
                )
    return results


#: The admission paths compared in process: how replies are parsed × how calls are sent.
PATHS = {
    "before: redis-py, pure-Python parser, one EVALSHA per call": ("python", "alone"),
    "redis-py, hiredis parser, one EVALSHA per call": ("hiredis", "alone"),
    "redis-py, hiredis parser, a pipeline per turn (Cluster's path)": ("hiredis", "client"),
    "after: one auto-pipelined connection (accounts.autopipe, as shipped)": ("hiredis", "auto"),
}


async def in_process(redis_url: str, n: int, rounds: int = 5) -> dict[str, float]:
    """Median µs of: a PING; an admission by each of `PATHS`, alone (c=1) and 32 at once
    (wall time / 32: what each costs the event loop); an XADD, and with its settlement.
    The paths are measured in alternating rounds (medians of round medians)."""
    from decimal import Decimal

    import redis.asyncio as aioredis
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP3Parser

    from accounts import autopipe
    from billing import limits

    parsers = {"python": _AsyncRESP3Parser, "hiredis": _AsyncHiredisParser}
    clients = {
        name: aioredis.Redis.from_url(redis_url, parser_class=cls) for name, cls in parsers.items()
    }
    scripts = {name: limits.Scripts(c) for name, c in clients.items()}
    client = clients["hiredis"]
    lim = limits.Limits(
        "bench", 10**9, 10**12, 10**9, 10**12, Decimal(10**6), Decimal(10**6), Decimal(12)
    )
    keys = limits.redis_keys(org_id=999_999_999, key_id=1, month="2026-11")
    await limits.seed(client, keys, org_nano=0, key_nano=0)
    record = b"x" * 900  # about a usage record's size
    stream = "bench:limits:usage"
    verdict = await limits.admit(scripts["hiredis"], keys, lim, tokens=30, reserve_nano=1000)
    settle = limits.settle_args(
        verdict, reserved_tokens=30, actual_tokens=20, reserve_nano=1000, actual_nano=800
    )
    args = (10**9, 10**9, 10**12, 10**12, 30, 10**15, 10**15, 1000, 120_000, 10**9)

    client_pipe = limits.Scripts(client)
    client_pipe.pipe = autopipe.ClientPipe(client)
    pipe = scripts["hiredis"].pipe

    def path(parser: str, sent: str) -> Any:
        s = scripts[parser]
        if sent != "alone":
            s = client_pipe if sent == "client" else s
            return lambda: limits.admit(s, keys, lim, tokens=30, reserve_nano=1000)

        async def unbatched() -> None:  # what admission did before auto-pipelining
            limits.Verdict.from_reply(await s.admit(keys=keys, args=args))

        return unbatched

    async def ping() -> None:
        await pipe.submit([("PING",)])

    xadd_command = ("XADD", stream, "MAXLEN", "~", 1000, "*", b"r", record)

    async def xadd() -> None:
        await pipe.submit([xadd_command])

    async def xadd_settle() -> None:
        sha = scripts["hiredis"].settle.sha
        await pipe.submit([xadd_command, ("EVALSHA", sha, len(keys), *keys, *settle)])

    async def admit_record() -> None:
        await scripts["hiredis"].admit_record(keys, args, stream, record).verdict()

    async def sequential_us(fn: Any, count: int) -> float:
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)

    async def concurrent_us(fn: Any, count: int, c: int = 32) -> float:
        times = []
        for _ in range(max(count // c, 10)):
            t0 = time.perf_counter()
            await asyncio.gather(*(fn() for _ in range(c)))
            times.append((time.perf_counter() - t0) * 1e6 / c)
        return statistics.median(times)

    await client.script_load(limits.SETTLE)
    cases: dict[str, Any] = {"ping": ping, "xadd": xadd, "xadd+settle": xadd_settle}
    for name, (parser, sent) in PATHS.items():
        cases[f"admit c=1: {name}"] = ("seq", path(parser, sent))
        cases[f"admit c=32, per call: {name}"] = ("conc", path(parser, sent))
    cases[RECORDED_ALONE] = ("seq", admit_record)
    cases[RECORDED_MANY] = ("conc", admit_record)
    per_round: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        names = list(cases) if r % 2 == 0 else list(reversed(cases))
        for name in names:
            case = cases[name]
            kind, fn = case if isinstance(case, tuple) else ("seq", case)
            measure = concurrent_us if kind == "conc" else sequential_us
            per_round[name].append(await measure(fn, n))
    await client.delete(*keys, stream)
    for c in clients.values():
        await c.aclose()
    measured = {name: statistics.median(v) for name, v in per_round.items()}
    measured[PYTHON_PATH] = await python_path(redis_url, n)
    return measured


class _Answered:
    """A pipe that answers every admission at once, as an admitted one: what is left of
    an admission's cost is the gateway's own Python."""

    REPLY = (0, 29_480_000, 600, 599, 1_000_000, 999_000, 41_000, 123_456_789, 0, 1, 0)

    def submit(self, commands: Any, *, orphan: Any = None) -> asyncio.Future[list[Any]]:
        future = asyncio.get_running_loop().create_future()
        future.set_result([list(self.REPLY)])
        return future


PYTHON_PATH = "admit + settle, the gateway's Python alone (8 candidates priced apart; no Redis)"


async def python_path(redis_url: str, n: int, rounds: int = 5) -> float:
    """Median µs (of round medians) of `Admission.prepare`, `.ask` and `.settlement` for a
    plan of 8 candidates, each priced apart, with Redis's answer given at once."""
    from decimal import Decimal
    from types import SimpleNamespace

    import django
    import redis.asyncio as aioredis

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")
    django.setup()  # the gateway's modules read the catalog's models and the settings

    from backends.snapshot import Endpoint
    from billing import limits
    from routing.engine import Request as RouteRequest
    from routing.gateway.admission import Admission
    from routing.gateway.parse import Parsed

    endpoints = {
        f"b{i}": Endpoint(
            backend_id=f"b{i}",
            url="http://b/v1",
            adapter="openai",
            model="m",
            region="r",
            cluster="c",
            chip="h100",
            price_input_per_mtok=0.12 + i / 100,
            price_output_per_mtok=0.6 + i / 50,
            certifications=(),
            jurisdictions=(),
        )
        for i in range(8)
    }
    lim = limits.Limits("pro", 600, 10**6, None, None, Decimal(500), None, Decimal(20))
    call = SimpleNamespace(
        key=SimpleNamespace(id=4, org_id=3, limits=lim),
        # the gateway's own parsed request: a stand-in would drift from what it reads
        parsed=Parsed(
            endpoint="chat/completions",
            body={},
            model="m",
            stream=False,
            include_usage=False,
            route=RouteRequest(model="m", input_tokens=120, max_output_tokens=256),
            strategy=None,
        ),
    )
    world: Any = SimpleNamespace(endpoints=endpoints)
    plan: Any = SimpleNamespace(choices=[SimpleNamespace(backend_id=b) for b in endpoints])
    client = aioredis.Redis.from_url(redis_url)
    admission = Admission(client, enabled=True)
    admission.scripts.pipe = _Answered()  # type: ignore[assignment]
    record: Any = SimpleNamespace(input_tokens=120, output_tokens=100, created_at=time.time())
    served = endpoints["b0"]

    async def once() -> None:
        ask = admission.prepare(call, plan, world, 120.0)  # type: ignore[arg-type]
        assert ask is not None
        ticket = await admission.ask(ask)
        admission.settlement(ticket, served, record)

    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            await once()
            times.append((time.perf_counter() - t0) * 1e6)
        medians.append(statistics.median(times))
    await client.aclose()
    return statistics.median(medians)


#: A served request's admission with its record, as shipped for non-streamed requests
#: with room to spare (`Admission.defer`): the record's XADD inside the script.
RECORDED_ALONE = "admit with the usage record (ADMIT_RECORD), c=1"
RECORDED_MANY = "admit with the usage record (ADMIT_RECORD), c=32, per call"

_BEFORE, *_, _AFTER = PATHS
ALONE_BEFORE, ALONE_AFTER = f"admit c=1: {_BEFORE}", f"admit c=1: {_AFTER}"
MANY_BEFORE, MANY_AFTER = f"admit c=32, per call: {_BEFORE}", f"admit c=32, per call: {_AFTER}"


async def has_limit_headers(url: str, headers: dict[str, str]) -> bool:
    """Proof that the "on" gateway ran the script: its answers carry the headers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=BODY, headers=headers) as r,
    ):
        await r.read()
        return "x-ratelimit-remaining-requests" in r.headers


LOAD = (
    "wrk, 32 connections"
    if shutil.which("wrk")
    else "an aiohttp load generator: wrk is not installed; it shares the cores, so req/s are "
    "lower than with wrk"
)


MODE_NAMES = {"on": "on", "waited": "on, admission answered first", "off": "off"}


def median_interval(values: Sequence[float], *, level: float = 0.9) -> tuple[float, float]:
    """A bootstrap interval for the median of `values` (the rounds' differences):
    the `level` share of the medians of 10,000 resamples of the rounds (with
    replacement) lies between the two ends. Seeded: the same rounds give the same
    interval."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(10_000))
    tail = (1 - level) / 2
    return medians[int(tail * len(medians))], medians[int((1 - tail) * len(medians)) - 1]


def write(
    results: dict[str, dict[str, list[float]]],
    *,
    rounds: int,
    n: int,
    seconds: float,
    checked: bool,
    micro: dict[str, float],
    command: str = "make bench-limits",
) -> tuple[float, float]:
    """limits.md; returns (p50 added in ms, share of throughput lost in %)."""
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    on, off = med["on"], med["off"]
    unpaired = on["p50"] - off["p50"]
    unpaired_loss = (off["rps"] - on["rps"]) / off["rps"] * 100
    # Each round measures its modes side by side, on processes of its own: their
    # differences pair out the machine's speed, which changes between rounds by more
    # than what is measured. The headline is the median of the rounds' differences.
    paired = [a - b for a, b in zip(results["on"]["p50"], results["off"]["p50"], strict=True)]
    paired_loss = [
        (b - a) / b * 100 for a, b in zip(results["on"]["rps"], results["off"]["rps"], strict=True)
    ]
    cpu_paired = [
        (1 - b / a) * 100
        for a, b in zip(results["on"]["cpu_us"], results["off"]["cpu_us"], strict=True)
    ]
    overhead, loss = statistics.median(paired), statistics.median(paired_loss)
    p50_low, p50_high = median_interval(paired)
    loss_low, loss_high = median_interval(paired_loss)
    cpu_low, cpu_high = median_interval(cpu_paired)
    lines = [
        "# Rate limits and budgets: what they cost the gateway",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared with other work; run with `nice`). Upstream: the "
        "backend simulator at time scale 0. Gateways on one Redis and one catalog, "
        "`TESSERACT_LIMITS=1` and `=0` (and `=1` with every admission answered before the "
        "backend is called), "
        "fresh processes every round; medians of "
        f"{rounds} rounds, each {n} sequential requests to each gateway taken in turn "
        f"(latency) and {seconds:.0f} s at 32 concurrent requests on each, in slices of "
        f"about {SLICE_S:.0f} s interleaved in rotating order ({LOAD}). What limits cost "
        "is the median of the rounds' differences (on − off, within each round), with a "
        "bootstrap 90% interval over the rounds. "
        f"Limit headers present with limits on: {'yes' if checked else 'NO'}.",
        "",
        "| limits | p50 ms | p99 ms | sleeps/request c=1 | req/s c=32 "
        "| gateway CPU µs/request | Redis CPU µs/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in med:
        m = med[mode]
        lines.append(
            f"| {MODE_NAMES[mode]} | {m['p50']:.3f} | {m['p99']:.3f} | {m['waits']:.1f} | "
            f"{m['rps']:.0f} | {m['cpu_us']:.0f} | {m['redis_cpu_us']:.0f} |"
        )
    waited = med.get("waited")
    cpu_loss = (1 - off["cpu_us"] / on["cpu_us"]) * 100
    both_loss = 1 - (off["cpu_us"] + off["redis_cpu_us"]) / (on["cpu_us"] + on["redis_cpu_us"])
    lines += [
        "",
        "| measure | measured | target |",
        "|---|---|---|",
        f"| p50 added by limits and budgets: the median of the rounds' differences "
        f"(90% interval {p50_low:+.3f} to {p50_high:+.3f} ms; range {min(paired):+.2f} to "
        f"{max(paired):+.2f} ms) | {overhead:.3f} ms | ≤ 0.15 ms |",
        f"| the same, median on − median off | {unpaired:.3f} ms | (for orientation) |",
        f"| throughput lost: the median of the rounds' (wall-clock req/s; 90% interval "
        f"{loss_low:+.1f} to {loss_high:+.1f}%; range {min(paired_loss):+.0f}% to "
        f"{max(paired_loss):+.0f}%) | {loss:.1f}% | ≤ 10% |",
        f"| the same, median on vs median off | {unpaired_loss:.1f}% | (for orientation) |",
        f"| throughput lost, from the gateway's CPU per request: the median of the "
        f"rounds' (90% interval {cpu_low:+.1f} to {cpu_high:+.1f}%) | "
        f"{statistics.median(cpu_paired):.1f}% | (for orientation) |",
        f"| the same, median on vs median off | {cpu_loss:.1f}% | (for orientation) |",
        f"| the same, the gateway and Redis together | {both_loss * 100:.1f}% | (for "
        "orientation) |",
        *(
            [
                f"| p50 added with every admission answered before the backend is called "
                f"(deferring and overlapping off; median − median off) | "
                f"{waited['p50'] - off['p50']:.3f} ms | (for orientation) |"
            ]
            if waited is not None
            else []
        ),
        "",
        "As deployed, a non-streamed request whose key's last answer left room to spare "
        "calls its backend with no Redis command, and is admitted once served, in one "
        "atomic script with its usage record (`routing.gateway.admission.Admission.defer`, "
        "`TESSERACT_ADMISSION_DEFER`), while its process has no other request in flight: "
        "here, the sequential requests after the first; under 32 concurrent requests they "
        "wait for their admissions. A refusal would meter nothing; none is refused here. The "
        '"answered first" gateway has deferring and overlapping off '
        "(`TESSERACT_ADMISSION_DEFER=0`, `TESSERACT_ADMISSION_OVERLAP=0`).",
        "",
        "Sleeps per request: the gateway worker's voluntary context switches during the "
        "sequential requests, per request: each time it waits on a socket (the client, "
        "Redis, the backend) it leaves the CPU, and once woken waits for it again behind "
        "the machine's other work. "
        "CPU per request is the gateway process's (or Redis's) user + system time during "
        "the c=32 run divided by the requests it served: a machine to itself turns it into "
        "throughput (one worker, CPU-bound), and it moves much less with the machine's "
        "other load than wall-clock req/s do.",
        "",
        "In process, against the same Redis (median µs; alternating rounds; c=32: wall "
        "time of 32 concurrent admissions / 32, what each costs the event loop):",
        "",
        "| call | µs |",
        "|---|---|",
        *(f"| {name} | {us:.0f} |" for name, us in micro.items()),
        "",
        f"Alone, an admission is one round trip: {micro[ALONE_AFTER]:.0f} µs as shipped "
        f"({micro[ALONE_BEFORE]:.0f} µs before), against {micro['ping']:.0f} µs for a bare "
        f"PING. At 32 concurrent requests each costs {micro[MANY_AFTER]:.0f} µs "
        f"({micro[MANY_BEFORE]:.0f} µs before). The PING and the XADDs go through the "
        "same auto-pipelined connection as shipped admissions. Settlement adds "
        f"{micro['xadd+settle'] - micro['xadd']:.0f} µs to the usage XADD it rides with. "
        f"Beside the round trip, the gateway's own Python for an admission and its "
        f"settlement (pricing a plan of 8 candidates, the script's arguments and reply, "
        f"the headers) takes {micro[PYTHON_PATH]:.0f} µs. A served request admitted "
        f"with its record (as shipped for non-streamed requests with room to spare) "
        f"sends one script instead of the admission and the XADD with its settlement: "
        f"{micro[RECORDED_ALONE]:.0f} µs alone and {micro[RECORDED_MANY]:.0f} µs each "
        f"of 32, against {micro['xadd+settle']:.0f} µs for the XADD and settlement "
        f"alone, which it replaces with the admission.",
        "",
        f"Per round ({' / '.join(results)}):",
        "",
        "| round | "
        + " | ".join(f"{what} {mode}" for what in ("p50", "req/s", "CPU µs") for mode in results)
        + " |",
        "|---|" + "---|" * 3 * len(results),
    ]
    for i in range(rounds):
        cells = [
            f"{results[mode][what][i]:{form}}"
            for what, form in (("p50", ".3f"), ("rps", ".0f"), ("cpu_us", ".0f"))
            for mode in results
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    notes.write(RESULTS / "limits.md", "\n".join(lines))
    print("\n".join(lines))
    return overhead, loss


if __name__ == "__main__":
    main()
