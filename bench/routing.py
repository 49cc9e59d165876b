"""Routing quality on real data: replay a trace against a world, per strategy and load.

    python -m bench.routing                       # the default run (see bench/README.md)
    python -m bench.routing --loads 0.3,0.7 --strategies deadline,nearest --requests 10000
    python -m bench.routing --trace path.csv|path.jsonl --regions regions.csv --rtt rtt.csv

Writes bench/results/routing.md, routing.csv and routing_attainment.png (unless
--out-dir says elsewhere, or --no-plot).

Definitions (also in README):
* capacity of a model's pool = sum over its deployments of slots / mean service time
  (prefill + decode of this trace's mean request on that deployment's chip). Load ρ
  offers *every* pool ρ × its capacity: each model's sub-stream of the trace is
  time-compressed to that rate (burstiness kept).
* no-load oracle: the request could meet its SLA on the best policy-allowed backend
  with p50 RTTs and empty queues (the engine's own prediction on an idle snapshot).
* physics: the speed-of-light RTT floor to the nearest region holding a policy-allowed
  backend, plus the fastest prefill and decode of the model on any chip in the world.
* compliance violations are re-checked here from the world tables, not from the engine.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from backends import livestate
from backends.world import (
    REGIONS_CSV,
    RTT_CSV,
    WorldDataError,
    WorldSpec,
    certifications,
    demo_world,
)
from bench import notes
from bench.worlds import ROOT, engine_snapshot
from routing.engine import LATE_QUEUE_FACTOR, STRATEGIES, get_strategy, route

from .sim import simulate
from .traces import load_trace, looped
from .truth import Truth, make_truth
from .workload import Job, Mix, make_jobs

DATA = ROOT / "bench" / "data"
DEFAULT_TRACE = DATA / "azure_llm_inference_2023_code.csv"
MOONCAKE = DATA / "mooncake_fast25_conversation_trace.jsonl"
ORDER = (
    "deadline", "fastest_feasible", "nearest_feasible", "seed", "nearest", "round_robin",
    "least_loaded", "lowest_latency", "cheapest",
)  # fmt: skip
WARMUP = 0.2  # share of each model's stream left out of the statistics
#: Honest runs refuse a measured window shorter than this many mean service times of
#: any model (the mesh must fill and drain many times over for a load level to mean it).
MIN_SERVICE_TIMES = 10.0
#: `--honest`: nor one shorter than this many reads of the live maps per model (a
#: feedback loop with a one-second period needs many periods to show what it settles
#: to: at 100,000 requests the demo world's 8B window was 3 s, and the strategies
#: looked 5-10 points better than over 12-16 s).
MIN_READS = 10.0
#: `--honest`: the share of requests without a client location unless told otherwise
#: (the `openai` SDK sends none; our assumption, bench/README.md).
HONEST_NO_LOCATION_SHARE = 0.3


# --------------------------------------------------------------------------- world


def load_world(regions: Path, rtt: Path) -> tuple[WorldSpec, str]:
    try:
        return demo_world(regions_path=regions, rtt_path=rtt), "demo placement"
    except WorldDataError as exc:
        if "placement" not in str(exc):
            raise
    return generic_world(regions, rtt), "generic placement (demo hubs not in this region table)"


def subset_tables(regions: Path, rtt: Path, keep: set[str], out: Path) -> tuple[Path, Path]:
    """Copies of a region table and an RTT table (long or matrix) with only `keep` regions."""
    with open(regions, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    kept = [r for r in rows if r["region_slug"].strip() in keep]
    missing = keep - {r["region_slug"].strip() for r in kept}
    if missing:
        raise SystemExit(f"--region-subset: unknown regions {sorted(missing)}")
    names = {r["region"].strip() for r in kept} | keep
    reg_out, rtt_out = out / regions.name, out / rtt.name
    with open(reg_out, "w", newline="", encoding="utf-8") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(kept)
    with open(rtt, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    head = table[0]
    if head[0].strip().lower() == "source":
        cols = [0] + [i for i, h in enumerate(head) if i and h.strip() in names]
        body = [r for r in table[1:] if r[0].strip() in names]
        table = [[r[i] for i in cols] for r in [head, *body]]
    else:
        table = [head] + [r for r in table[1:] if r[0].strip() in names and r[1].strip() in names]
    with open(rtt_out, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)
    return reg_out, rtt_out


def generic_world(regions_path: Path, rtt_path: Path) -> WorldSpec:
    """Any region table: an H100 hub serving 8B and 70B in every region, 405B in every
    fifth (alphabetically), certified like our own sites (soc2; hipaa in the US; gdpr in
    the EEA)."""
    from backends import world as w

    regions = w.load_regions(regions_path)
    rtt = w.load_rtt(rtt_path, regions)
    profiles = w.load_profiles()
    clusters, deployments = {}, {}
    for n, slug in enumerate(sorted(regions)):
        models = w._BIG if n % 5 == 0 else w._ALL
        c = w.ClusterSpec(
            f"{slug}-tesseract-nvidia-h100",
            f"{slug} hub",
            slug,
            "Tesseract",
            "tesseract",
            "nvidia-h100",
            w.HUB_ACCELERATORS,
            w.operator_certifications("tesseract", regions[slug]),
        )
        clusters[c.slug] = c
        for m in models:
            d = w.DeploymentSpec(
                f"{c.slug}--{m}", c.slug, m, w.HUB_SLOTS, profiles[("nvidia-h100", m)]
            )
            deployments[d.slug] = d
    regions = {s: w.certify_region(r) for s, r in regions.items()}
    return w.WorldSpec(regions, dict(w.CHIPS), dict(w.MODELS), clusters, deployments, rtt)


# --------------------------------------------------------------------------- checks


def allowed(world: WorldSpec, deployment: str, job: Job) -> bool:
    """Independent re-check of compliance and residency from the world tables."""
    d = world.deployments[deployment]
    c = world.clusters[d.cluster]
    reg = world.regions[c.region]
    certs = certifications(reg, c)
    r = job.request
    if d.model not in (r.model, *r.fallback_models):
        return False
    if not r.compliance <= certs:
        return False
    return r.allowed_jurisdictions is None or bool(reg.jurisdictions & r.allowed_jurisdictions)


def mark_oracle_from_truth(world: WorldSpec, jobs: list[Job], truth: Truth) -> None:
    """Honest oracle: the request could meet its SLA on some policy-allowed backend at
    the pair's p50 RTT with empty queues, at its *true* (scattered) compute time — not
    at the engine's prediction. Physics is marked by `mark_oracle_and_physics`."""
    sites = AllowedSites(world)
    for k, job in enumerate(jobs):
        job.oracle_ok = any(in_time_at(world, truth, k, job, slug)[0] for slug in sites(job))


class AllowedSites:
    """The deployments a job's policy allows, cached by what decides it."""

    def __init__(self, world: WorldSpec) -> None:
        self.world = world
        self._cache: dict[tuple, list[str]] = {}

    def __call__(self, job: Job) -> list[str]:
        r = job.request
        key = (r.model, r.compliance, r.allowed_jurisdictions)
        mine = self._cache.get(key)
        if mine is None:
            mine = self._cache[key] = [
                s for s in self.world.deployments if allowed(self.world, s, job)
            ]
        return mine


def in_time_at(world: WorldSpec, truth: Truth, k: int, job: Job, slug: str) -> tuple[bool, float]:
    """Whether job `k` meets its SLA on `slug` at the pair's p50 RTT with no queue, at
    its true compute time there; and that compute time (ms, the slot it holds)."""
    r = job.request
    d = world.deployments[slug]
    prefill, decode = truth.on_profile(slug, k, d.profile, r.input_tokens, r.max_output_tokens)
    ttft = world.rtt_ms(job.client, world.clusters[d.cluster].region) + job.access_ms + prefill
    return r.met_by(ttft, ttft + decode), prefill + decode


def mark_oracle_and_physics(world: WorldSpec, jobs: list[Job]) -> None:
    idle = engine_snapshot(world)
    deadline = get_strategy("deadline")
    fastest: dict[str, tuple[float, float, float]] = {}
    for d in world.deployments.values():
        p = d.profile
        f = fastest.get(d.model, (math.inf, math.inf, math.inf))
        fastest[d.model] = (
            min(f[0], p.ttft_floor_ms), min(f[1], 1000.0 / p.prefill_tokens_per_s),
            min(f[2], 1000.0 / p.decode_tokens_per_s),
        )  # fmt: skip
    floor_cache: dict[tuple, float] = {}
    for job in jobs:
        r = job.request
        # The oracle knows where every client really is, located or not.
        at = (
            {"client_region": job.client}
            if job.lat is None
            else {"client_region": None, "client_lat": job.lat, "client_lon": job.lon}
        )
        strict = replace(r, allow_relaxed_deadline=False, fallback_models=(), **at)
        job.oracle_ok = route(idle, strict, deadline, max_fallbacks=0).status == "ok"
        key = (job.client, job.lat, job.lon, r.model, r.compliance, r.allowed_jurisdictions)
        floor = floor_cache.get(key)
        if floor is None:
            sites = {
                world.clusters[d.cluster].region
                for s, d in world.deployments.items()
                if allowed(world, s, job)
            }
            floor = floor_cache[key] = min(
                (job.floor_ms(world, s) for s in sites), default=math.inf
            )
        base, per_in, per_out = fastest.get(r.model, (math.inf,) * 3)
        ttft = floor + base + r.input_tokens * per_in
        total = ttft + r.max_output_tokens * per_out
        job.physics_ok = r.met_by(ttft, total)


# --------------------------------------------------------------------------- load


def pool_capacity(
    world: WorldSpec, jobs: list[Job], truth: Truth | None = None
) -> dict[str, float]:
    """Requests per second each model's pool completes with every slot busy (with a
    truth: at the jobs' true mean service time on each deployment)."""
    if truth is not None:
        return _true_capacity(world, jobs, truth)
    cap: dict[str, float] = {}
    for model in {j.request.model for j in jobs}:
        mine = [j.trace for j in jobs if j.request.model == model]
        mean_in = statistics.fmean(t.input_tokens for t in mine)
        mean_out = statistics.fmean(t.output_tokens for t in mine)
        total = 0.0
        for d in world.deployments.values():
            if d.model != model:
                continue
            p = d.profile
            service_s = (
                p.ttft_floor_ms
                + 1000.0 * mean_in / p.prefill_tokens_per_s
                + 1000.0 * mean_out / p.decode_tokens_per_s
            ) / 1000.0
            total += d.concurrency_slots / service_s
        cap[model] = total
    return cap


def _true_capacity(world: WorldSpec, jobs: list[Job], truth: Truth) -> dict[str, float]:
    cap: dict[str, float] = {}
    for model in {j.request.model for j in jobs}:
        mine = [(k, j.trace) for k, j in enumerate(jobs) if j.request.model == model][:4000]
        total = 0.0
        for slug, d in world.deployments.items():
            if d.model != model:
                continue
            service = 0.0
            for k, tr in mine:
                prefill, decode = truth.on_profile(
                    slug, k, d.profile, tr.input_tokens, tr.output_tokens
                )
                service += prefill + decode
            total += d.concurrency_slots / (service / len(mine) / 1000.0)
        cap[model] = total
    return cap


def arrivals(jobs: list[Job], capacity: dict[str, float], rho: float) -> list[float]:
    span = max(jobs[-1].trace.t, 1e-9)
    count: dict[str, int] = {}
    for j in jobs:
        count[j.request.model] = count.get(j.request.model, 0) + 1
    k = {m: (count[m] / span) / (rho * capacity[m]) for m in count}
    return [j.trace.t * k[j.request.model] for j in jobs]


def measured_by_time(jobs: list[Job], arrivals_s: list[float]) -> list[bool]:
    """Leave out the requests arriving in the first WARMUP share of each model's
    arrival span (warm-up by time: a burst at the start does not shorten it)."""
    span: dict[str, tuple[float, float]] = {}
    for j, a in zip(jobs, arrivals_s, strict=True):
        lo, hi = span.get(j.request.model, (math.inf, -math.inf))
        span[j.request.model] = (min(lo, a), max(hi, a))
    out = []
    for j, a in zip(jobs, arrivals_s, strict=True):
        lo, hi = span[j.request.model]
        out.append(a >= lo + WARMUP * (hi - lo))
    return out


def measured_window_s(jobs: list[Job], arrivals_s: list[float], mask: list[bool]) -> dict:
    """Per model: the measured window's length in seconds (its arrivals' span)."""
    span: dict[str, tuple[float, float]] = {}
    for j, a, m in zip(jobs, arrivals_s, mask, strict=True):
        if m:
            lo, hi = span.get(j.request.model, (math.inf, -math.inf))
            span[j.request.model] = (min(lo, a), max(hi, a))
    return {model: hi - lo for model, (lo, hi) in span.items()}


def service_times_covered(outcomes, mask, arrivals_s) -> dict[str, float]:
    """Per model: the measured window over the model's mean simulated service time."""
    window = measured_window_s([o.job for o in outcomes], arrivals_s, mask)
    service: dict[str, list[float]] = {}
    for o, m in zip(outcomes, mask, strict=True):
        if m and o.service_ms:
            service.setdefault(o.job.request.model, []).append(o.service_ms)
    return {
        m: w * 1000.0 / statistics.fmean(service[m]) for m, w in window.items() if service.get(m)
    }


def measured_mask(jobs: list[Job]) -> list[bool]:
    """Leave each model's first WARMUP share out (the mesh starts empty)."""
    seen: dict[str, int] = {}
    total: dict[str, int] = {}
    for j in jobs:
        total[j.request.model] = total.get(j.request.model, 0) + 1
    out = []
    for j in jobs:
        m = j.request.model
        seen[m] = seen.get(m, 0) + 1
        out.append(seen[m] > WARMUP * total[m])
    return out


# --------------------------------------------------------------------------- metrics


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def summarize(world, outcomes, backends, mask, rho, strategy, arrivals_s) -> dict:
    rows = [o for o, m in zip(outcomes, mask, strict=False) if m]
    n = len(rows)
    served = [o for o in rows if o.backend is not None]
    oracle = [o for o in rows if o.job.oracle_ok]
    violations = sum(
        1 for o in outcomes if o.backend is not None and not allowed(world, o.backend, o.job)
    )
    tokens = sum(o.job.trace.input_tokens + o.job.trace.output_tokens for o in served)
    # Utilisation: busy slot-time over slot-time during each pool's arrival window.
    util_num = util_den = 0.0
    for model in {o.job.request.model for o in outcomes}:
        ts = [a for a, o in zip(arrivals_s, outcomes, strict=False) if o.job.request.model == model]
        window = (max(ts) - min(ts)) * 1000.0 or 1.0
        for b in backends.values():
            if b.model == model:
                util_num += b.busy_ms
                util_den += b.slots * window
    silent = [o for o in oracle if o.job.gateway is not None]
    hard = [o for o in served if not o.job.oracle_ok]
    missed = [o for o in served if not o.met]
    late = [lateness(o) for o in served]
    return {
        "strategy": strategy,
        "load": rho,
        "requests": n,
        "sla_attainment": sum(o.met for o in rows) / n,
        "oracle_share": len(oracle) / n,
        "no_location_share": sum(o.job.gateway is not None for o in rows) / n,
        "attainment_vs_oracle_no_location": (
            sum(o.met for o in silent) / len(silent) if silent else math.nan
        ),
        "attainment_vs_oracle": (sum(o.met for o in oracle) / len(oracle)) if oracle else math.nan,
        "physics_share": sum(o.job.physics_ok for o in rows) / n,
        "ttft_p50_ms": pct([o.ttft_ms for o in served], 0.5),
        "ttft_p99_ms": pct([o.ttft_ms for o in served], 0.99),
        "e2e_p50_ms": pct([o.e2e_ms for o in served], 0.5),
        "e2e_p99_ms": pct([o.e2e_ms for o in served], 0.99),
        "cost_per_mtok_usd": (sum(o.cost_usd for o in served) / tokens * 1e6)
        if tokens
        else math.nan,
        "rejected": (n - len(served)) / n,
        "degraded": sum(o.degraded for o in rows) / n,
        "compliance_violations": violations,
        "utilization": util_num / util_den if util_den else math.nan,
        "lateness_mean_ms": statistics.fmean(late) if late else math.nan,
        "lateness_p99_ms": pct(late, 0.99),
        "missed_ttft_p90_ms": pct([o.ttft_ms for o in missed], 0.9),
        "queued_share": (
            sum(o.wait_ms > 0.0 for o in oracle if o.backend is not None) / len(oracle)
            if oracle
            else math.nan
        ),
        "held_share": (
            sum(o.held_ms > 0.0 for o in oracle if o.backend is not None) / len(oracle)
            if oracle
            else math.nan
        ),
        "hard_share": len(hard) / n,
        "hard_met": sum(o.met for o in hard) / len(hard) if hard else math.nan,
        "hard_ttft_p90_ms": pct([o.ttft_ms for o in hard], 0.9),
        "hard_lateness_p90_ms": pct([lateness(o) for o in hard], 0.9),
        "cached_tokens_share": (
            sum(o.cached_tokens for o in served)
            / max(sum(o.job.trace.input_tokens for o in served), 1)
        ),
    }


def lateness(o) -> float:
    """How far past its deadline (TTFT, else end-to-end) a served request answered; 0 in time."""
    r = o.job.request
    if r.max_ttft_ms is not None:
        return max(o.ttft_ms - r.max_ttft_ms, 0.0)
    if r.max_latency_ms is not None:
        return max(o.e2e_ms - r.max_latency_ms, 0.0)
    return 0.0


# --------------------------------------------------------------------------- output

COLUMNS = [
    ("strategy", "strategy", "{}"),
    ("load", "load", "{:.0%}"),
    ("sla_attainment", "SLA met", "{:.1%}"),
    ("attainment_vs_oracle", "met / oracle-feasible", "{:.1%}"),
    ("oracle_share", "oracle share", "{:.1%}"),
    ("physics_share", "physics share", "{:.1%}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("e2e_p50_ms", "e2e p50 ms", "{:.0f}"),
    ("e2e_p99_ms", "e2e p99 ms", "{:.0f}"),
    ("cost_per_mtok_usd", "USD / 1M tok", "{:.3f}"),
    ("rejected", "rejected", "{:.1%}"),
    ("compliance_violations", "violations", "{}"),
    ("utilization", "util", "{:.0%}"),
]
#: The honest run's extra columns: lateness of every request, and the requests the
#: (true) oracle cannot serve in time ("hard"), which the headline metric leaves out.
HONEST_COLUMNS = [
    ("lateness_mean_ms", "late mean ms", "{:.1f}"),
    ("lateness_p99_ms", "late p99 ms", "{:.0f}"),
    ("missed_ttft_p90_ms", "missed TTFT p90 ms", "{:.0f}"),
    ("queued_share", "queued", "{:.1%}"),
    ("held_share", "held", "{:.1%}"),
    ("hard_share", "hard share", "{:.1%}"),
    ("hard_met", "hard met", "{:.1%}"),
    ("hard_ttft_p90_ms", "hard TTFT p90 ms", "{:.0f}"),
    ("hard_lateness_p90_ms", "hard late p90 ms", "{:.0f}"),
    ("min_service_times", "window / service", "{:.0f}"),
    ("min_reads", "window / read", "{:.0f}"),
]


def markdown(results: list[dict], header: list[str], extra_cols=()) -> str:
    cols = COLUMNS + list(extra_cols)
    lines = [*header, "", "| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = []
        for key, _, fmt in cols:
            v = r[key]
            cells.append("–" if isinstance(v, float) and math.isnan(v) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in dict.fromkeys(r["strategy"] for r in results):
        pts = sorted((r["load"], r["attainment_vs_oracle"]) for r in results if r["strategy"] == s)
        ax.plot([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], marker="o",
                linewidth=2.5 if s == "deadline" else 1.2, label=s)  # fmt: skip
    ax.set_xlabel("offered load, % of each model pool's capacity")
    ax.set_ylabel("SLA met, % of requests the no-load oracle can meet")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def _pairs(text: str) -> list[tuple[str, float]]:
    out = []
    for part in text.split(","):
        k, v = part.rsplit("=" if "=" in part else ":", 1)
        out.append((k.strip(), float(v)))
    return out


def mix_from_args(args) -> Mix:
    mix = Mix()
    changes: dict = {}
    if args.model_share:
        changes["model_share"] = dict(_pairs(args.model_share))
    if args.ttft_classes:
        changes["ttft_classes"] = {
            (None if k.lower() == "none" else float(k)): v for k, v in _pairs(args.ttft_classes)
        }
    for field, value in (
        ("eu_only_share_of_eu_clients", args.eu_only_share),
        ("hipaa_share_of_us_clients", args.hipaa_share),
        ("prefer_cost_share", args.prefer_cost_share),
        ("relaxed_share", args.relaxed_share),
        ("no_location_share", args.no_location_share),
    ):
        if value is not None:
            changes[field] = value
    return replace(mix, **changes)


def describe(mix: Mix) -> str:
    models = ", ".join(f"{m} {s:.0%}" for m, s in mix.model_share.items())
    ttft = ", ".join(
        f"{'none' if k is None else f'{k:g} ms'} {v:.0%}" for k, v in mix.ttft_classes.items()
    )
    return (
        f"Mix: models {models}; TTFT deadlines {ttft} (none: e2e <= {mix.bulk_latency_ms:g} ms); "
        f"EU clients EU-only+gdpr {mix.eu_only_share_of_eu_clients:.0%}; US clients hipaa "
        f"{mix.hipaa_share_of_us_clients:.0%}; prefer cost {mix.prefer_cost_share:.0%}; "
        f"accept late {mix.relaxed_share:.0%}; priority uniform 1-5; "
        f"no client location {mix.no_location_share:.0%}"
        + (
            f"; clients in cities within {mix.city_radius_km:g} km of their region, last mile"
            f" p50 {mix.last_mile_p50_ms:g} ms, p95 {mix.last_mile_p95_ms:g} ms."
            if mix.cities
            else "; clients on the region nodes."
        )
    )


def parser() -> argparse.ArgumentParser:
    """The benchmark's options (also `bench.fluid`'s: the same world, trace and mix)."""
    ap = argparse.ArgumentParser(description="Trace-driven routing benchmark")
    ap.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    ap.add_argument("--regions", type=Path, default=REGIONS_CSV)
    ap.add_argument("--rtt", type=Path, default=RTT_CSV)
    ap.add_argument("--loads", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--strategies", default=",".join(ORDER))
    ap.add_argument(
        "--requests", type=int, default=60000, help="trace requests replayed (looped if longer)"
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--affinity",
        action="store_true",
        help="backends keep KV caches of prompt blocks; the gateway routes with affinity"
        " (needs hash_ids)",
    )
    ap.add_argument("--no-affinity-compare", action="store_true")
    ap.add_argument("--no-rtt-jitter", action="store_true")
    ap.add_argument(
        "--region-subset",
        help="comma-separated region slugs: keep only these rows of the region and RTT tables",
    )
    ap.add_argument(
        "--model-share", help="e.g. llama-3.1-8b-instruct=0.5,llama-3.3-70b-instruct=0.5"
    )
    ap.add_argument(
        "--ttft-classes", help="TTFT deadline ms:share, e.g. 50:0.2,200:0.4,1000:0.3,none:0.1"
    )
    ap.add_argument(
        "--eu-only-share", type=float, help="share of EU clients' requests that are EU-only + gdpr"
    )
    ap.add_argument(
        "--hipaa-share", type=float, help="share of US clients' requests that need hipaa"
    )
    ap.add_argument("--prefer-cost-share", type=float)
    ap.add_argument(
        "--relaxed-share", type=float, help="share of requests that accept a late answer"
    )
    ap.add_argument(
        "--no-location-share",
        type=float,
        help="share of requests sent without a client location (routed from their gateway)",
    )
    ap.add_argument(
        "--honest",
        action="store_true",
        help="backends follow measurements, not the engine's model: per-request scatter,"
        " counters as stale as the live maps, observed speeds fed back, the oracle from"
        " the simulated truth, warm-up by time, run length checked (bench/README.md)",
    )
    ap.add_argument(
        "--no-cities",
        action="store_true",
        help="--honest: keep clients on the region nodes (no cities, no last mile)",
    )
    ap.add_argument(
        "--counter-age-s",
        type=float,
        default=1.0,
        help="--honest: the live maps (observed speeds; the in-flight counts too with"
        " --inflight-read-s 0) are re-read every this many seconds",
    )
    ap.add_argument(
        "--inflight-read-s",
        type=float,
        default=livestate.INFLIGHT_PUBLISH_S,
        help="--honest: gateways re-read the shared in-flight counts every this many"
        " seconds, apart from the live maps (as the gateway does; 0: every"
        " --counter-age-s)",
    )
    ap.add_argument(
        "--inflight-publish-s",
        type=float,
        default=livestate.INFLIGHT_PUBLISH_S,
        help="--honest: each gateway shares its in-flight counts every this many seconds"
        " (as the gateway does; 0: a read sees them exact)",
    )
    ap.add_argument(
        "--backend-queues",
        choices=("deadline", "arrival"),
        default="deadline",
        help="--honest: the order in which a backend takes its waiting requests: earliest"
        " deadline first, as the gateway's priority asks of a vLLM server started with"
        " --scheduling-policy priority, or arrival order (first come, first served)",
    )
    ap.add_argument("--out-dir", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="routing")
    ap.add_argument("--no-plot", action="store_true")
    return ap


@dataclass(slots=True)
class Setup:
    """What every strategy of a run meets: the world, the jobs, the truth, the capacity."""

    world: WorldSpec
    placement: str
    jobs: list[Job]
    mix: Mix
    truth: Truth | None
    capacity: dict[str, float]


def setup(args: argparse.Namespace) -> Setup:
    regions_path, rtt_path = args.regions, args.rtt
    if args.region_subset:
        tmp = Path(tempfile.mkdtemp(prefix="bench-world-"))
        regions_path, rtt_path = subset_tables(
            args.regions, args.rtt, set(args.region_subset.split(",")), tmp
        )
    world, placement = load_world(regions_path, rtt_path)
    trace = looped(load_trace(args.trace), args.requests)
    mix = mix_from_args(args)
    if args.honest:
        mix = replace(
            mix,
            cities=not args.no_cities,
            no_location_share=(
                HONEST_NO_LOCATION_SHARE
                if args.no_location_share is None
                else args.no_location_share
            ),
        )
    jobs = make_jobs(trace, world, mix, seed=args.seed)
    mark_oracle_and_physics(world, jobs)
    truth = (
        make_truth(
            world,
            jobs,
            args.seed,
            args.counter_age_s,
            args.inflight_read_s,
            args.inflight_publish_s,
            deadline_queues=args.backend_queues == "deadline",
        )
        if args.honest
        else None
    )
    if truth is not None:
        mark_oracle_from_truth(world, jobs, truth)
    return Setup(world, placement, jobs, mix, truth, pool_capacity(world, jobs, truth))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser()
    args = ap.parse_args(argv)

    strategies = [s for s in args.strategies.split(",") if s]
    for s in strategies:
        if s not in STRATEGIES:
            ap.error(f"unknown strategy {s}; one of {sorted(STRATEGIES)}")
    loads = [float(x) for x in args.loads.split(",")]
    t_start = time.perf_counter()
    run = setup(args)
    world, jobs, truth, capacity = run.world, run.jobs, run.truth, run.capacity
    placement, mix = run.placement, run.mix
    snapshot = engine_snapshot(world)
    runs = [(s, False) for s in strategies]
    if args.affinity:
        runs = [(s, True) for s in strategies] + (
            [] if args.no_affinity_compare else [("deadline", False)]
        )
    results = []
    for rho in loads:
        arr = arrivals(jobs, capacity, rho)
        mask = measured_by_time(jobs, arr) if truth is not None else measured_mask(jobs)
        reads = {m: w / args.counter_age_s for m, w in measured_window_s(jobs, arr, mask).items()}
        if truth is not None and min(reads.values()) < MIN_READS:
            short = ", ".join(f"{m} {r:.1f}" for m, r in sorted(reads.items()))
            raise SystemExit(
                f"run too short at {rho:.0%} load: the measured window covers {short} reads"
                f" of the live maps (at least {MIN_READS:g} each); raise --requests"
            )
        for s, aff in runs:
            t0 = time.perf_counter()
            outcomes, backends, _ = simulate(
                world,
                snapshot,
                jobs,
                arr,
                s,
                seed=args.seed,
                affinity=aff,
                kv_cache=args.affinity,
                rtt_jitter=not args.no_rtt_jitter,
                truth=truth,
            )
            row = summarize(world, outcomes, backends, mask, rho, s, arr)
            covered = service_times_covered(outcomes, mask, arr)
            row["min_service_times"] = min(covered.values(), default=math.nan)
            row["min_reads"] = min(reads.values())
            if truth is not None and row["min_service_times"] < MIN_SERVICE_TIMES:
                short = ", ".join(f"{m} {c:.1f}" for m, c in sorted(covered.items()))
                raise SystemExit(
                    f"run too short: the measured window covers {short} mean service times"
                    f" (at least {MIN_SERVICE_TIMES:g} each); raise --requests"
                )
            if args.affinity:
                row["strategy"] = s + ("" if aff else " (caches, no affinity)")
            results.append(row)
            print(
                f"{row['strategy']:>24} load {rho:.0%}: met {row['sla_attainment']:.1%}, "
                f"vs oracle {row['attainment_vs_oracle']:.1%}, "
                f"violations {row['compliance_violations']} ({time.perf_counter() - t0:.1f}s)",
                file=sys.stderr,
            )
    elapsed = time.perf_counter() - t_start

    args.out_dir.mkdir(parents=True, exist_ok=True)
    subset_note = f" (regions {args.region_subset})" if args.region_subset else ""
    cap_text = ", ".join(f"{m} {c:,.0f} req/s" for m, c in sorted(capacity.items()))
    header = [
        f"# Routing benchmark: {args.trace.name}",
        "",
        f"World: {args.regions.name} + {args.rtt.name}{subset_note}, {placement}: "
        f"{len(world.regions)} regions, "
        f"{len(world.deployments)} deployments. Trace: {args.trace.name}, {len(jobs):,} requests "
        f"(warm-up, not counted: each model's first {WARMUP:.0%} "
        f"{'of its arrival span' if truth is not None else 'of its requests'}). Seed {args.seed}; "
        f"RTT jitter {'off' if args.no_rtt_jitter else 'on'}; "
        f"affinity {'on' if args.affinity else 'off'}.",
        f"Pool capacity (100% load): {cap_text}. Run time {elapsed:.0f} s.",
        describe(mix),
        "",
        "`met / oracle-feasible`: SLA attainment among the requests the no-load oracle can serve"
        " in time.",
    ]
    extra = [("cached_tokens_share", "prefix cached", "{:.0%}")] if args.affinity else []
    if truth is not None:
        extra += HONEST_COLUMNS
        header += [
            "",
            "**Honest mode** (bench/README.md): compute times drawn per request from the"
            " llmperf per-request measurements, 8B TTFT at its measured share of the 70B's;"
            f" live maps re-read every {args.counter_age_s:g} s of simulated time, in-flight"
            f" counts shared every {args.inflight_publish_s:g} s and re-read every"
            f" {args.inflight_read_s or args.counter_age_s:g} s; observed"
            " TTFT and decode speed fed back as the gateway folds them; the oracle and the"
            " pool capacity from that truth; warm-up: the first"
            f" {WARMUP:.0%} of each model's arrival span. `hard`: served requests the oracle"
            " cannot serve in time (left out of `met / oracle-feasible`). `late`: how far"
            " past its deadline a request answered (0 in time). `queued`: oracle-feasible"
            " requests that waited for a slot at their backend, `held`: that the gateway"
            " held before sending them (`Plan.hold_ms`). `window / service`: the"
            " measured window over the mean service time, `window / read`: over the live"
            " maps' refresh period, the smallest over models. Each gateway projects"
            " everyone's in-flight counts from its own sends since the last read"
            " (`routing.engine.projected_in_flight`). Backends take their waiting requests"
            + (
                " earliest deadline first (the priority the gateway sends,"
                " `Request.queue_priority`; a request predicted late there at"
                f" {LATE_QUEUE_FACTOR:g}x its predicted first token)."
                if truth.deadline_queues
                else " in arrival order."
            ),
        ]
    if mix.no_location_share:
        extra.append(("attainment_vs_oracle_no_location", "met / feasible, no location", "{:.1%}"))
    md = markdown(results, header, extra)
    notes.write(args.out_dir / f"{args.name}.md", md)
    with open(args.out_dir / f"{args.name}.csv", "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=list(results[0]))
        wr.writeheader()
        wr.writerows(results)
    if not args.no_plot:
        plot(
            results,
            args.out_dir / f"{args.name}_attainment.png",
            f"SLA attainment vs load — {args.trace.name}",
        )
    print(md)
    return results


if __name__ == "__main__":
    main()
