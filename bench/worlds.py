"""A `backends.world.WorldSpec` turned into engine types, for the benchmarks.

This mirrors what `backends/snapshot.py` does from ORM rows, without a database.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backends.world import WorldSpec, certifications  # noqa: E402
from routing.engine import Backend, LatencyMap, Profile, Snapshot  # noqa: E402


def engine_backends(world: WorldSpec) -> list[Backend]:
    out = []
    for d in world.deployments.values():
        c = world.clusters[d.cluster]
        r = world.regions[c.region]
        p = d.profile
        out.append(
            Backend(
                id=d.slug,
                model=d.model,
                region=c.region,
                country=r.country_code,
                cluster=c.slug,
                chip=c.chip,
                owner=c.owner,
                profile=Profile(
                    ttft_ms=p.ttft_ms,
                    reference_prompt_tokens=p.reference_prompt_tokens,
                    prefill_tokens_per_s=p.prefill_tokens_per_s,
                    decode_tokens_per_s=p.decode_tokens_per_s,
                    price_input_per_mtok=p.price_input_per_mtok,
                    price_output_per_mtok=p.price_output_per_mtok,
                ),
                concurrency_slots=d.concurrency_slots,
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
