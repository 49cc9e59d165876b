"""A small hand-made world for engine tests: plain data, no Django, no database.

A helper module, not a conftest: the suite runs with `--noconftest` too.

Regions (RTT from each client, ms): paris (FR, EU), frankfurt (DE, EU),
virginia (US), oregon (US), tokyo (JP).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from routing.engine import Backend, LatencyMap, LiveState, Profile, Snapshot  # noqa: E402

COORDS = {
    "paris": (48.86, 2.35),
    "frankfurt": (50.11, 8.68),
    "virginia": (37.37, -79.82),
    "oregon": (45.52, -122.68),
    "tokyo": (35.68, 139.69),
}
COUNTRY = {"paris": "FR", "frankfurt": "DE", "virginia": "US", "oregon": "US", "tokyo": "JP"}
JURIS = {
    "paris": frozenset({"FR", "EU", "EEA"}),
    "frankfurt": frozenset({"DE", "EU", "EEA"}),
    "virginia": frozenset({"US"}),
    "oregon": frozenset({"US"}),
    "tokyo": frozenset({"JP"}),
}
_RTT = {
    ("paris", "frankfurt"): 10.0,
    ("paris", "virginia"): 80.0,
    ("paris", "oregon"): 140.0,
    ("paris", "tokyo"): 220.0,
    ("frankfurt", "virginia"): 90.0,
    ("frankfurt", "oregon"): 150.0,
    ("frankfurt", "tokyo"): 230.0,
    ("virginia", "oregon"): 60.0,
    ("virginia", "tokyo"): 150.0,
    ("oregon", "tokyo"): 100.0,
}
LATENCY = LatencyMap(rtt=_RTT, coords=COORDS, intra_region_ms=1.0)

#: A profile with easy numbers: 1 ms per 10 input tokens (10,000 tok/s), 10 ms per
#: output token (100 tok/s), 5 ms fixed, $1 in / $2 out per 1M tokens.
PROFILE = Profile(
    ttft_ms=105.0,
    reference_prompt_tokens=1000,
    prefill_tokens_per_s=10_000.0,
    decode_tokens_per_s=100.0,
    price_input_per_mtok=1.0,
    price_output_per_mtok=2.0,
)


def make_backend(
    id: str,
    region: str = "paris",
    *,
    model: str = "m-70b",
    certs: frozenset[str] | set[str] = frozenset({"soc2", "gdpr"}),
    slots: int = 10,
    profile: Profile = PROFILE,
    max_queue: int | None = None,
    **state,
) -> Backend:
    return Backend(
        id=id,
        model=model,
        region=region,
        country=COUNTRY[region],
        cluster=f"{region}-cluster",
        chip="gpu",
        profile=profile,
        concurrency_slots=slots,
        certifications=frozenset(certs),
        jurisdictions=JURIS[region],
        max_queue=max_queue,
        state=LiveState(**state),
    )


def make_snapshot(*backends: Backend, version: int = 1) -> Snapshot:
    return Snapshot(backends, LATENCY, version)
