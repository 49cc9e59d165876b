"""Gateway overhead: Tesseract vs a direct call vs the LiteLLM proxy, side by side.

    make bench-gateway        (python -m bench.gateway [--quick])

One run starts, on loopback:
  * the backend simulator with `--time-scale 0` (answers at once: what is measured is
    the proxies, not the model);
  * Tesseract: one uvicorn worker (uvloop, httptools) serving `tesseract_web.asgi`,
    with a fresh SQLite catalog holding the demo world, a real Redis (REDIS_URL, or an
    embedded one), API-key auth, routing and metering all on;
  * the LiteLLM proxy (`litellm[proxy]` in its own virtualenv, `.venv-litellm`, made
    on first use), one worker, fronting the same simulator deployment.

Then, for each target:
  * latency at concurrency 1 (non-streamed and time to first streamed chunk), from a
    Python client, N sequential requests: p50 / p99, and the overhead over direct;
  * throughput at concurrency 32 with wrk (Debian's `wrk`), non-streamed and streamed;
  * the gateway worker's resident memory after the load.

Rate limits and budgets: Tesseract gateways with limits on, on with every admission
answered first, and off, fresh processes every round, are compared in rotating order
(`bench.limits.compare`: p50 at concurrency 1, wrk req/s at 32), so what limits cost is
measured before and after in the same run (`--no-limits` skips it).

Results go to bench/results/gateway.md and gateway.csv (and limits.md). The machine is
shared and has 2 cores: the load generator, the proxy and the upstream compete for them,
so compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench import notes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = sys.executable
LITELLM_VENV = ROOT / ".venv-litellm"
LITELLM = "litellm[proxy]==1.108.7"
MODEL = "llama-3.1-8b-instruct"
DEPLOYMENT = f"westeurope-tesseract-nvidia-h100--{MODEL}"
#: LiteLLM refuses to start without a master key; with it, both proxies authenticate.
LITELLM_KEY = "sk-bench-0123456789abcdef"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


SHOW_DEMO_KEY = (
    "from accounts.demo import demo_accounts_ensure; print('KEY', demo_accounts_ensure().api_key)"
)

#: Limits no benchmark reaches: every request is checked, none is refused.
UNREACHABLE_TIER = """
from decimal import Decimal
from accounts.models import Organization
from billing.models import SlaTier
from billing.subscriptions import budget_set, tier_change
from billing.tiers import ENTERPRISE
fields = {**ENTERPRISE.fields(), "slug": "bench", "name": "Bench (unreachable limits)",
          "requests_per_minute": 10**9, "tokens_per_minute": 10**12}
tier, _ = SlaTier.objects.update_or_create(slug="bench", defaults=fields)
for org in Organization.objects.all():
    tier_change(org=org, tier=tier)
    budget_set(org=org, monthly_budget_usd=Decimal("1000000"))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2)
            return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def bench_env(work: Path, sim_url: str) -> dict[str, str]:
    """A throwaway SQLite catalog in `work`, the simulator at `sim_url`, a real Redis."""
    env = {
        **os.environ,
        "DEBUG": "1",
        "TESSERACT_VAR_DIR": str(work),
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "TESSERACT_SIMULATOR_URL": sim_url,
        "LOG_LEVEL": "WARNING",
    }
    if "REDIS_URL" not in env:
        from tesseract_web import embedded_redis

        env["REDIS_URL"] = embedded_redis.start()
    return env


def start_simulator(port: int, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    return start(
        [PY, "-m", "backends.simulator", "--port", str(port), "--time-scale", "0"],
        env,
        work / "simulator.log",
    )


def catalog_and_key(env: dict[str, str]) -> str:
    """Migrate, load the demo world, and return a fresh demo API key. The demo org's
    rate limits and budget stay on, out of reach (the Free tier allows 60 req/min)."""
    manage = [PY, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run(
        [*manage, "load_demo_world"], env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    key = subprocess.run(
        [*manage, "shell", "-c", SHOW_DEMO_KEY],
        env=env, check=True, cwd=ROOT, capture_output=True, text=True,
    ).stdout.split("KEY ")[1].strip()  # fmt: skip
    subprocess.run([*manage, "shell", "-c", UNREACHABLE_TIER], env=env, check=True, cwd=ROOT)
    return key


#: How the proxies are served (`--server`): the same way for Tesseract and the ceiling.
SERVERS = ("uvicorn", "granian")


def serve(
    app: str,
    port: int,
    env: dict[str, str],
    log: Path,
    *,
    server: str = "uvicorn",
    workers: int = 1,
) -> subprocess.Popen[bytes]:
    """An ASGI app on `port`: uvicorn (uvloop, httptools) or granian (Rust HTTP, uvloop)."""
    if server == "granian":
        cmd = [
            str(Path(PY).with_name("granian")),
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--runtime-mode",
            "st",
            "--loop",
            "uvloop",
            "--log-level",
            "warning",
            "--no-ws",
            app,
        ]
    else:
        cmd = [
            PY,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return start(cmd, env, log)  # fmt: skip


def start_gateway(
    port: int, env: dict[str, str], log: Path, *, server: str = "uvicorn", workers: int = 1
) -> subprocess.Popen[bytes]:
    """Tesseract's gateway process (`/v1` only)."""
    return serve("tesseract_web.asgi:gateway", port, env, log, server=server, workers=workers)


def start_ceiling(
    port: int, env: dict[str, str], upstream: str, log: Path, *, server: str = "uvicorn"
) -> subprocess.Popen[bytes]:
    """The thinnest forwarding proxy (`bench.ceiling`), served exactly like Tesseract."""
    return serve("bench.ceiling:app", port, {**env, "CEILING_UPSTREAM": upstream}, log,
                 server=server)  # fmt: skip


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    pip = LITELLM_VENV / "bin" / "pip"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    wanted = LITELLM.split("==")[1]
    have = subprocess.run([str(pip), "show", "litellm"], capture_output=True, text=True).stdout
    if f"Version: {wanted}" not in have:
        print(f"installing {LITELLM} into {LITELLM_VENV.name} ...", flush=True)
        subprocess.run([str(pip), "install", "-q", LITELLM], check=True)
    return exe


@dataclass
class Target:
    name: str
    url: str  # chat completions URL
    headers: dict[str, str]
    body: dict[str, object]


# --------------------------------------------------------------------------- measuring


async def latencies(t: Target, n: int, *, stream: bool) -> list[float]:
    """Sequential requests; ms to the full body, or to the first streamed chunk."""
    body = {**t.body, "stream": stream}
    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 20):
            t0 = time.perf_counter()
            async with session.post(t.url, json=body, headers=t.headers) as r:
                if r.status != 200:
                    raise RuntimeError(f"{t.name}: {r.status} {await r.text()}")
                if stream:
                    async for line in r.content:
                        if line.startswith(b"data:"):
                            break
                    elapsed = time.perf_counter() - t0
                    await r.read()
                else:
                    await r.read()
                    elapsed = time.perf_counter() - t0
            if i >= 20:  # warm-up
                out.append(elapsed * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


WRK_LUA = """
wrk.method = "POST"
wrk.body = {body}
{headers}
"""


def wrk(t: Target, *, stream: bool, seconds: int, connections: int = 32) -> float:
    body = json.dumps({**t.body, "stream": stream})
    headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in t.headers.items())
    headers += '\nwrk.headers["Content-Type"] = "application/json"'
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(WRK_LUA.format(body=json.dumps(body), headers=headers))
        script = fh.name
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, t.url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script)
    if "Non-2xx" in out:
        raise RuntimeError(f"{t.name}: wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Costs:
    """What one request costs, measured over a wrk run (the capacity model's inputs)."""

    requests: int
    gateway_cpu_us: float  # the gateway worker's CPU per request
    redis_cpu_us: float  # the Redis server's CPU per request
    redis_commands: float  # commands Redis executed per request (scripts' inner ones too)
    redis_by_command: dict[str, float]
    #: Redis's µs per request in the top-level commands the gateway sends (a script's
    #: time includes its inner commands'): which work lands on which shard
    redis_us_by_command: dict[str, float]
    redis_bytes_in: float  # bytes Redis received per request (commands, records)
    redis_bytes_out: float  # and sent (replies)


TOP_LEVEL = ("evalsha", "xadd", "time", "hset", "hgetall", "get", "set")


def redis_stats(url: str) -> tuple[float, dict[str, int], dict[str, int], tuple[int, int]]:
    """Redis's CPU seconds, calls and µs by command, and bytes in and out, so far."""
    import redis

    client = redis.Redis.from_url(url)
    cpu = client.info("cpu")
    net = client.info("stats")
    stats = {k.removeprefix("cmdstat_"): v for k, v in client.info("commandstats").items()}
    client.close()
    calls = {name: int(stat["calls"]) for name, stat in stats.items()}
    usec = {name: int(stat["usec"]) for name, stat in stats.items()}
    io = (int(net["total_net_input_bytes"]), int(net["total_net_output_bytes"]))
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), calls, usec, io


def measure_costs(t: Target, pid: int, redis_url: str, *, stream: bool, seconds: int) -> Costs:
    cpu0, (rcpu0, calls0, usec0, io0) = cpu_s(pid), redis_stats(redis_url)
    rps = wrk(t, stream=stream, seconds=seconds)
    cpu1, (rcpu1, calls1, usec1, io1) = cpu_s(pid), redis_stats(redis_url)
    n = max(int(rps * seconds), 1)
    ignored = {"info", "ping", "client|setinfo", "hello"}
    by = {
        c: (calls1[c] - calls0.get(c, 0)) / n
        for c in calls1
        if c not in ignored and calls1[c] > calls0.get(c, 0)
    }
    us = {c: (usec1[c] - usec0.get(c, 0)) / n for c in TOP_LEVEL if c in usec1}
    rcpu = (rcpu1 - rcpu0) * 1e6 / n
    bytes_in, bytes_out = ((b - a) / n for a, b in zip(io0, io1, strict=True))
    return Costs(n, (cpu1 - cpu0) * 1e6 / n, rcpu, sum(by.values()), by, us, bytes_in, bytes_out)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn forks none with 1 worker)."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True
        ).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total / 1024


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, shorter runs")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--no-limits", action="store_true", help="skip the limits on/off rounds")
    parser.add_argument("--no-workers", action="store_true", help="skip the 1 vs 2 workers run")
    parser.add_argument(
        "--server",
        choices=SERVERS,
        default="uvicorn",
        help="serve Tesseract and the ceiling with this ASGI server",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    n = 300 if args.quick else 2000
    seconds = 5 if args.quick else 10

    work = Path(tempfile.mkdtemp(prefix="tesseract-bench-"))
    sim_port, gw_port, llm_port, ceil_port = free_port(), free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = bench_env(work, sim_url)

    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(lambda: [p.terminate() for p in procs])
        procs.append(start_simulator(sim_port, env, work))
        key = catalog_and_key(env)
        gateway = start_gateway(gw_port, env, work / "gateway.log", server=args.server)
        procs.append(gateway)
        wait_http(f"{sim_url}/health")
        wait_http(
            f"http://127.0.0.1:{gw_port}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )

        direct_url = f"{sim_url}/d/{DEPLOYMENT}/v1/chat/completions"
        ceiling = start_ceiling(
            ceil_port, env, direct_url, work / "ceiling.log", server=args.server
        )
        procs.append(ceiling)
        wait_http(f"http://127.0.0.1:{ceil_port}/", timeout=60)
        targets = [
            Target("direct", direct_url, {}, BODY),
            Target("ceiling", f"http://127.0.0.1:{ceil_port}/v1/chat/completions", {}, BODY),
            Target(
                "tesseract",
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                {"Authorization": f"Bearer {key}"},
                {**BODY, "tesseract": {"regions": ["westeurope"]}},
            ),
        ]
        if not args.no_litellm:
            exe = ensure_litellm()
            config = work / "litellm.yaml"
            config.write_text(
                "model_list:\n"
                f"  - model_name: {MODEL}\n"
                "    litellm_params:\n"
                f"      model: openai/{MODEL}\n"
                f"      api_base: {sim_url}/d/{DEPLOYMENT}/v1\n"
                "      api_key: unused\n"
            )
            procs.append(
                start(
                    [
                        str(exe),
                        "--config",
                        str(config),
                        "--port",
                        str(llm_port),
                        "--num_workers",
                        "1",
                    ],
                    {
                        **os.environ,
                        "LITELLM_LOG": "ERROR",
                        "LITELLM_MASTER_KEY": LITELLM_KEY,
                        # No model hub here: without this, LiteLLM retries downloading a
                        # Llama 3 tokenizer for ~23 s on every request.
                        "HF_HUB_OFFLINE": "1",
                    },
                    work / "litellm.log",
                )
            )
            wait_http(f"http://127.0.0.1:{llm_port}/health/liveliness", timeout=180)
            targets.append(
                Target(
                    "litellm",
                    f"http://127.0.0.1:{llm_port}/v1/chat/completions",
                    {"Authorization": f"Bearer {LITELLM_KEY}"},
                    BODY,
                )
            )

        rows = []
        for t in targets:
            print(f"measuring {t.name} ...", flush=True)
            whole = asyncio.run(latencies(t, n, stream=False))
            first = asyncio.run(latencies(t, n, stream=True))
            rps = wrk(t, stream=False, seconds=seconds)
            rps_stream = wrk(t, stream=True, seconds=seconds)
            rows.append(
                {
                    "target": t.name,
                    "p50_ms": statistics.median(whole),
                    "p99_ms": pct(whole, 0.99),
                    "ttft_p50_ms": statistics.median(first),
                    "ttft_p99_ms": pct(first, 0.99),
                    "rps_c32": rps,
                    "rps_c32_stream": rps_stream,
                    "rss_mb": rss_mb(gateway.pid) if t.name == "tesseract" else None,
                }
            )
        limits_cost = None
        if not args.no_limits:
            limits_cost = measure_limits(env, targets[2], work, quick=args.quick)
        print("measuring the cost of a request ...", flush=True)
        costs = {
            (t.name, stream): measure_costs(
                t, pid, env["REDIS_URL"], stream=stream, seconds=seconds
            )
            for t, pid in ((targets[1], ceiling.pid), (targets[2], gateway.pid))
            for stream in (False, True)
        }
        workers = None
        if not args.no_workers:
            workers = measure_workers(env, targets[2], work, args.server, seconds, procs)
    write(rows, n=n, seconds=seconds, limits_cost=limits_cost, workers=workers, costs=costs)


def measure_workers(
    env: dict[str, str],
    tesseract: Target,
    work: Path,
    server: str,
    seconds: int,
    procs: list[subprocess.Popen[bytes]],
) -> dict[int, tuple[float, float]]:
    """Throughput (non-streamed, streamed; wrk, 32 connections) of one gateway port
    served by 1 and by 2 worker processes, measured in that order in this run."""
    out: dict[int, tuple[float, float]] = {}
    for n in (1, 2):
        port = free_port()
        log = work / f"gateway-{n}-workers.log"
        proc = start_gateway(port, env, log, server=server, workers=n)
        procs.append(proc)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_http(url.replace("/chat/completions", "/models"), headers=tesseract.headers)
        target = Target(f"tesseract ×{n}", url, tesseract.headers, tesseract.body)
        print(f"measuring {target.name} workers ...", flush=True)
        wrk(target, stream=False, seconds=2)  # every worker warm
        out[n] = (
            wrk(target, stream=False, seconds=seconds),
            wrk(target, stream=True, seconds=seconds),
        )
        proc.terminate()
        proc.wait(timeout=30)
    return out


def measure_limits(
    env: dict[str, str], tesseract: Target, work: Path, *, quick: bool
) -> tuple[float, float]:
    """The gateway with limits on, with every admission answered first, and off, fresh
    processes every round (`bench.limits.compare`): (p50 added in ms, share of throughput
    lost in %). Also writes limits.md."""
    from bench import limits

    rounds, n, seconds = (3, 200, 3.0) if quick else (9, 500, 6.0)
    print("measuring limits on / off (fresh gateways every round) ...", flush=True)
    results = limits.compare(
        env, work, tesseract.headers, rounds=rounds, n=n, seconds=seconds,
    )  # fmt: skip
    checked = asyncio.run(limits.has_limit_headers(tesseract.url, tesseract.headers))
    micro = limits.uvloop.run(limits.in_process(env["REDIS_URL"], 500 if quick else 2000))
    return limits.write(
        results, rounds=rounds, n=n, seconds=seconds, checked=checked, micro=micro,
        command="make bench-gateway",
    )  # fmt: skip


def ceiling_ratios(d: dict[str, Any], g: dict[str, Any], c: dict[str, Any]) -> dict[str, float]:
    """Tesseract against the ceiling proxy of the same run: overhead (over the direct
    call) as a multiple of the ceiling's, throughput as a share of the ceiling's."""
    return {
        "overhead_x": (g["p50_ms"] - d["p50_ms"]) / max(c["p50_ms"] - d["p50_ms"], 1e-3),
        "ttft_overhead_x": (g["ttft_p50_ms"] - d["ttft_p50_ms"])
        / max(c["ttft_p50_ms"] - d["ttft_p50_ms"], 1e-3),
        "throughput": g["rps_c32"] / c["rps_c32"],
        "throughput_stream": g["rps_c32_stream"] / c["rps_c32_stream"],
    }


def ceiling_lines(d: dict[str, Any], g: dict[str, Any], c: dict[str, Any]) -> list[str]:
    r = ceiling_ratios(d, g, c)
    return [
        f"| ceiling overhead p50 (ceiling − direct) | {c['p50_ms'] - d['p50_ms']:.2f} ms "
        "| (for orientation) |",
        f"| overhead p50 vs the ceiling's | {r['overhead_x']:.2f}× | ≤ 2× |",
        f"| TTFT added p50 vs the ceiling's | {r['ttft_overhead_x']:.2f}× | ≤ 2× |",
        f"| throughput vs the ceiling, non-streamed | {r['throughput']:.0%} | ≥ 50% |",
        f"| throughput vs the ceiling, streamed | {r['throughput_stream']:.0%} | ≥ 50% |",
    ]


def write(
    rows: list[dict[str, object]],
    *,
    n: int,
    seconds: int,
    limits_cost: tuple[float, float] | None = None,
    workers: dict[int, tuple[float, float]] | None = None,
    costs: dict[tuple[str, bool], Costs] | None = None,
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "gateway.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    by = {r["target"]: r for r in rows}
    d, g, c = by["direct"], by["tesseract"], by["ceiling"]
    lines = [
        "# Gateway overhead",
        "",
        f"`make bench-gateway`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared). Upstream: the backend simulator at time scale 0. "
        f"Latency: {n} sequential requests after 20 warm-up; throughput: wrk, 32 connections, "
        f"{seconds} s. LiteLLM: `{LITELLM}`, one worker, `HF_HUB_OFFLINE=1` (no model hub "
        "on this machine).",
        "",
        "| target | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms | req/s c=32 "
        "| req/s c=32 streamed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['ttft_p50_ms']:.2f} | "
            f"{r['ttft_p99_ms']:.2f} | {r['rps_c32']:.0f} | {r['rps_c32_stream']:.0f} |"
        )
    lines += [
        "",
        "| measure | Tesseract | target |",
        "|---|---|---|",
        f"| overhead p50 (Tesseract − direct) | {g['p50_ms'] - d['p50_ms']:.2f} ms | ≤ 1 ms |",
        f"| overhead p99 | {g['p99_ms'] - d['p99_ms']:.2f} ms | ≤ 5 ms |",
        f"| TTFT added, p50 | {g['ttft_p50_ms'] - d['ttft_p50_ms']:.2f} ms | ≤ 1 ms |",
        f"| resident memory of the worker after load | {g['rss_mb']:.0f} MB | ≤ 150 MB |",
        *ceiling_lines(d, g, c),
    ]
    if limits_cost is not None:
        added, lost = limits_cost
        lines += [
            f"| rate limits and budgets: p50 added (the median of the rounds' on − off, "
            f"fresh gateways every round; limits.md) | {added:.3f} ms | ≤ 0.15 ms |",
            f"| rate limits and budgets: throughput lost (the median of the rounds'; "
            f"limits.md) | {lost:.1f}% | ≤ 10% |",
        ]
    if "litellm" in by:
        lite = by["litellm"]
        plain = g["rps_c32"] / lite["rps_c32"]
        streamed = g["rps_c32_stream"] / lite["rps_c32_stream"]
        lines += [
            f"| throughput vs LiteLLM, non-streamed | {plain:.1f}× | ≥ 20× |",
            f"| throughput vs LiteLLM, streamed | {streamed:.1f}× | ≥ 20× |",
            f"| LiteLLM overhead p50 | {lite['p50_ms'] - d['p50_ms']:.2f} ms | (for orientation) |",
        ]
    if costs:
        lines += [
            "",
            f"What a request costs (wrk, 32 connections, {seconds} s; CPU from /proc and "
            "Redis's INFO; the inputs of bench/results/scale.md):",
            "",
            "| target | streamed | gateway CPU µs | Redis CPU µs | Redis µs in scripts "
            "| Redis µs in XADD | Redis bytes in / out | Redis commands | by command |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for (name, stream), c in costs.items():
            by = ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(c.redis_by_command.items()) if v >= 0.01
            )
            lines.append(
                f"| {name} | {'yes' if stream else 'no'} | {c.gateway_cpu_us:.0f} "
                f"| {c.redis_cpu_us:.1f} | {c.redis_us_by_command.get('evalsha', 0):.1f} "
                f"| {c.redis_us_by_command.get('xadd', 0):.1f} "
                f"| {c.redis_bytes_in:.0f} / {c.redis_bytes_out:.0f} "
                f"| {c.redis_commands:.2f} | {by or '—'} |"
            )
        (RESULTS / "gateway_costs.json").write_text(
            json.dumps(
                [{"target": n, "stream": st, **vars(c)} for (n, st), c in costs.items()], indent=1
            )
            + "\n"
        )
    if workers:
        one, two = workers[1], workers[2]
        lines += [
            "",
            f"One port, 1 and 2 gateway worker processes (wrk, 32 connections, {seconds} s; "
            f"this machine has {os.cpu_count()} cores, shared with wrk and the simulator):",
            "",
            "| workers | req/s | req/s streamed |",
            "|---|---|---|",
            f"| 1 | {one[0]:.0f} | {one[1]:.0f} |",
            f"| 2 | {two[0]:.0f} ({two[0] / one[0]:.2f}×) "
            f"| {two[1]:.0f} ({two[1] / one[1]:.2f}×) |",
        ]
    notes.write(RESULTS / "gateway.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
