"""The gateway's own CPU per request, with no HTTP server and no load generator.

`make bench-gateway` measures through uvicorn and wrk, which share two cores with the
proxy under test: its req/s move with whatever else runs. This calls the ASGI apps
directly, in one process, `--concurrency` requests at a time, and reads the process's
CPU time (`time.process_time`) per request served: Tesseract's gateway app (as
`tesseract_web.asgi:gateway` serves it: authentication, routing, limits and budgets,
metering, against the real Redis and the backend simulator) and the ceiling
(`bench.ceiling`, the thinnest forwarding proxy) take turns, round by round, so both
meet the same moments of the machine. The ratio of the two is what Tesseract's
features cost in Python; an HTTP server adds the same to both.

    python -m bench.inprocess [--rounds 7] [--requests 3000] [--concurrency 32]
                              [--stream] [--only tesseract --seconds 30]

Writes `bench/results/inprocess[_stream].md`. `--only tesseract --seconds N` keeps just
the gateway busy for N seconds, for a profiler to attach to (`py-spy record --pid`; its
pid is printed) and writes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench import notes
from bench.gateway import (
    BODY,
    DEPLOYMENT,
    PY,
    RESULTS,
    ROOT,
    bench_env,
    catalog_and_key,
    free_port,
    start_simulator,
    wait_http,
)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def _scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _one(app: App, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One exchange as a server would make it; returns the status. After the body, the
    app's receive waits until the response is complete, then says the client left."""
    done = asyncio.Event()
    sent_body = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            done.set()

    await app(_scope(path, list(headers)), receive, send)
    return status


async def _load(app: App, path: str, headers: list[tuple[bytes, bytes]], body: bytes,
                requests: int, concurrency: int) -> tuple[float, float]:  # fmt: skip
    """Serve `requests` with `concurrency` in flight; (CPU seconds, wall seconds)."""
    left = requests
    failed: list[int] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status = await _one(app, path, headers, body)
            if status != 200:
                failed.append(status)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. HTTP {failed[0]}")
    return cpu, wall


async def _drive(args: argparse.Namespace, key: str) -> dict[str, Any]:
    from bench import ceiling
    from tesseract_web.asgi import gateway

    stream = {"stream": True} if args.stream else {}
    json_body = [(b"content-type", b"application/json")]
    targets = {
        "ceiling": (ceiling.app, json_body, json.dumps({**BODY, **stream}).encode()),
        "tesseract": (
            gateway,
            [*json_body, (b"authorization", f"Bearer {key}".encode())],
            json.dumps({**BODY, **stream, "tesseract": {"regions": ["westeurope"]}}).encode(),
        ),
    }
    if args.only:
        targets = {args.only: targets[args.only]}
    path = "/v1/chat/completions"
    for app, headers, body in targets.values():  # warm up: connections, caches, the world
        await _load(app, path, headers, body, 500, args.concurrency)
    if args.seconds:
        print(f"pid {os.getpid()}: loading {', '.join(targets)} for {args.seconds} s",
              file=sys.stderr, flush=True)  # fmt: skip
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            for app, headers, body in targets.values():
                await _load(app, path, headers, body, 1000, args.concurrency)
        return {}
    rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in targets}
    order = list(targets)
    for r in range(args.rounds):
        for name in order[r % 2 :] + order[: r % 2]:  # alternate who goes first
            app, headers, body = targets[name]
            cpu, wall = await _load(app, path, headers, body, args.requests, args.concurrency)
            rounds[name].append((cpu / args.requests * 1e6, args.requests / wall))
    return rounds


def _child(args: argparse.Namespace) -> None:
    import uvloop

    key = os.environ.pop("BENCH_KEY")
    rounds = uvloop.run(_drive(args, key))
    print("RESULT " + json.dumps(rounds), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000, help="per target and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--only", choices=("ceiling", "tesseract"))
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    work = Path(tempfile.mkdtemp(prefix="tesseract-inprocess-"))
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = bench_env(work, sim_url)
    env["CEILING_UPSTREAM"] = f"{sim_url}/d/{DEPLOYMENT}/v1/chat/completions"
    simulator = start_simulator(sim_port, env, work)
    try:
        env["BENCH_KEY"] = catalog_and_key(env)
        wait_http(f"{sim_url}/health")
        child = subprocess.run(
            [PY, "-m", "bench.inprocess", "--child", *(argv if argv is not None else sys.argv[1:])],
            env=env, cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        simulator.terminate()
    lines = child.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith("RESULT ")))
    result: dict[str, list[list[float]]] = next(
        (json.loads(line[7:]) for line in lines if line.startswith("RESULT ")), {}
    )
    if not result:
        return
    table = report(result, args)
    print(table)
    if not args.only:
        name = "inprocess_stream.md" if args.stream else "inprocess.md"
        notes.write(RESULTS / name, table)


def report(result: dict[str, list[list[float]]], args: argparse.Namespace) -> str:
    """The run as a results file: CPU µs per request per target, every round, and the
    median of the rounds' own ratios (each round pairs the targets' same moment)."""
    kind = "streamed" if args.stream else "non-streamed"
    lines = [
        "# The gateway's own CPU per request, in process",
        "",
        f"`python -m bench.inprocess{' --stream' if args.stream else ''}`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores "
        f"(shared). ASGI apps called directly, {args.concurrency} requests in flight, "
        f"{kind}; {args.rounds} rounds of {args.requests} requests per target, the targets "
        "in alternating order. CPU from `time.process_time` (the aiohttp client to the "
        "simulator included; no HTTP server).",
        "",
        "| target | CPU µs per request (median) | every round | req/s in process (median) |",
        "|---|---|---|---|",
    ]
    for name, rounds in result.items():
        cpu = statistics.median(c for c, _ in rounds)
        every = " ".join(f"{c:.0f}" for c, _ in rounds)
        rate = statistics.median(r for _, r in rounds)
        lines.append(f"| {name} | {cpu:.1f} | {every} | {rate:.0f} |")
    if {"tesseract", "ceiling"} <= result.keys():
        pairs = zip(result["tesseract"], result["ceiling"], strict=True)
        ratio = statistics.median(t[0] / c[0] for t, c in pairs)
        lines += ["", f"Tesseract / ceiling, CPU per request: **{ratio:.2f}×** "
                  "(the median of the rounds' ratios)."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
