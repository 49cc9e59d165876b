"""The resource map: running / waiting / loaded scraped from each backend's metrics, and
observed TTFT and decode speed folded from the requests it completed.

The real simulator serves the demo world on loopback; the catalog in the database
points at it; the live maps are in the real Redis, under keys private to each test.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import redis
from django.utils import timezone

from accounts.models import Organization
from backends import livestate, providers, resources
from backends.models import Deployment, Provider
from backends.presets import PRESETS
from backends.simulator import Simulator
from backends.tasks.resources import fold_observed_speeds
from billing.models import UsageEvent
from routing.engine import Profile
from tests import leaks
from tests.waiting import eventually

#: 1 ms from the gateway (westeurope); 8B: 128 slots, 288 tokens/s, 14 s cold start;
#: 70B: 17 ms TTFT floor (50 ms at the 480-token reference prompt), 58.6 tokens/s.
WESTEUROPE_8B = "westeurope-tesseract-nvidia-h100--llama-3.1-8b-instruct"
WESTEUROPE_70B = "westeurope-tesseract-nvidia-h100--llama-3.3-70b-instruct"
#: 67 scrapes at once in a process that also serves the simulator, on a busy machine:
#: the tests give them time (the job's own timeout is `resources.SCRAPE_TIMEOUT_S`).
SCRAPE_TIMEOUT_S = 30.0


@dataclass
class Mesh:
    simulator: Simulator
    url: str
    #: one pooled client, as the gateway has (a new one costs ~25 ms of TLS set-up)
    http: httpx.Client

    def ids(self, *slugs: str) -> list[int]:
        return list(Deployment.objects.filter(slug__in=slugs).values_list("pk", flat=True))

    def cold_start_ends(self, slug: str) -> None:
        """Fast-forward `slug`'s cold start to its end: a cold start short enough to wait
        out would be one a busy machine's stall could outlast before the test looks."""
        self.simulator.deployments[slug].loading_until = 0.0
        assert self.control(slug)["availability"] == "ready"

    def control(self, slug: str, **state: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.url}/d/{slug}/control", json=state)
        response.raise_for_status()
        return response.json()

    def chat(self, slug: str, *, max_tokens: int) -> tuple[float, float]:
        """A streamed chat completion, timed as the gateway times it: (TTFT, total) ms."""
        model = slug.partition("--")[2]
        body = {
            "model": model,
            "messages": [{"role": "user", "content": "hello"}],  # 2 prompt tokens
            "max_tokens": max_tokens,
            "stream": True,
        }
        url = f"{self.url}/d/{slug}/v1/chat/completions"
        start = time.perf_counter()
        first = None
        with self.http.stream("POST", url, json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if first is None and '"content":" ' in line:
                    first = time.perf_counter()
        end = time.perf_counter()
        assert first is not None
        return (first - start) * 1000, (end - start) * 1000


@pytest.fixture
def mesh(catalog, db, spec, server) -> Iterator[Callable[..., Mesh]]:
    swappable, url = server

    with httpx.Client(limits=httpx.Limits(max_connections=None)) as http:

        def make(*, time_scale: float = 1.0) -> Mesh:
            swappable.app = Simulator(spec, time_scale=time_scale, gateway_region="westeurope")
            return Mesh(swappable.app, url, http)

        yield make


@pytest.fixture
def acme(db) -> Organization:
    return Organization.objects.create(name="Acme", slug="acme")


def usage(org: Organization, deployment: str, **fields: Any) -> UsageEvent:
    """A completed request as the usage drain records it (streamed, one attempt, ok)."""
    values: dict[str, Any] = {
        "stream": True, "status": UsageEvent.Status.OK, "attempts": 1,
        "input_tokens": 2, "output_tokens": 10, "ttft_ms": 20.0, "latency_ms": 180.0,
        "network_ms": 1.0, "queue_ms": 0.0, **fields,
    }  # fmt: skip
    return UsageEvent.objects.create(
        request_id=uuid.uuid4().hex, org=org, endpoint="chat.completions",
        model=deployment.partition("--")[2], served_model=deployment.partition("--")[2],
        deployment=deployment, region="westeurope", cluster=deployment.partition("--")[0],
        chip="nvidia-h100", usage_source="upstream", cost_usd=Decimal(0), **values,
    )  # fmt: skip


def record(client: redis.Redis, slug: str) -> livestate.DeploymentLive:
    return msgspec.structs.replace(livestate.deployment_get(client, slug), updated_at=0.0)


# --------------------------------------------------------------------------- scraping


@contextmanager
def two_running_three_waiting(m: Mesh, slug: str) -> Iterator[None]:
    """`slug` with two slots, two requests running and three waiting, for the block."""
    m.control(slug, concurrency_slots=2)
    slots = m.simulator.deployments[slug].slots
    with ThreadPoolExecutor(5) as pool:
        # 800 tokens hold a slot 2.8 s: time for all five to arrive on a busy machine.
        calls = [pool.submit(m.chat, slug, max_tokens=800) for _ in range(5)]
        eventually(lambda: (slots.running, slots.waiting) == (2, 3))
        yield
        m.control(slug, concurrency_slots=8)  # let the queue through
        for call in calls:
            call.result()


def test_scraping_reports_running_and_waiting_of_a_busy_deployment(mesh, live):
    m = mesh(time_scale=1.0)

    with two_running_three_waiting(m, WESTEUROPE_8B):
        busy = resources.scrape_metrics(
            client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
        )
        busy_record = record(live, WESTEUROPE_8B)
    idle = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert busy == {"scraped": 1, "failed": 0, "changed": 1}
    assert (busy_record.running, busy_record.waiting, busy_record.loaded) == (2, 3, True)
    assert idle == {"scraped": 1, "failed": 0, "changed": 1}
    assert (record(live, WESTEUROPE_8B).running, record(live, WESTEUROPE_8B).waiting) == (0, 0)


def test_a_model_in_its_cold_start_is_not_loaded(mesh, live):
    m = mesh(time_scale=1.0)  # the 8B's cold start takes 14 s: no stall outlasts it
    ids = m.ids(WESTEUROPE_8B)

    m.control(WESTEUROPE_8B, loaded=False)
    resources.scrape_metrics(client=live, deployment_ids=ids, timeout_s=SCRAPE_TIMEOUT_S)
    unloaded = record(live, WESTEUROPE_8B).loaded
    state = m.control(WESTEUROPE_8B, loaded=True)
    resources.scrape_metrics(client=live, deployment_ids=ids, timeout_s=SCRAPE_TIMEOUT_S)
    loading = record(live, WESTEUROPE_8B).loaded
    m.cold_start_ends(WESTEUROPE_8B)
    resources.scrape_metrics(client=live, deployment_ids=ids, timeout_s=SCRAPE_TIMEOUT_S)

    assert state["availability"] == "loading"
    assert (unloaded, loading, record(live, WESTEUROPE_8B).loaded) == (False, False, True)


def test_scraping_twice_changes_nothing(mesh, live, announced):
    mesh()

    first = resources.scrape_metrics(client=live, timeout_s=SCRAPE_TIMEOUT_S)
    before = {
        slug: record(live, slug) for slug in Deployment.objects.values_list("slug", flat=True)
    }
    first_announced = announced()
    second = resources.scrape_metrics(client=live, timeout_s=SCRAPE_TIMEOUT_S)
    after = {slug: record(live, slug) for slug in before}

    assert first == {"scraped": 67, "failed": 0, "changed": 67}
    assert [len(a["names"]) for a in first_announced] == [67]  # one for all of them
    assert second == {"scraped": 67, "failed": 0, "changed": 0}
    assert after == before
    assert announced() == []


def test_a_failed_scrape_leaves_the_live_map_alone(mesh, live):
    m = mesh()
    livestate.deployment_update(live, WESTEUROPE_8B, running=5, waiting=1, loaded=True)
    before = record(live, WESTEUROPE_8B)
    # Port 9 (discard) is closed on loopback: the connection is refused at once.
    Deployment.objects.filter(slug=WESTEUROPE_8B).update(endpoint_url="http://127.0.0.1:9/v1")

    counts = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert counts == {"scraped": 0, "failed": 1, "changed": 0}
    assert record(live, WESTEUROPE_8B) == before


def test_drained_deployments_are_not_scraped(mesh, live):
    m = mesh()
    Deployment.objects.filter(slug=WESTEUROPE_8B).update(drained=True)

    counts = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert counts == {"scraped": 0, "failed": 0, "changed": 0}


# ----------------------------------------------------------- scraping a provider's server

KEY = "vllm_test_key_7c1e9a4b2d8f6e3a5c0b9d7fQX2W"


def self_hosted(m: Mesh, slug: str, preset: str = "vllm", **persona: Any) -> Provider:
    """`slug` served through a provider made from `preset`, holding our sealed KEY: no
    URL of its own, the provider's base URL is the simulated server's /v1; the server
    wants the key on its API and its /metrics (`persona`)."""
    chosen = PRESETS[preset]
    provider = Provider.objects.create(
        slug=f"{preset}-here", name=chosen.name, preset=preset,
        base_url=f"{m.url}/d/{slug}/v1", auth_style=chosen.auth_style,
        exposes_metrics=chosen.exposes_metrics,
    )  # fmt: skip
    providers.credential_set(provider, KEY)
    Deployment.objects.filter(slug=slug).update(
        provider=provider, endpoint_url="", adapter=Deployment.Adapter.OPENAI
    )
    m.control(slug, persona={"auth_header": "authorization", "keys": [KEY], **persona})
    return provider


@pytest.fixture
def seen(caplog) -> leaks.Captured:
    caplog.set_level(logging.DEBUG)
    return leaks.Captured(caplog, KEY)


def live_map(client: redis.Redis) -> str:
    return repr(client.hgetall(livestate.DEPLOYMENTS))


def test_a_vllm_servers_running_and_waiting_reach_the_live_map_through_a_scrape_with_our_key(
    mesh, live, seen
):
    m = mesh(time_scale=1.0)

    # Busy first (the chats carry no key), then the server starts wanting one.
    with two_running_three_waiting(m, WESTEUROPE_8B):
        self_hosted(m, WESTEUROPE_8B)
        counts = resources.scrape_metrics(
            client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
        )
        busy = record(live, WESTEUROPE_8B)

    assert counts == {"scraped": 1, "failed": 0, "changed": 1}
    assert (busy.running, busy.waiting) == (2, 3)
    seen.assert_no_secret(live_map(live))


def test_a_hosted_api_is_not_scraped(mesh, live):
    m = mesh()
    self_hosted(m, WESTEUROPE_8B, preset="groq")
    # Reached at a URL of its own, as the demo's partner clusters are: still not scraped.
    Deployment.objects.filter(slug=WESTEUROPE_8B).update(
        endpoint_url=f"{m.url}/d/{WESTEUROPE_8B}/v1"
    )

    counts = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert not PRESETS["groq"].exposes_metrics
    assert counts == {"scraped": 0, "failed": 0, "changed": 0}
    assert livestate.deployment_get(live, WESTEUROPE_8B).running is None


def test_a_provider_added_by_hand_says_whether_its_server_is_scraped(mesh, live):
    m = mesh()
    provider = self_hosted(m, WESTEUROPE_8B, preset="groq")
    Provider.objects.filter(pk=provider.pk).update(exposes_metrics=True)

    counts = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert counts == {"scraped": 1, "failed": 0, "changed": 1}


def test_a_refused_key_reads_nothing_and_leaves_the_live_map_alone(mesh, live, seen):
    m = mesh()
    self_hosted(m, WESTEUROPE_8B, keys=["vllm_another_key"])  # ours was revoked
    livestate.deployment_update(live, WESTEUROPE_8B, running=5, waiting=1, loaded=True)
    before = record(live, WESTEUROPE_8B)

    counts = resources.scrape_metrics(
        client=live, deployment_ids=m.ids(WESTEUROPE_8B), timeout_s=SCRAPE_TIMEOUT_S
    )

    assert counts == {"scraped": 0, "failed": 1, "changed": 0}
    assert record(live, WESTEUROPE_8B) == before
    # The server's 401 repeats the key it was sent: nothing of it may reach a log line.
    assert any("scrape of" in r.getMessage() for r in seen.caplog.records)
    seen.assert_no_secret(live_map(live))


def test_the_gauges_of_sglang_tgi_and_llama_cpp_read_as_running_and_waiting():
    servers = {
        "sglang": 'sglang:num_running_reqs{model_name="m"} 4\n'
        'sglang:num_queue_reqs{model_name="m"} 2',
        "tgi": "tgi_batch_current_size 4\ntgi_queue_size 2",
        "llama.cpp": "llamacpp:requests_processing 4\nllamacpp:requests_deferred 2",
    }
    for server, text in servers.items():
        got = resources.reading(resources.parse_metrics(text))
        assert (got.running, got.waiting) == (4, 2), server


def test_the_metrics_parser_reads_the_text_format():
    text = "\n".join(
        [
            "# HELP vllm:num_requests_running Number of requests.",
            "# TYPE vllm:num_requests_running gauge",
            'vllm:num_requests_running{model_name="a"} 2.0',
            'vllm:num_requests_running{model_name="b",} 1',  # a trailing comma is allowed
            'vllm:num_requests_waiting{model_name="a"} 3 1700000000000',  # a timestamp
            'odd{path="C:\\\\x",quote="say \\"hi\\"",nl="a\\nb"} +Inf',
            "no_labels NaN",
            "",
        ]
    )

    samples = resources.parse_metrics(text)

    assert [(s.name, s.value) for s in samples[:3]] == [
        ("vllm:num_requests_running", 2.0),
        ("vllm:num_requests_running", 1.0),
        ("vllm:num_requests_waiting", 3.0),
    ]
    assert samples[3].labels == {"path": "C:\\x", "quote": 'say "hi"', "nl": "a\nb"}
    assert samples[3].value == math.inf
    assert math.isnan(samples[4].value)
    assert resources.reading(samples) == resources.Reading(running=3, waiting=3, loaded=None)


@pytest.mark.parametrize(
    "line",
    [
        'vllm:num_requests_running{model_name="a" 2',  # unclosed
        "vllm:num_requests_running 2 3 4",
        "vllm:num_requests_running two",
        "vllm:num_requests_running 1_000",  # Python would read it; Prometheus does not
        '{model_name="a"} 1',
        "vllm:num_requests_running{model_name=a} 1",
        'm{a="1",a="2"} 1',
        'm{a="bad \\q escape"} 1',
    ],
)
def test_the_metrics_parser_refuses_what_is_not_the_text_format(line):
    with pytest.raises(resources.MetricsFormatError):
        resources.parse_metrics(f"ok 1\n{line}\n")


# --------------------------------------------------------------------------- observing


def test_observed_ttft_rises_after_the_slow_fault(mesh, live, acme):
    # The simulator sleeps 10 × its delays, and the requests are recorded in the
    # simulated milliseconds (÷ 10): a stall of a busy machine counts a tenth.
    scale = 10.0
    m = mesh(time_scale=scale)
    profile = Deployment.objects.get(slug=WESTEUROPE_70B)

    def serve_five() -> None:
        with ThreadPoolExecutor(5) as pool:
            for ttft, total in pool.map(lambda _: m.chat(WESTEUROPE_70B, max_tokens=10), range(5)):
                usage(
                    acme, WESTEUROPE_70B, ttft_ms=ttft / scale, latency_ms=total / scale,
                    output_tokens=10,
                )  # fmt: skip
        resources.fold_observed(client=live)

    serve_five()
    healthy = record(live, WESTEUROPE_70B)
    m.control(WESTEUROPE_70B, fault="slow", slow_factor=3)
    serve_five()
    slow = record(live, WESTEUROPE_70B)

    # As the profile says, normalised to its 480-token reference prompt: never below it
    # (a sleep never ends early), and not twice it however the machine stalled (the
    # 2-token prompt's own TTFT, not normalised, would be a third of it) ...
    assert profile.ttft_ms - 1.0 <= healthy.observed_ttft_ms < profile.ttft_ms * 2
    assert healthy.observed_decode_tps == pytest.approx(profile.decode_tokens_per_s, rel=0.15)
    # ... then three times slower, of which five requests carry the average 2/3 of the
    # way on the logarithm: at least 50^(1/3) × 150^(2/3) = 104 ms, whatever the
    # machine did.
    assert slow.observed_ttft_ms > profile.ttft_ms * 2
    assert slow.observed_decode_tps < healthy.observed_decode_tps / 1.5


def test_folding_twice_changes_nothing(mesh, live, acme):
    mesh()
    for ttft in (40.0, 60.0, 80.0):
        usage(acme, WESTEUROPE_70B, ttft_ms=ttft, latency_ms=ttft + 180.0)

    first = fold_observed_speeds()
    once = record(live, WESTEUROPE_70B)
    mark = live.get(resources.WATERMARK)
    second = fold_observed_speeds()

    assert (first, second) == (3, 0)
    assert record(live, WESTEUROPE_70B) == once
    assert live.get(resources.WATERMARK) == mark
    assert once.observed_ttft_ms is not None
    assert once.observed_decode_tps is not None


def test_only_requests_that_timed_their_backend_are_folded(mesh, live, acme):
    mesh()
    skipped = [
        usage(acme, WESTEUROPE_70B, stream=False),  # a whole answer: no first token
        usage(acme, WESTEUROPE_70B, attempts=2),  # the TTFT includes a failed backend
        usage(acme, WESTEUROPE_70B, status=UsageEvent.Status.ERROR),
        usage(acme, WESTEUROPE_70B, status=UsageEvent.Status.CANCELLED),
        usage(acme, WESTEUROPE_70B, ttft_ms=None),
        usage(acme, "gone-from-the-catalog--llama-3.3-70b-instruct"),
    ]
    short = usage(acme, WESTEUROPE_8B, output_tokens=5)  # a TTFT, but too short for speed

    read = resources.fold_observed(client=live)

    assert read == 7
    assert livestate.deployment_get(live, WESTEUROPE_70B) == livestate.DeploymentLive()
    folded = record(live, WESTEUROPE_8B)
    assert folded.observed_ttft_ms is not None
    assert folded.observed_decode_tps is None
    assert int(live.get(resources.WATERMARK)) == short.pk > skipped[-1].pk


def test_the_first_fold_starts_ten_minutes_back_not_at_the_beginning(mesh, live, acme):
    mesh()
    usage(acme, WESTEUROPE_70B, created_at=timezone.now() - timedelta(hours=1))
    usage(acme, WESTEUROPE_70B)

    assert resources.fold_observed(client=live) == 1


def test_a_watermark_past_the_newest_event_starts_again_from_the_newest(mesh, live, acme):
    mesh()
    newest = usage(acme, WESTEUROPE_70B)
    live.set(resources.WATERMARK, newest.pk + 1000)  # the database was reset, Redis was not

    assert resources.fold_observed(client=live) == 0
    assert int(live.get(resources.WATERMARK)) == newest.pk
    usage(acme, WESTEUROPE_70B)
    assert resources.fold_observed(client=live) == 1


def observed_ttft(slug: str, ttft_ms: float) -> float:
    """The TTFT sample `usage(org, slug, ttft_ms=...)` makes (at the reference prompt)."""
    d = Deployment.objects.get(slug=slug)
    profile = Profile(
        d.ttft_ms, d.reference_prompt_tokens, d.prefill_tokens_per_s, d.decode_tokens_per_s,
        0.0, 0.0,
    )  # fmt: skip
    sample = resources.observation(
        profile, input_tokens=2, output_tokens=10, ttft_ms=ttft_ms, latency_ms=180.0,
        network_ms=1.0, queue_ms=0.0,
    ).ttft_ms  # fmt: skip
    assert sample is not None
    return sample


def folded_once(mesh, live, acme, settings) -> tuple[Any, livestate.DeploymentLive]:
    """One request 5 s ago, folded (α 20%, a time constant of 1 s): its time and the
    live record after the fold."""
    settings.TESSERACT_OBSERVED_EWMA_ALPHA_PCT = 20
    settings.TESSERACT_OBSERVED_TIME_CONSTANT_MS = 1000
    mesh()
    t0 = timezone.now() - timedelta(seconds=5)
    usage(acme, WESTEUROPE_70B, created_at=t0)
    resources.fold_observed(client=live)
    return t0, record(live, WESTEUROPE_70B)


def test_a_busy_backends_requests_of_a_tenth_of_a_second_move_its_average_a_tenth_of_the_way(
    mesh, live, acme, settings
):
    t0, before = folded_once(mesh, live, acme, settings)
    assert before.sampled_at == pytest.approx(t0.timestamp())

    # Fifty requests in the next 100 ms, all ten times as slow: as fifty EWMA steps they
    # would carry the average all the way (1 - 0.8^50); as 100 ms of a moving average
    # over a second, 1 - e^-0.1 of the way.
    for i in range(50):
        at = t0 + timedelta(milliseconds=2 * (i + 1))
        usage(acme, WESTEUROPE_70B, created_at=at, ttft_ms=200.0)
    resources.fold_observed(client=live)
    after = record(live, WESTEUROPE_70B)

    slow = observed_ttft(WESTEUROPE_70B, 200.0)
    assert slow > 5 * before.observed_ttft_ms
    weight = 1 - math.exp(-0.1)
    assert after.observed_ttft_ms == pytest.approx(
        before.observed_ttft_ms * (slow / before.observed_ttft_ms) ** weight, rel=1e-3
    )
    assert after.sampled_at == pytest.approx((t0 + timedelta(milliseconds=100)).timestamp())


def test_one_straggler_among_a_busy_seconds_requests_barely_moves_the_average(
    mesh, live, acme, settings
):
    t0, before = folded_once(mesh, live, acme, settings)

    # A second of a busy backend: 99 requests as fast as before and one whose first
    # token came 100 times later (a straggler). An arithmetic average of the second
    # would double; the geometric one moves by 100^(1/100), under 5%.
    for i in range(100):
        at = t0 + timedelta(milliseconds=10 * (i + 1))
        usage(acme, WESTEUROPE_70B, created_at=at, ttft_ms=2000.0 if i == 50 else 20.0)
    resources.fold_observed(client=live)
    after = record(live, WESTEUROPE_70B)

    weight = 1 - math.exp(-1.0)
    without = livestate.fold(before.observed_ttft_ms, observed_ttft(WESTEUROPE_70B, 20.0), weight)
    assert without < after.observed_ttft_ms < 1.05 * without


def test_a_backend_slower_for_everyone_moves_as_far_on_the_logarithm():
    # The fold's weight carries the average that share of the way, as a ratio: a
    # tenth of the way from 50 to 500 is x1.26, a half x3.16, all of it 500.
    assert livestate.fold(50.0, 500.0, 0.1) == pytest.approx(50.0 * 10**0.1)
    assert livestate.fold(50.0, 500.0, 0.5) == pytest.approx(50.0 * 10**0.5)
    assert livestate.fold(50.0, 500.0, 1.0) == pytest.approx(500.0)
    assert livestate.fold(50.0, 5.0, 0.5) == pytest.approx(50.0 / 10**0.5)  # faster too


def test_a_sample_or_a_prior_of_zero_is_none():
    # A profile's TTFT of 0 scales every sample to 0: no logarithm, no sample, no prior.
    mean = resources._Mean()
    for sample in (0.0, None, 4.0, 16.0):
        mean.add(sample)
    assert (mean.count, mean.value()) == (2, pytest.approx(8.0))
    assert livestate.fold(0.0, 8.0, 0.2) == 8.0


def test_requests_older_than_those_folded_before_still_move_the_average_by_their_count(
    mesh, live, acme, settings
):
    t0, before = folded_once(mesh, live, acme, settings)

    # A gateway's spool, replayed after Redis came back: five records of before t0.
    for i in range(5):
        usage(acme, WESTEUROPE_70B, created_at=t0 - timedelta(seconds=10 - i), ttft_ms=200.0)
    resources.fold_observed(client=live)
    after = record(live, WESTEUROPE_70B)

    assert after.observed_ttft_ms > 2 * before.observed_ttft_ms  # 1 - 0.8^5 of the way
    assert after.sampled_at == before.sampled_at


def test_a_quiet_backends_requests_still_weigh_what_the_alpha_gives_each():
    # Three requests a second apart: each as one EWMA step; fewer than the span allows.
    assert livestate.fold_weight(3, 3.0, 0.2, 1.0) == pytest.approx(1 - 0.8**3)
    # The first fold (the span unknown) and a time constant of 0 are bounded by count only.
    assert livestate.fold_weight(50, None, 0.2, 1.0) == pytest.approx(1 - 0.8**50)
    assert livestate.fold_weight(50, 0.1, 0.2, 0.0) == pytest.approx(1 - 0.8**50)
    # None newer than the newest folded before (a spool replayed, a clock behind): time
    # says nothing, so they weigh by count, not nothing.
    assert livestate.fold_weight(5, -0.5, 0.2, 1.0) == pytest.approx(1 - 0.8**5)
    assert livestate.fold_weight(5, 0.0, 0.2, 1.0) == pytest.approx(1 - 0.8**5)


def test_an_observation_is_backend_side_and_normalised_to_the_reference_prompt():
    # 50 ms of fixed cost + 1,000 tokens at 20,000 tokens/s = 100 ms at the reference.
    profile = Profile(100.0, 1000, 20_000.0, 50.0, 0.0, 0.0)

    o = resources.observation(
        profile, input_tokens=3000, output_tokens=101, ttft_ms=450.0,
        latency_ms=1450.0, network_ms=40.0, queue_ms=10.0,
    )  # fmt: skip

    # 400 ms at the backend, where the profile expects 50 + 150 = 200 for 3,000 tokens:
    # twice as slow, i.e. 200 ms at the reference prompt.
    assert o.ttft_ms == pytest.approx(200.0)
    assert o.decode_tps == pytest.approx(100 / 1.0)  # 100 tokens after the first, in 1 s


def test_a_first_token_sooner_than_the_predicted_network_is_no_ttft_sample():
    profile = Profile(100.0, 1000, 20_000.0, 50.0, 0.0, 0.0)

    o = resources.observation(
        profile, input_tokens=10, output_tokens=2, ttft_ms=30.0,
        latency_ms=40.0, network_ms=35.0, queue_ms=0.0,
    )  # fmt: skip

    assert o == resources.Observation(ttft_ms=None, decode_tps=None)
