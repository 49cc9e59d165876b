"""Microbenchmark: one routing decision over 50, 500 and 5,000 candidates.

    python -m bench.engine_speed [--sizes 50,500,5000] [--repeat 3000] [--out FILE.md]

Candidates are synthetic replicas of the demo world's llama-3.3-70b deployments
(each replica keeps its region, chip, profile and tags; in-flight and queued counts
are drawn at random with a fixed seed, 5% are DEGRADED, 2% DOWN). The request is a
realistic one: an EU client, GDPR, EU residency, a 200 ms TTFT deadline. Timed:
`route()` returning a plan (primary + 3 fallbacks); separately, the same plus
materialising every exclusion reason (`plan.to_dict()`), which `/v1/route` pays and
the gateway does not.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from backends.world import demo_world
from bench.worlds import ROOT, engine_backends, latency_map
from routing.engine import Health, LiveState, Request, Snapshot, route

MODEL = "llama-3.3-70b-instruct"


def synthetic_snapshot(n: int, seed: int = 7) -> Snapshot:
    world = demo_world()
    base = [b for b in engine_backends(world) if b.model == MODEL]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        b = base[i % len(base)]
        slots = b.concurrency_slots
        health = (
            Health.DOWN
            if rng.random() < 0.02
            else Health.DEGRADED
            if rng.random() < 0.05
            else Health.HEALTHY
        )
        in_flight = rng.randint(0, slots)
        queued = rng.randint(0, slots // 4) if in_flight == slots else 0
        out.append(
            replace(
                b,
                id=f"{b.id}#{i}",
                state=LiveState(health=health, in_flight=in_flight, queued=queued),
            )
        )
    return Snapshot(out, latency_map(world), version=n)


def _explained(snap: Snapshot) -> dict:
    return route(snap, REQUEST).to_dict()


def measure(fn, repeat: int) -> tuple[float, float]:
    for _ in range(min(200, repeat)):
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(repeat):
            t = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t)
    finally:
        gc.enable()
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(0.99 * (len(samples) - 1))] / 1000


REQUEST = Request(
    model=MODEL,
    input_tokens=1500,
    max_output_tokens=200,
    max_ttft_ms=200,
    compliance=frozenset({"gdpr"}),
    allowed_jurisdictions=frozenset({"EU"}),
    client_region="westeurope",
    priority=3,
)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,500,5000")
    ap.add_argument("--repeat", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine_speed.md")
    args = ap.parse_args(argv)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        snap = synthetic_snapshot(n)
        open_request = replace(
            REQUEST, compliance=frozenset(), allowed_jurisdictions=None, max_ttft_ms=None
        )
        plan = route(snap, REQUEST)
        assert plan.ok, plan.to_dict()["infeasible"]
        med, p99 = measure(partial(route, snap, REQUEST), args.repeat)
        med_u, p99_u = measure(partial(route, snap, open_request), args.repeat)
        med_x, p99_x = measure(partial(_explained, snap), max(args.repeat // 10, 50))
        rows.append((n, med, p99, med_u, p99_u, med_x, p99_x))
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, numpy {np.__version__}"
    )
    lines = [
        "# Engine speed: one decision",
        "",
        f"Machine: {machine}; median and p99 of {args.repeat} decisions (after warm-up, GC off",
        "while timing). The machine is shared with other work: p99 includes its noise.",
        "",
        "* `constrained`: EU client, gdpr, EU residency, TTFT <= 200 ms; `route()` returns",
        "  primary + 3 fallbacks (what the gateway pays).",
        "* `open`: the same request without constraints: every candidate survives the filters.",
        "* `with reasons`: constrained, plus `plan.to_dict()` with a reason for every excluded",
        "  candidate (what `/v1/route` pays).",
        "",
        "| candidates | constrained median µs | p99 | open median µs | p99 |"
        " with reasons median µs | p99 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, *vals in rows:
        lines.append(f"| {n:,} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
