"""Where the gateway's time goes: py-spy samples one Tesseract worker under wrk load.

    make bench-profile        (python -m bench.profile [--seconds 10] [--stream])

The same setup as `make bench-gateway` (the simulator at time scale 0, a fresh SQLite
catalog, a real Redis, limits and metering on); wrk keeps 32 connections busy while
py-spy records the worker (`--native` off, `--idle` off: only time on the CPU). Writes
bench/results/profile[-stream].txt: the functions with the most samples, by own time
and by total time (own + callees), and a flame graph in speedscope format beside it.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench import gateway as gw

RESULTS = gw.RESULTS
RATE = 250  # samples per second
RATE_US = 1_000_000 / RATE


def package_of(frame: str) -> str:
    """`Class.method (path/to/file.py:12)` -> the top-level package (or stdlib module)."""
    where = frame.rpartition(" (")[2]
    path = where.split(":")[0].rstrip(")")
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    parts = path.split("/")
    if parts[0] in ("routing", "billing", "accounts", "backends", "tesseract_web"):
        return "/".join(parts[:2]).removesuffix(".py")
    return parts[0].removesuffix(".py") or frame


def fold(raw: Path, requests: float, top: int = 40) -> str:
    """Own and total CPU per function from py-spy's raw stacks, in µs per request."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = [f.rsplit(":", 1)[0] + ")" for f in stack.split(";")]  # by function
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n

    by_package: collections.Counter[str] = collections.Counter()
    for frame, n in own.items():
        by_package[package_of(frame)] += n

    def table(counter: collections.Counter[str]) -> list[str]:
        return [
            f"{100 * n / samples:5.1f}%  {n * RATE_US / requests:6.1f} µs  {frame}"
            for frame, n in counter.most_common(top)
        ]

    head = f"{samples} samples, {samples * RATE_US / requests:.0f} µs of CPU per request"
    return "\n".join(
        [head, "", "## own time by package", *table(by_package), "", "## own time", *table(own),
         "", "## total time", *table(total)]
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--server", choices=gw.SERVERS, default="uvicorn")
    parser.add_argument(
        "--ceiling", action="store_true", help="profile the ceiling proxy (bench.ceiling) instead"
    )
    parser.add_argument(
        "--limits-off",
        action="store_true",
        help="TESSERACT_LIMITS=0: what rate limits and budgets cost, by difference",
    )
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    work = Path(tempfile.mkdtemp(prefix="tesseract-profile-"))
    sim_port, gw_port = gw.free_port(), gw.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    env = gw.bench_env(work, sim_url)
    if args.limits_off:
        env["TESSERACT_LIMITS"] = "0"
    name = ("profile-ceiling" if args.ceiling else "profile") + ("-stream" if args.stream else "")
    name += "-limits-off" if args.limits_off else ""
    with ExitStack() as stack:
        procs: list[subprocess.Popen[bytes]] = []
        stack.callback(lambda: [p.terminate() for p in procs])
        procs.append(gw.start_simulator(sim_port, env, work))
        key = gw.catalog_and_key(env)
        gw.wait_http(f"{sim_url}/health")
        headers = {"Authorization": f"Bearer {key}"}
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        if args.ceiling:
            direct = f"{sim_url}/d/{gw.DEPLOYMENT}/v1/chat/completions"
            gateway = gw.start_ceiling(
                gw_port, env, direct, work / "ceiling.log", server=args.server
            )
            gw.wait_http(f"http://127.0.0.1:{gw_port}/")
            target = gw.Target("ceiling", url, {}, gw.BODY)
        else:
            gateway = gw.start_gateway(gw_port, env, work / "gateway.log", server=args.server)
            gw.wait_http(f"http://127.0.0.1:{gw_port}/v1/models", headers=headers)
            body = {**gw.BODY, "tesseract": {"regions": ["westeurope"]}}
            target = gw.Target("tesseract", url, headers, body)
        procs.append(gateway)
        gw.wrk(target, stream=args.stream, seconds=2)  # warm up
        measured: list[float] = []
        load = threading.Thread(
            target=lambda: measured.append(
                gw.wrk(target, stream=args.stream, seconds=args.seconds + 2)
            )
        )
        load.start()
        time.sleep(1)
        raw = work / "raw.txt"
        subprocess.run(
            [spy, "record", "--pid", str(gateway.pid), "--duration", str(args.seconds),
             "--rate", str(RATE), "--format", "raw", "--output", str(raw), "--nonblocking"],
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            [spy, "record", "--pid", str(gateway.pid), "--duration", "3", "--rate", "250",
             "--format", "speedscope", "--output", str(RESULTS / f"{name}.speedscope.json"),
             "--nonblocking"],
            check=True, capture_output=True,
        )  # fmt: skip
        load.join()
        rps = measured[0]
    requests = rps * args.seconds
    report = f"{target.name}: {rps:.0f} req/s under wrk -c32 while sampled\n" + fold(raw, requests)
    (RESULTS / f"{name}.txt").write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
