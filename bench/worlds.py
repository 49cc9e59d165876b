"""A `backends.world.WorldSpec` turned into engine types, for the benchmarks.

`backends/snapshot.py` builds the same `Backend`s from ORM rows; both call the engine's
one builder, `routing.engine.build_backend`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.world import WorldSpec, certifications  # noqa: E402
from routing.engine import Backend, LatencyMap, Snapshot, build_backend  # noqa: E402


def engine_backends(world: WorldSpec) -> list[Backend]:
    out = []
    for d in world.deployments.values():
        c = world.clusters[d.cluster]
        r = world.regions[c.region]
        out.append(
            build_backend(
                id=d.slug,
                model=d.model,
                region=c.region,
                country=r.country_code,
                figures=d.profile,
                concurrency_slots=d.concurrency_slots,
                cluster=c.slug,
                chip=c.chip,
                owner=c.owner,
                certifications=certifications(r, c),
                jurisdictions=r.jurisdictions,
            )
        )
    return out


def latency_map(world: WorldSpec) -> LatencyMap:
    return LatencyMap(
        rtt={k: v[0] for k, v in world.rtt.items()},
        coords={s: (r.latitude, r.longitude) for s, r in world.regions.items()},
    )


def engine_snapshot(world: WorldSpec, version: int | str = 0) -> Snapshot:
    return Snapshot(engine_backends(world), latency_map(world), version)
