"""What capacity alone allows on an honest run: a fluid bound and the trace's bursts.

    python -m bench.fluid --honest --requests 400000 --loads 0.3,0.7,0.9
    python -m bench.fluid --honest --region-subset ... --seed 2 --requests 200000 --name holdout

Takes `bench.routing`'s options (the same world, trace, mix and truth) and, for each
load and model, over the measured window:

* **Fluid bound.** The largest share of the oracle-feasible requests any router could
  serve in time if each backend's slot time were perfectly shared out: a linear
  program over requests grouped by the backends that serve them in time (the honest
  oracle's test, per backend) and the backends their policy allows; every request is
  served somewhere it is allowed, in time or late, and no backend is given more slot
  time than it has. Nothing waits in a fluid, so over the whole window
  (`--slice-s 0`) this is an upper bound on what routing can do; it says nothing of
  the queueing a real mesh sees at that utilisation. With `--slice-s` (3 s by
  default) the slot time is shared out within each slice of arrivals and no work
  moves to the next: stricter than the fluid, so where it still finds every feasible
  request in time, so does the fluid, and the trace's bursts at that scale are in it.
* **Balance.** The lowest utilisation the busiest backend can have with every
  oracle-feasible request in time (the same program, the whole window).
* **Bursts.** The share of windows of one and two mean service times in which more
  of the model's requests arrive than its pool completes in that time (its capacity
  in requests per second, as `bench.routing` defines load): in such a window some
  request waits whatever the router does, and with queues served in arrival order it
  is whoever comes, tight deadline or not.

Writes bench/results/<name>.md (default `routing_fluid`). Needs scipy (`make
bench-install`).
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from bench import notes
from bench.routing import (
    AllowedSites,
    Setup,
    arrivals,
    in_time_at,
    measured_by_time,
    parser,
    setup,
)


@dataclass(slots=True)
class _Group:
    """Requests that the same backends serve in time and the same backends allow."""

    slot_s: np.ndarray  # summed over its requests, per allowed backend
    count: int = 0


@dataclass(slots=True)
class _Request:
    at_s: float
    in_time: tuple[int, ...]  # empty: the oracle cannot serve it in time
    allowed: tuple[int, ...]
    slot_s: list[float]  # per allowed backend


def requests_of(run: Setup, rho: float) -> dict[str, list[_Request]]:
    """The measured window's requests per model, each with the backends that serve it
    in time and what it would hold of each allowed one."""
    assert run.truth is not None, "the fluid bound needs --honest (a truth)"
    world, jobs = run.world, run.jobs
    arr = arrivals(jobs, run.capacity, rho)
    mask = measured_by_time(jobs, arr)
    position = {slug: i for i, slug in enumerate(world.deployments)}
    sites = AllowedSites(world)
    out: dict[str, list[_Request]] = defaultdict(list)
    for k, (job, at, measured) in enumerate(zip(jobs, arr, mask, strict=True)):
        mine = sites(job)
        if not measured or not mine:
            continue  # no backend allows it: refused by every strategy, not routing's
        in_time, slot_s = [], []
        for slug in mine:
            ok, service_ms = in_time_at(world, run.truth, k, job, slug)
            slot_s.append(service_ms / 1000.0)
            if ok:
                in_time.append(position[slug])
        allowed = tuple(position[s] for s in mine)
        out[job.request.model].append(_Request(at, tuple(in_time), allowed, slot_s))
    return out


def _groups(requests: list[_Request]) -> list[tuple[tuple, tuple, _Group]]:
    groups: dict[tuple, _Group] = {}
    for r in requests:
        g = groups.get((r.in_time, r.allowed))
        if g is None:
            g = groups[(r.in_time, r.allowed)] = _Group(slot_s=np.zeros(len(r.allowed)))
        g.count += 1
        g.slot_s += r.slot_s
    return [(it, al, g) for (it, al), g in groups.items()]


def _columns(groups, *, late_too: bool):
    """One column per (group, backend): in time (its in-time backends), then late (any
    allowed backend) when `late_too`; a column's slot time per request at that backend."""
    group_of, backend_of, slot_s, in_time = [], [], [], []
    for gi, (it, al, g) in enumerate(groups):
        mean = g.slot_s / g.count
        at = {b: j for j, b in enumerate(al)}
        for late, backends in ((False, it), (True, al if late_too or not it else ())):
            for b in backends:
                group_of.append(gi)
                backend_of.append(b)
                slot_s.append(mean[at[b]])
                in_time.append(not late)
    return group_of, backend_of, slot_s, in_time


def fluid_in_time(requests: list[_Request], slots: np.ndarray, slice_s: float) -> float:
    """The most oracle-feasible requests served in time, summed over slices."""
    if not requests:
        return 0.0
    start = min(r.at_s for r in requests)
    span = max(r.at_s for r in requests) - start
    n = max(1, int(span / slice_s)) if slice_s > 0 else 1
    width = span / n if span > 0 else 1.0
    parts: list[list[_Request]] = [[] for _ in range(n)]
    for r in requests:
        parts[min(int((r.at_s - start) / width), n - 1)].append(r)
    served = 0.0
    for part in parts:
        if not part:
            continue
        groups = _groups(part)
        group_of, backend_of, slot_s, in_time = _columns(groups, late_too=True)
        cols = len(group_of)
        every_request_served = sparse.csr_matrix(
            (np.ones(cols), (group_of, range(cols))), shape=(len(groups), cols)
        )
        slot_time = sparse.csr_matrix((slot_s, (backend_of, range(cols))), shape=(slots.size, cols))
        got = linprog(
            -np.array(in_time, dtype=float),
            A_ub=slot_time,
            b_ub=slots * width,
            A_eq=every_request_served,
            b_eq=np.array([g.count for _, _, g in groups], dtype=float),
            bounds=(0, None),
            method="highs",
        )
        if got.status == 0:
            served += -got.fun
        else:  # more work than slot time in this slice: count what fits, in time
            got = linprog(
                -np.array(in_time, dtype=float),
                A_ub=sparse.vstack([slot_time, every_request_served]),
                b_ub=np.concatenate([slots * width, [g.count for _, _, g in groups]]),
                bounds=(0, None),
                method="highs",
            )
            served += -got.fun
    return served


def balance(requests: list[_Request], slots: np.ndarray) -> float:
    """The lowest busiest-backend utilisation with every oracle-feasible request in time
    (late ones anywhere allowed), over the whole window."""
    start = min(r.at_s for r in requests)
    span = max(r.at_s for r in requests) - start
    if span <= 0:
        return float("nan")  # no window to share slot time over
    groups = _groups(requests)
    group_of, backend_of, slot_s, _ = _columns(groups, late_too=False)
    cols = len(group_of)
    used = sorted(set(backend_of))
    load = sparse.csr_matrix((slot_s, (backend_of, range(cols))), shape=(slots.size, cols))[used]
    # load_b - u * slots_b * span <= 0, with u the last column, minimised.
    a_ub = sparse.hstack([load, sparse.csr_matrix(-(slots[used] * span).reshape(-1, 1))])
    every = sparse.csr_matrix(
        (np.ones(cols), (group_of, range(cols))), shape=(len(groups), cols + 1)
    )
    cost = np.zeros(cols + 1)
    cost[-1] = 1.0
    got = linprog(
        cost,
        A_ub=a_ub,
        b_ub=np.zeros(len(used)),
        A_eq=every,
        b_eq=np.array([g.count for _, _, g in groups], dtype=float),
        bounds=(0, None),
        method="highs",
    )
    return float(got.x[-1])


def bursts(requests: list[_Request], capacity_rps: float, window_s: float) -> float:
    """The share of whole `window_s` windows in which more requests arrive than a pool
    completing `capacity_rps` requests a second completes in that time."""
    start = min(r.at_s for r in requests)
    n = int((max(r.at_s for r in requests) - start) / window_s)
    if n < 1:
        return float("nan")
    arrived = np.zeros(n + 1)
    for r in requests:
        arrived[int((r.at_s - start) / window_s)] += 1
    return float(np.mean(arrived[:n] > capacity_rps * window_s))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser()
    ap.add_argument(
        "--slice-s",
        type=float,
        default=3.0,
        help="the fluid bound shares slot time out within slices of this many seconds"
        " of arrivals (0: the whole window)",
    )
    ap.set_defaults(name="routing_fluid")
    args = ap.parse_args(argv)
    run = setup(args)
    slots = np.array([d.concurrency_slots for d in run.world.deployments.values()], float)
    rows = []
    for rho in (float(x) for x in args.loads.split(",")):
        for model, requests in sorted(requests_of(run, rho).items()):
            mean_s = statistics.fmean(statistics.fmean(r.slot_s) for r in requests)
            feasible = sum(bool(r.in_time) for r in requests)
            served = fluid_in_time(requests, slots, args.slice_s)
            rows.append(
                {
                    "load": rho,
                    "model": model,
                    "feasible": feasible,
                    "bound": served / feasible if feasible else float("nan"),
                    "balance": balance(requests, slots),
                    "burst_1": bursts(requests, run.capacity[model], mean_s),
                    "burst_2": bursts(requests, run.capacity[model], 2 * mean_s),
                    "service_s": mean_s,
                }
            )
            print(rows[-1], file=sys.stderr)
    lines = [
        f"# Fluid bound and bursts: {args.name}",
        "",
        f"`python -m bench.fluid {' '.join(argv if argv is not None else sys.argv[1:])}`"
        ' (bench/README.md, "What capacity allows"). Per load and model, over the'
        " measured window: `in time, fluid` the most oracle-feasible requests any router"
        f" could serve in time with each backend's slot time shared out perfectly within"
        f" each {args.slice_s:g} s of arrivals (an upper bound: nothing waits in a fluid);"
        " `busiest backend` the lowest utilisation of the busiest backend with every"
        " oracle-feasible request in time; `over capacity` the share of windows of one"
        " and two mean service times in which more requests arrive than the pool"
        " completes in that time.",
        "",
        "| load | model | oracle-feasible | in time, fluid | busiest backend"
        " | over capacity, 1 service time | over capacity, 2 | mean service s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['load']:.0%} | {r['model']} | {r['feasible']:,} | {r['bound']:.2%} |"
        f" {r['balance']:.0%} | {r['burst_1']:.1%} | {r['burst_2']:.1%} | {r['service_s']:.2f} |"
        for r in rows
    ]
    notes.write(args.out_dir / f"{args.name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
