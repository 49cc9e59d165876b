"""Why a strategy's oracle-feasible requests missed their deadline, on an honest run.

    python -m bench.misses --honest --requests 400000 --loads 0.3,0.9
    python -m bench.misses --honest --region-subset ... --seed 2 --requests 200000 \\
        --name routing_misses_holdout

Takes `bench.routing`'s options (the same world, trace, mix and truth; `--strategy`,
`deadline` by default) and, for each load, sorts every measured request the honest
oracle can serve in time but the strategy did not into one cause:

* **queue**: it waited for a slot at its backend (or held at the gateway, which waits
  for one there) and would have been in time without the wait. Who waits is the
  backends' queue order; where, the router's choice.
* **queue and compute**: it waited, and its backend was too slow for it even without
  the wait.
* **compute**: it did not wait, and its backend is late for it even at the pair's
  median round trip, at its true (scattered) compute time there, where some other
  backend its policy allows is in time (the oracle's test): the prediction the choice
  was made on was off by more than the request's slack.
* **network**: it did not wait, and its backend is in time at the median round trip:
  this request's own round trip (log-normal through the pair's p50 and p95) made it
  late.

Per model and first deadline (TTFT, else end-to-end), the misses by cause, and for
the queue's: the median wait and the median slack the request had without it.
Writes bench/results/<name>.md (default `routing_misses`).
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter, defaultdict

from bench import notes
from bench.routing import (
    arrivals,
    engine_snapshot,
    in_time_at,
    measured_by_time,
    parser,
    setup,
)
from bench.sim import Outcome, simulate
from routing.engine import STRATEGIES

CAUSES = ("queue", "queue and compute", "compute", "network")


def in_time_without_wait(outcome: Outcome) -> bool:
    """Whether the request would have met its SLA had it not waited (held at the
    gateway, or for a slot at its backend)."""
    wait = outcome.waited_ms
    return outcome.job.request.met_by(outcome.ttft_ms - wait, outcome.e2e_ms - wait)


def cause(outcome: Outcome, backend_in_time: bool) -> str:
    """A missed request's cause (`CAUSES`); `backend_in_time`: whether its backend
    meets its SLA at the pair's median round trip with no queue (`in_time_at`)."""
    if outcome.waited_ms > 0:
        return "queue" if in_time_without_wait(outcome) else "queue and compute"
    return "network" if backend_in_time else "compute"


def slack_ms(outcome: Outcome) -> float:
    """How much later than it did the request could have answered, had it not waited
    (its first deadline less its first token or whole answer, the wait taken off)."""
    r = outcome.job.request
    if r.max_ttft_ms is not None:
        return r.max_ttft_ms - (outcome.ttft_ms - outcome.waited_ms)
    assert r.max_latency_ms is not None
    return r.max_latency_ms - (outcome.e2e_ms - outcome.waited_ms)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = parser()
    ap.add_argument("--strategy", default="deadline", choices=sorted(STRATEGIES))
    ap.set_defaults(name="routing_misses")
    args = ap.parse_args(argv)
    if not args.honest:
        ap.error("the causes are read from the honest mode's truth: pass --honest")
    run = setup(args)
    assert run.truth is not None
    snapshot = engine_snapshot(run.world)
    rows: list[dict] = []
    for rho in (float(x) for x in args.loads.split(",")):
        arr = arrivals(run.jobs, run.capacity, rho)
        mask = measured_by_time(run.jobs, arr)
        outcomes, _, _ = simulate(
            run.world, snapshot, run.jobs, arr, args.strategy, seed=args.seed, truth=run.truth
        )
        feasible: Counter[tuple[str, float | None]] = Counter()
        missed: dict[tuple[str, float | None], Counter[str]] = defaultdict(Counter)
        waits: dict[tuple[str, float | None], list[tuple[float, float]]] = defaultdict(list)
        for k, o in enumerate(outcomes):
            if not (mask[k] and o.job.oracle_ok):
                continue
            group = (o.job.request.model, o.job.request.first_deadline_ms)
            feasible[group] += 1
            if o.met:
                continue
            assert o.backend is not None  # oracle-feasible: some backend is allowed
            here, _ = in_time_at(run.world, run.truth, k, o.job, o.backend)
            why = cause(o, here)
            missed[group][why] += 1
            if why == "queue":
                waits[group].append((o.waited_ms, slack_ms(o)))
        for group in sorted(feasible, key=lambda g: (g[0], g[1] or float("inf"))):
            counts = missed[group]
            pairs = waits[group]
            rows.append(
                {
                    "load": rho,
                    "model": group[0],
                    "deadline_ms": group[1],
                    "feasible": feasible[group],
                    **{c: counts[c] for c in CAUSES},
                    "wait_ms": statistics.median(w for w, _ in pairs) if pairs else None,
                    "slack_ms": statistics.median(s for _, s in pairs) if pairs else None,
                }
            )
        total = sum(feasible.values())
        by_cause = {c: sum(missed[g][c] for g in missed) for c in CAUSES}
        print(
            f"{args.strategy} load {rho:.0%}: {total:,} feasible, "
            + ", ".join(f"{c} {n}" for c, n in by_cause.items()),
            file=sys.stderr,
        )
    notes.write(args.out_dir / f"{args.name}.md", markdown(rows, args, argv))
    return rows


def markdown(rows: list[dict], args, argv: list[str] | None) -> str:
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Why requests missed: {args.name}",
        "",
        f'`python -m bench.misses {command}` (bench/README.md, "Why requests miss"). '
        f"`{args.strategy}`'s oracle-feasible requests in the measured window that missed "
        "their SLA, by cause: `queue` waited for a slot and would have been in time "
        "without the wait; `queue and compute` waited and was too slow even without it; "
        "`compute` did not wait, on a backend too slow for it at the median round trip "
        "(its true compute time there), where another allowed backend was in time; "
        "`network` did not wait, its own round trip made it late. `wait` and `slack`: "
        "the medians, over the `queue` misses, of the wait and of the time to spare the "
        "request had without it.",
        "",
    ]
    for rho in sorted({r["load"] for r in rows}):
        mine = [r for r in rows if r["load"] == rho]
        feasible = sum(r["feasible"] for r in mine)
        missed = sum(r[c] for r in mine for c in CAUSES)
        lines += [
            f"### {rho:.0%} load: {missed:,} of {feasible:,} missed "
            f"({1 - missed / feasible:.2%} met)",
            "",
            "| model | deadline ms | feasible | missed | "
            + " | ".join(CAUSES)
            + " | wait ms | slack ms |",
            "|---|---|---|---|" + "---|" * len(CAUSES) + "---|---|",
        ]
        for r in mine:
            n = sum(r[c] for c in CAUSES)
            if not n:
                continue
            deadline = "none" if r["deadline_ms"] is None else f"{r['deadline_ms']:,.0f}"
            cells = [f"{r[c]:,}" for c in CAUSES]
            wait = "" if r["wait_ms"] is None else f"{r['wait_ms']:.0f}"
            slack = "" if r["slack_ms"] is None else f"{r['slack_ms']:.0f}"
            lines.append(
                f"| {r['model']} | {deadline} | {r['feasible']:,} | {n:,} | "
                + " | ".join(cells)
                + f" | {wait} | {slack} |"
            )
        totals = [sum(r[c] for r in mine) for c in CAUSES]
        lines.append(
            f"| **all** | | {feasible:,} | {missed:,} | "
            + " | ".join(f"{t:,} ({t / missed:.0%})" if missed else "0" for t in totals)
            + " | | |"
        )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
