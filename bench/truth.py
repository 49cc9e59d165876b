"""The honest benchmark's truth: what the backends really do, apart from the engine.

The engine predicts with the profiles (`backends/world.py`). In `--honest` runs the
simulated backends do not follow them exactly; they follow measurements:

* **Per-request scatter.** Every request draws one (TTFT ratio, decode-speed ratio)
  pair from the llmperf leaderboard's per-request measurements
  (`bench/data/llmperf_leaderboard_requests_2023-12.csv`): each measured request's
  TTFT and decode speed over its provider's median for that model size, pooled over
  providers (Replicate left out: its 3.7–5.6 s median TTFTs are cold starts, which
  the benchmark does not model). 8B requests draw from the 7B and 13B rows, 70B
  and 405B from the 70B rows (there are no 405B rows). The prefill time is
  multiplied by the TTFT ratio, the decode time divided by the decode ratio. The
  pair is one request's, so their correlation is kept. The measured TTFTs include
  the client's network and the provider's queue at concurrency 5, so the scatter is,
  if anything, wider than a backend's own.
* **Per-size TTFT.** Where a profile's TTFT is derived from another model's by
  parameter count (`ProfileSource.ttft_scale`, the H100 8B: 8/70 of the 70B's), the
  truth uses the measured ratio instead: the median over providers of the 8B's
  TTFT over the 70B's on the same endpoint (`backends/data/hw_provider_profiles.csv`,
  the closest client of each), `SMALL_OVER_LARGE_TTFT`. Both TTFTs carry the same
  client network, so the ratio leans toward 1: a pessimistic 8B. The 405B keeps its
  405/70 (no per-size measurement).

The engine sees none of this directly: it learns it, late, from the observed TTFT
and decode speed the simulator feeds back (`bench/sim.py`, the way the gateway and
`backends.resources.observation` do).
"""

from __future__ import annotations

import csv
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from backends.world import PROFILE_SOURCES, WorldSpec

from .workload import Job

LLMPERF = Path(__file__).resolve().parent / "data" / "llmperf_leaderboard_requests_2023-12.csv"
#: Providers left out of the scatter: cold starts, which the benchmark does not model.
EXCLUDED_PROVIDERS = frozenset({"replicate"})
#: llmperf model sizes each benchmark model draws its scatter from.
SIZE_ROWS = {
    "llama-3.1-8b-instruct": ("7b", "13b"),
    "llama-3.3-70b-instruct": ("70b",),
    "llama-3.1-405b-instruct": ("70b",),
}
#: Measured TTFT of an 8B over a 70B on the same endpoint, median over the providers of
#: `backends/data/hw_provider_profiles.csv` that list both (Replicate out, as above):
#: anyscale 0.96, fireworks 0.64, lepton 1.22, together 0.82, anyscale.com 1.03,
#: fireworks.ai 1.04, groq.com 0.89, octo.ai 0.75, perplexity.ai 0.77, together.ai 0.62.
SMALL_OVER_LARGE_TTFT = 0.855


def load_scatter(path: Path = LLMPERF) -> dict[str, list[tuple[float, float]]]:
    """(TTFT ratio, decode ratio) per successful request, by llmperf model size."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["error_code"] or row["provider"] in EXCLUDED_PROVIDERS:
                continue
            try:
                ttft, decode = float(row["ttft_s"]), float(row["derived_decode_tok_per_s"])
            except ValueError:
                continue
            if ttft > 0 and decode > 0:
                groups[(row["provider"], row["model_size"])].append((ttft, decode))
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for (_, size), rows in sorted(groups.items()):
        mid_ttft = statistics.median(t for t, _ in rows)
        mid_decode = statistics.median(d for _, d in rows)
        out[size].extend((t / mid_ttft, d / mid_decode) for t, d in rows)
    return dict(out)


@dataclass(slots=True)
class Truth:
    """What each request really costs: per-job ratios and per-deployment prefill scale."""

    ttft_ratio: list[float]
    decode_ratio: list[float]
    prefill_scale: dict[str, float]
    #: How often a gateway re-reads the live maps: observed speeds, and the in-flight
    #: counts unless `inflight_read_s` is set (see bench/README.md).
    counter_age_s: float = 1.0
    #: How often a gateway re-reads the shared in-flight counts on their own (None: every
    #: `counter_age_s`). This and the next default to the simulator before the gateways
    #: read them every 0.25 s; `bench.routing` passes what the gateway does.
    inflight_read_s: float | None = None
    #: How often each gateway shares its in-flight counts (0: a read sees them exact).
    inflight_publish_s: float = 0.0
    #: Backends take their waiting requests earliest deadline first (the priority the
    #: gateway sends, `Request.queue_priority`), not in arrival order.
    deadline_queues: bool = False

    def service_ms(
        self, deployment: str, k: int, floor_ms: float, prompt_ms: float, decode_ms: float
    ) -> tuple[float, float]:
        """(prefill, decode) ms of job `k` on `deployment`, from the profile's parts."""
        prefill = (floor_ms + prompt_ms) * self.prefill_scale.get(deployment, 1.0)
        return prefill * self.ttft_ratio[k], decode_ms / self.decode_ratio[k]

    def on_profile(
        self, deployment: str, k: int, profile, input_tokens: int, output_tokens: int
    ) -> tuple[float, float]:
        """(prefill, decode) ms of job `k` on `deployment`, from its `ProfileSpec`."""
        return self.service_ms(
            deployment,
            k,
            profile.ttft_floor_ms,
            1000.0 * input_tokens / profile.prefill_tokens_per_s,
            1000.0 * output_tokens / profile.decode_tokens_per_s,
        )


def make_truth(
    world: WorldSpec,
    jobs: list[Job],
    seed: int = 1,
    counter_age_s: float = 1.0,
    inflight_read_s: float | None = None,
    inflight_publish_s: float = 0.0,
    deadline_queues: bool = False,
) -> Truth:
    """Draw every job's scatter once (its own RNG): every strategy meets the same truth."""
    scatter = load_scatter()
    rng = random.Random(seed + 104729)
    ttft, decode = [], []
    for job in jobs:
        pool = [p for size in SIZE_ROWS.get(job.request.model, ("70b",)) for p in scatter[size]]
        t, d = rng.choice(pool)
        ttft.append(t)
        decode.append(d)
    derived = {(s.chip, s.model): s.ttft_scale for s in PROFILE_SOURCES if s.ttft_scale < 1}
    scale = {}
    for slug, dep in world.deployments.items():
        by_count = derived.get((dep.profile.chip, dep.model))
        if by_count:
            scale[slug] = SMALL_OVER_LARGE_TTFT / by_count
    return Truth(
        ttft, decode, scale, counter_age_s, inflight_read_s, inflight_publish_s, deadline_queues
    )
