"""The resource map: what each deployment is doing now, by its own account and by ours.

Two periodic jobs write it into the live maps (`backends.livestate`):

* `scrape_metrics` (every `TESSERACT_SCRAPE_INTERVAL_S`): the Prometheus endpoint beside
  each deployment's OpenAI base URL (`/d/<slug>/v1` → `/d/<slug>/metrics`; vLLM serves
  `/metrics` beside `/v1`), all at once. The targets are read from the world the catalog
  builds (`backends.snapshot.load_world`), as the health check reads them
  (`backends.health`): a provider's deployment is scraped at its provider's base URL
  (or its own), with the provider's headers and credential — the same header and scheme
  as the health check's authenticated `GET /v1/models`, unsealed in that world, never
  logged. Only servers that serve metrics are scraped: a provider says whether its
  server does (`Provider.exposes_metrics`, from its preset: vLLM, SGLang, TGI and
  llama.cpp do; Groq, OpenAI and the other hosted APIs have no `/metrics`, and an
  operator adding a provider by hand ticks it or not); a deployment without a provider
  (the simulator) always is. `running` and `waiting` are each server's own gauges
  (`RUNNING`, `WAITING`, summed over the series; the first name found is read, a
  server exposing only its own): vLLM's `vllm:num_requests_running` / `…_waiting`,
  SGLang's `sglang:num_running_reqs` / `sglang:num_queue_reqs` (with
  `--enable-metrics`), TGI's `tgi_batch_current_size` / `tgi_queue_size`, llama.cpp's
  `llamacpp:requests_processing` / `llamacpp:requests_deferred` (with `--metrics`).
  `loaded` is `tesseract_simulator_model_loaded` where the backend exposes it (the
  simulator: 0 while the model is unloaded or a cold start runs, for a model that is
  loading is not loaded). A backend exposing no such gauge leaves `loaded` to the
  catalog (None). A scrape that fails — no answer, a 401 for a refused credential, a
  body that is not the text format — changes nothing: whether a backend is up, and
  whether its provider still takes our credential, is the health checks' call
  (`backends.health`), and stale counts beat invented zeros. The failure is logged at
  DEBUG with the URL and the status only (a provider's 401 may repeat the credential
  it was sent; its body is never looked at). prometheus-client is not a dependency;
  `parse_metrics` reads the text format 0.0.4 strictly (a malformed line is an error,
  not a guess).

* `fold_observed` (every `TESSERACT_OBSERVED_INTERVAL_S`): completed requests
  (`UsageEvent` rows, across tenants: the control plane aggregates, it shows nobody
  anything) newer than a watermark kept in Redis become samples of each deployment's
  backend-side TTFT and decode speed, folded into EWMAs seeded with the catalog
  profile. Both are geometric: a fold's samples are averaged on the logarithm and
  move the average by a power, not a difference (`livestate.fold`), so one straggler
  a hundred times late among a busy backend's second of requests moves its average
  by a few percent, not by a multiple.
  A deployment's new requests move its averages by `livestate.fold_weight`:
  a request weighs `TESSERACT_OBSERVED_EWMA_ALPHA_PCT` %, and the requests of a span
  of time together no more than 1 - exp(-span / `TESSERACT_OBSERVED_TIME_CONSTANT_MS`),
  so a busy backend's average covers about a second of its requests rather than its
  last five, whose per-request scatter would swing it (bench/README.md). Only streamed,
  successful, first-attempt requests measure a backend: a whole answer has no first
  token, and a failover's TTFT includes the backends that failed. `observation()` has
  the formulas. The watermark is the event id, not its time: rows reach the database
  after they were stamped (the usage drain runs every second), so a time watermark
  would skip late arrivals. It is advanced *before* the EWMAs are written: a crash in
  between loses a few samples, never counts one twice, and a replay changes nothing.
  A speed worse than the profile that no sample has moved for `STALE_S` fades halfway
  back to the profile at each fold: a backend that traffic avoids for being slow gets
  no new samples, so without fading it would be avoided forever, recovered or not;
  faded, it is tried again, and its next samples say which it is.

Both jobs hold a Redis lock for their run (`backends.probes.exclusive`): two at once
would fold the same events twice, or race each other's writes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
from django.conf import settings
from django.utils import timezone

from backends import livestate
from backends.models import Deployment
from backends.probes import exclusive, http_client
from backends.snapshot import load_world
from billing.models import UsageEvent
from routing.engine import Profile

logger = logging.getLogger(__name__)

SCRAPE_LOCK = "tesseract:control:lock:scrape"
FOLD_LOCK = "tesseract:control:lock:observed"
#: the id of the last UsageEvent folded
WATERMARK = "tesseract:control:observed:watermark"

SCRAPE_TIMEOUT_S = 0.9
SCRAPE_TIME_LIMIT_S = 10
FOLD_TIME_LIMIT_S = 30

#: The gauges of running and waiting requests as each server names them (a server
#: exposes only its own; the first found is read): vLLM, SGLang, TGI, llama.cpp.
RUNNING = (
    "vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size",
    "llamacpp:requests_processing",
)  # fmt: skip
WAITING = (
    "vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size",
    "llamacpp:requests_deferred",
)  # fmt: skip
LOADED = "tesseract_simulator_model_loaded"

#: Events read per query, and at most this many queries per run (the rest waits for
#: the next run, two seconds later).
BATCH = 5_000
MAX_BATCHES = 20
#: With no watermark yet (a fresh Redis), fold only this much history.
FIRST_LOOKBACK = timedelta(minutes=10)
#: Decode speed needs at least this many tokens after the first: shorter answers
#: measure how the backend batches its chunks (the simulator: every 10 ms), not speed.
MIN_DECODE_TOKENS = 8
#: Seconds without a sample after which a slow observed speed fades (module docstring).
STALE_S = 30.0


# --------------------------------------------------------------------------- parsing


class MetricsFormatError(ValueError):
    """The body is not Prometheus text exposition format 0.0.4."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_LABELS = rf"{_LABEL}(?:,{_LABEL})*,?"
_VALUE = r"[+-]?(?:Inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_SAMPLE = re.compile(
    rf"(?P<name>{_NAME})(?:\{{(?P<labels>{_LABELS})?\}})?[ \t]+(?P<value>{_VALUE})"
    r"(?:[ \t]+-?\d+)?[ \t]*"
)
_ONE_LABEL = re.compile(_LABEL)
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition; raises MetricsFormatError."""
    samples = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _SAMPLE.fullmatch(line)
        if match is None:
            raise MetricsFormatError(f"line {number}: not a sample: {line[:120]!r}")
        labels = {}
        for label in _ONE_LABEL.finditer(match["labels"] or ""):
            name, value = label[1], re.sub(r"\\.", lambda m: _UNESCAPE[m[0]], label[2])
            if name in labels:
                raise MetricsFormatError(f"line {number}: label {name!r} given twice")
            labels[name] = value
        samples.append(Sample(match["name"], labels, float(match["value"])))
    return samples


@dataclass(frozen=True, slots=True)
class Reading:
    """What one scrape says; None: the backend does not expose it."""

    running: int | None
    waiting: int | None
    loaded: bool | None

    def changes(self) -> dict[str, Any]:
        return {k: v for k, v in (("running", self.running), ("waiting", self.waiting),
                                  ("loaded", self.loaded)) if v is not None}  # fmt: skip


def reading(samples: Iterable[Sample]) -> Reading:
    values: dict[str, list[float]] = {}
    for s in samples:
        if math.isfinite(s.value):
            values.setdefault(s.name, []).append(s.value)

    def total(names: tuple[str, ...]) -> int | None:
        found = next((values[n] for n in names if n in values), None)
        return None if found is None else round(sum(found))

    loaded = values.get(LOADED)
    return Reading(
        running=total(RUNNING),
        waiting=total(WAITING),
        loaded=None if loaded is None else all(v >= 1 for v in loaded),
    )


# --------------------------------------------------------------------------- scraping


def metrics_url(endpoint_url: str) -> str:
    """`http://host/d/<slug>/v1` → `http://host/d/<slug>/metrics`."""
    return endpoint_url.rstrip("/").removesuffix("/v1") + "/metrics"


@dataclass(frozen=True)
class Target:
    slug: str
    url: str
    #: the provider's headers, credential included (never printed)
    headers: dict[str, str] = field(default_factory=dict, repr=False)


def scrape_metrics(
    *,
    client: Any,
    deployment_ids: Iterable[int] | None = None,
    timeout_s: float = SCRAPE_TIMEOUT_S,
) -> dict[str, int]:
    """Scrape every deployment that is not drained and whose server exposes metrics (or
    those of `deployment_ids`) once.

    Returns how many answered, failed, and changed the live map (announced together).
    """
    with exclusive(client, SCRAPE_LOCK, SCRAPE_TIME_LIMIT_S) as mine:
        if not mine:
            return {"skipped": 1}
        targets = _targets(deployment_ids)
        readings = asyncio.run(_scrape_all(targets, timeout_s))
        changed = []
        for t, r in zip(targets, readings, strict=True):
            if r is not None and livestate.deployment_update(
                client, t.slug, announce=False, **r.changes()
            ):
                changed.append(t.slug)
        if changed:
            livestate.announce_change(client, "deployments", changed)
        answered = sum(r is not None for r in readings)
        return {"scraped": answered, "failed": len(targets) - answered, "changed": len(changed)}


def _targets(deployment_ids: Iterable[int] | None) -> list[Target]:
    """Where to scrape, reached as the gateway and the health check reach each backend
    (`backends.health`): from the world the catalog builds, so a provider's deployments
    carry its headers and credential, unsealed there. Hosted APIs serve no metrics
    (`Endpoint.exposes_metrics`) and are left out."""
    world = load_world()
    drained = {b.id for b in world.snapshot.backends if b.state.drained}
    wanted = None
    if deployment_ids is not None:
        ids = list(deployment_ids)
        wanted = set(Deployment.objects.filter(pk__in=ids).values_list("slug", flat=True))
    return [
        Target(slug, metrics_url(e.url), e.upstream_headers())
        for slug, e in sorted(world.endpoints.items())
        if e.url and e.exposes_metrics and slug not in drained
        and (wanted is None or slug in wanted)
    ]  # fmt: skip


async def _scrape_all(targets: list[Target], timeout_s: float) -> list[Reading | None]:
    async with http_client(timeout_s) as http:
        return await asyncio.gather(*(_scrape(http, t) for t in targets))


async def _scrape(http: httpx.AsyncClient, t: Target) -> Reading | None:
    try:
        response = await http.get(t.url, headers=t.headers)
        response.raise_for_status()
        return reading(parse_metrics(response.text))
    except (httpx.HTTPError, MetricsFormatError) as exc:
        # Names the URL and the status, never the headers or the body (a provider's
        # 401 may repeat the credential it was sent).
        logger.debug("scrape of %s failed: %s", t.slug, exc)
        return None


# --------------------------------------------------------------------------- observing


@dataclass(frozen=True, slots=True)
class Observation:
    """What one completed request says about its backend; None: nothing."""

    ttft_ms: float | None
    decode_tps: float | None


def observation(
    profile: Profile,
    *,
    input_tokens: int,
    output_tokens: int,
    ttft_ms: float,
    latency_ms: float | None,
    network_ms: float | None,
    queue_ms: float | None,
) -> Observation:
    """One streamed request, as the gateway timed it, turned into backend speeds.

    TTFT: the gateway's time to first token less the network round trip and the
    queue wait it predicted (`routing.engine.LiveState.observed_ttft_ms` is backend-side,
    "queue and network excluded"; whatever the prediction got wrong lands here, which
    corrects the next one), then normalised to the profile's reference prompt: the
    sample × `profile.ttft_ms` / the profile's TTFT for this prompt, since the engine
    scales its whole prefill model by observed / `profile.ttft_ms`.
    A first token sooner than the predicted network and queue time says the prediction
    was wrong, not that the backend is instant: no TTFT sample then.
    Decode: the tokens after the first over the time between the first and the last
    (latency − TTFT); None for answers shorter than MIN_DECODE_TOKENS.
    """
    backend_ms = ttft_ms - (network_ms or 0.0) - (queue_ms or 0.0)
    expected_ms = profile.ttft_floor_ms + 1000.0 * input_tokens / profile.prefill_tokens_per_s
    ttft = None
    if backend_ms > 0 and expected_ms > 0:
        ttft = backend_ms * profile.ttft_ms / expected_ms
    decode = None
    if latency_ms is not None and output_tokens - 1 >= MIN_DECODE_TOKENS:
        span_ms = latency_ms - ttft_ms
        if span_ms > 0:
            decode = (output_tokens - 1) * 1000.0 / span_ms
    return Observation(ttft, decode)


_FIELDS = ("id", "deployment", "status", "stream", "attempts", "input_tokens",
           "output_tokens", "ttft_ms", "latency_ms", "network_ms", "queue_ms",
           "created_at")  # fmt: skip


@dataclass(slots=True)
class _Mean:
    """The running geometric mean of one kind of sample (`livestate.fold` says why)."""

    logs: float = 0.0
    count: int = 0

    def add(self, sample: float | None) -> None:
        if sample is not None and sample > 0:  # a profile's TTFT of 0 scales every one to 0
            self.logs += math.log(sample)
            self.count += 1

    def value(self) -> float:
        return math.exp(self.logs / self.count)


@dataclass(slots=True)
class _Samples:
    """One deployment's new requests in a fold: its two samples, and when the newest
    request ended (epoch seconds)."""

    ttft: _Mean = field(default_factory=_Mean)
    decode: _Mean = field(default_factory=_Mean)
    newest: float = 0.0


def fold_observed(*, client: Any, batch: int = BATCH) -> int:
    """Fold completed requests newer than the watermark into the live map's observed
    TTFT and decode speed; returns how many events were read (0 on a replay)."""
    with exclusive(client, FOLD_LOCK, FOLD_TIME_LIMIT_S) as mine:
        if not mine:
            return 0
        return _fold(client, batch)


def _fold(client: Any, batch: int) -> int:
    alpha = settings.TESSERACT_OBSERVED_EWMA_ALPHA_PCT / 100
    time_constant_s = settings.TESSERACT_OBSERVED_TIME_CONSTANT_MS / 1000
    mark = _watermark(client)
    live = livestate.read(client).deployments
    profiles: dict[str, Profile | None] = {}
    samples: dict[str, _Samples] = {}
    read = 0
    for _ in range(MAX_BATCHES):
        rows = list(
            UsageEvent.objects.filter(id__gt=mark).order_by("id").values_list(*_FIELDS)[:batch]
        )
        if not rows:
            break
        read += len(rows)
        mark = rows[-1][0]
        _load_profiles(profiles, {r[1] for r in rows})
        for _id, slug, status, stream, attempts, n_in, n_out, t, total, net, queue, at in rows:
            profile = profiles.get(slug)
            if (profile is None or t is None or not stream or attempts != 1
                    or status != UsageEvent.Status.OK):  # fmt: skip
                continue
            o = observation(
                profile, input_tokens=n_in, output_tokens=n_out, ttft_ms=t,
                latency_ms=total, network_ms=net, queue_ms=queue,
            )  # fmt: skip
            mine = samples.get(slug)
            if mine is None:
                mine = samples[slug] = _Samples()
            mine.ttft.add(o.ttft_ms)
            mine.decode.add(o.decode_tps)
            mine.newest = max(mine.newest, at.timestamp())
        if len(rows) < batch:
            break
    # Each average starts from the live map's, or else from the profile: the engine
    # routed on the profile until now.
    ttft: dict[str, float] = {}
    decode: dict[str, float] = {}
    newest: dict[str, float] = {}
    now = time.time()
    for slug, mine in samples.items():
        if not (mine.ttft.count or mine.decode.count):
            continue
        profile = profiles[slug]
        assert profile is not None
        state = live.get(slug) or livestate.DeploymentLive()
        span = mine.newest - state.sampled_at if state.sampled_at else None
        # A gateway whose clock runs ahead must not hold everyone's samples back.
        newest[slug] = min(max(mine.newest, state.sampled_at), now)
        for out, mean, prior, seed in (
            (ttft, mine.ttft, state.observed_ttft_ms, profile.ttft_ms),
            (decode, mine.decode, state.observed_decode_tps, profile.decode_tokens_per_s),
        ):
            if mean.count:
                start = seed if prior is None else prior
                weight = livestate.fold_weight(mean.count, span, alpha, time_constant_s)
                out[slug] = livestate.fold(start, mean.value(), weight)
    changed = _fade_stale(client, live, profiles, ttft.keys() | decode.keys(), now)
    if not read:
        _check_not_ahead(client, mark)
        if changed:
            livestate.announce_change(client, "deployments", changed)
        return 0

    client.set(WATERMARK, mark)  # first: at most once (module docstring)
    for slug in sorted(ttft.keys() | decode.keys()):
        changes: dict[str, Any] = {"observed_at": now, "sampled_at": newest[slug]}
        if slug in ttft:
            changes["observed_ttft_ms"] = round(ttft[slug], 3)
        if slug in decode:
            changes["observed_decode_tps"] = round(decode[slug], 3)
        if livestate.deployment_update(client, slug, announce=False, **changes):
            changed.append(slug)
    if changed:
        livestate.announce_change(client, "deployments", changed)
    return read


def _fade_stale(
    client: Any,
    live: Mapping[str, livestate.DeploymentLive],
    profiles: dict[str, Profile | None],
    sampled: Iterable[str],
    now: float,
) -> list[str]:
    """Fade slow speeds that no sample has moved for STALE_S halfway to the profile."""
    stale = {
        slug: state
        for slug, state in live.items()
        if now - state.observed_at > STALE_S
        and (state.observed_ttft_ms is not None or state.observed_decode_tps is not None)
    }
    for slug in sampled:
        stale.pop(slug, None)
    if not stale:
        return []
    _load_profiles(profiles, set(stale))
    changed = []
    for slug, state in sorted(stale.items()):
        profile = profiles.get(slug)
        if profile is None:
            continue
        changes: dict[str, Any] = {}
        ttft, decode = state.observed_ttft_ms, state.observed_decode_tps
        if ttft is not None and ttft > profile.ttft_ms * 1.05:
            changes["observed_ttft_ms"] = round((ttft + profile.ttft_ms) / 2, 3)
        if decode is not None and decode < profile.decode_tokens_per_s * 0.95:
            changes["observed_decode_tps"] = round((decode + profile.decode_tokens_per_s) / 2, 3)
        if changes and livestate.deployment_update(
            client, slug, announce=False, observed_at=now, **changes
        ):
            changed.append(slug)
    return changed


def _watermark(client: Any) -> int:
    raw = client.get(WATERMARK)
    if raw is not None:
        return int(raw)
    # A fresh Redis: start FIRST_LOOKBACK ago rather than at the beginning of time.
    since = timezone.now() - FIRST_LOOKBACK
    first = (
        UsageEvent.objects.filter(created_at__gte=since)
        .order_by("id")
        .values_list("id", flat=True)
        .first()
    )
    if first is not None:
        return first - 1
    return UsageEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def _check_not_ahead(client: Any, mark: int) -> None:
    """A watermark past the newest event means the database was reset under a Redis
    that was not: start again from the newest event, or nothing would be folded."""
    newest = UsageEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
    if newest < mark:
        logger.warning("usage watermark %s is past the newest event %s; resetting", mark, newest)
        client.set(WATERMARK, newest)
    elif client.get(WATERMARK) is None:
        client.set(WATERMARK, mark)


def _load_profiles(profiles: dict[str, Profile | None], slugs: set[str]) -> None:
    missing = slugs - profiles.keys()
    if not missing:
        return
    rows = Deployment.objects.filter(slug__in=missing).values_list(
        "slug", "ttft_ms", "reference_prompt_tokens", "prefill_tokens_per_s", "decode_tokens_per_s"
    )
    for slug, ttft, ref, prefill, decode in rows:
        profiles[slug] = Profile(ttft, ref, prefill, decode, 0.0, 0.0)
    for slug in missing - profiles.keys():
        profiles[slug] = None  # no longer in the catalog (or never: a failed request)
