"""Observability end to end: /metrics, W3C trace context to the backend, OTLP span export.

The gateway is the live one of `conftest.py`, shared by the session, so metric checks
compare a scrape before with one after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from backends import livestate
from routing.engine import DEFAULT_STRATEGY
from routing.gateway import observability
from routing.gateway.observability import Trace, parse_traceparent
from tests.servers import serve

EIGHT_B = "llama-3.1-8b-instruct"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"

Samples = list[tuple[str, dict[str, str], float]]


def scrape(mesh, headers: dict[str, str] | None = None) -> Samples:
    response = httpx.get(f"{mesh.gateway_url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items())
    )


def chat(mesh, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}", **headers},
        json=body,
        timeout=30,
    )


def in_region(mesh, model: str, region: str) -> list[str]:
    spec = mesh.spec
    return [
        slug
        for slug in mesh.deployments(model)
        if spec.clusters[spec.deployments[slug].cluster].region == region
    ]


class Recorder:
    """Wraps the simulator and keeps the headers of every completion request it gets."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/completions"):
            self.requests.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@pytest.fixture
def upstream_requests(mesh, simulator_server) -> list[dict[str, str]]:
    """The headers of each request the backends receive during the test."""
    swappable, _ = simulator_server
    recorder = Recorder(swappable.app)
    swappable.app = recorder
    return recorder.requests


# --------------------------------------------------------------------------- metrics

ASK_WESTEUROPE = {
    "model": EIGHT_B,
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 3,
    "tesseract": {"regions": ["westeurope"], "max_ttft_ms": 5000},
}


def test_metrics_after_a_few_requests_show_latency_sla_routing_and_failovers(mesh, api_key, usage):
    before = scrape(mesh)
    routes = set()
    for _ in range(3):
        response = chat(mesh, api_key, ASK_WESTEUROPE)
        assert response.status_code == 200
        routes.add(response.headers["x-tesseract-route"])
    [route] = routes
    region, _, chip, model = route.split("/")
    broken = in_region(mesh, EIGHT_B, "westeurope")
    for slug in broken:
        mesh.fault(slug, fault="error")
    assert chat(mesh, api_key, ASK_WESTEUROPE).status_code == 503  # the SLA is missed
    impossible = {**ASK_WESTEUROPE, "tesseract": {"max_ttft_ms": 1}}
    assert chat(mesh, api_key, impossible).status_code == 422
    after = scrape(mesh)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": model, "region": region, "chip": chip, "status": "ok"}
    assert delta("tesseract_gateway_request_duration_seconds_count", **ok) == 3
    assert delta("tesseract_gateway_time_to_first_token_seconds_count", **ok) == 3
    assert delta("tesseract_gateway_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert delta("tesseract_gateway_request_duration_seconds_sum", **ok) > 0
    failed = {"model": EIGHT_B, "region": "westeurope", "status": "error"}
    assert delta("tesseract_gateway_request_duration_seconds_count", **failed) == 1
    served = {"model": model, "region": region, "chip": chip}
    assert delta("tesseract_gateway_tokens_total", **served, direction="output") == 9
    assert delta("tesseract_gateway_sla_requests_total", model=EIGHT_B, outcome="met") == 3
    assert delta("tesseract_gateway_sla_requests_total", model=EIGHT_B, outcome="missed") == 1
    decisions = "tesseract_gateway_routing_decisions_total"
    assert delta(decisions, strategy=DEFAULT_STRATEGY, outcome="routed") == 4
    assert delta(decisions, strategy=DEFAULT_STRATEGY, outcome="sla_ttft") == 1
    assert delta("tesseract_gateway_failovers_total", region="westeurope", reason="status") == len(
        broken
    )
    assert delta("tesseract_gateway_errors_total", status="503", code="backend_unavailable") == 1
    assert delta("tesseract_gateway_errors_total", status="422", code="sla_unsatisfiable") == 1
    assert value(after, "process_resident_memory_bytes") > 0
    assert len(usage()) == 4  # the infeasible request was never routed, nor billed


def test_metrics_show_health_and_probed_rtts_read_from_the_live_maps_at_scrape_time(mesh):
    client = redis.Redis.from_url(settings.REDIS_URL)
    slug = next(iter(mesh.deployments("llama-3.1-405b-instruct")))
    other = next(iter(mesh.deployments(EIGHT_B)))
    try:
        client.hset(livestate.HEALTH, slug, "down")  # as backends.health writes it
        livestate.deployment_update(
            client,
            slug,
            announce=False,
            observed_ttft_ms=250.0,
            running=3,
            waiting=7,
        )
        livestate.rtt_set(client, "westeurope", "eastus", 81.5, announce=False)
        samples = scrape(mesh)
    finally:  # (the mesh fixture clears the live maps before each test, too)
        client.hdel(livestate.DEPLOYMENTS, slug)
        client.hdel(livestate.HEALTH, slug)
        client.hdel(livestate.RTT, livestate.rtt_field("westeurope", "eastus"))
        livestate.announce_change(client, "deployments", [slug])

    assert value(samples, "tesseract_live_maps_up") == 1
    health = "tesseract_deployment_health"
    assert value(samples, health, deployment=slug, state="down") == 1
    assert value(samples, health, deployment=slug, state="healthy") == 0
    assert value(samples, health, deployment=other, state="healthy") == 1
    assert value(samples, "tesseract_deployment_observed_ttft_seconds", deployment=slug) == 0.25
    assert value(samples, "tesseract_deployment_running_requests", deployment=slug) == 3
    assert value(samples, "tesseract_deployment_waiting_requests", deployment=slug) == 7
    assert value(samples, "tesseract_probe_rtt_seconds", src="westeurope", dst="eastus") == 0.0815
    spec = mesh.spec.deployments[slug]
    assert (
        value(
            samples,
            "tesseract_deployment_info",
            deployment=slug,
            model=spec.model,
            cluster=spec.cluster,
            region=mesh.spec.clusters[spec.cluster].region,
        )
        == 1
    )


def test_metrics_need_the_bearer_token_when_one_is_configured(mesh, settings):
    settings.TESSERACT_METRICS_TOKEN = "scrape-me"
    url = f"{mesh.gateway_url}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer scrape-mex"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Basic scrape-me"}).status_code == 401
    assert scrape(mesh, {"Authorization": "Bearer scrape-me"})


def test_metrics_speak_openmetrics_to_a_scraper_that_asks_for_it(mesh):
    response = httpx.get(
        f"{mesh.gateway_url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


# --------------------------------------------------------------------------- trace context


def test_a_callers_traceparent_reaches_every_backend_attempt_with_its_trace_id_kept(
    mesh, api_key, usage, upstream_requests
):
    body = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    headers = {"Authorization": f"Bearer {api_key}"}
    plan = httpx.post(f"{mesh.gateway_url}/v1/route", headers=headers, json=body).json()
    mesh.fault(plan["primary"]["backend_id"], fault="error")

    response = chat(mesh, api_key, body, traceparent=TRACEPARENT, tracestate="acme=7f,b=2")
    assert response.status_code == 200
    assert response.json()["tesseract"]["attempts"] == 2
    assert response.headers["x-tesseract-trace-id"] == TRACE_ID
    assert response.json()["tesseract"]["trace_id"] == TRACE_ID

    sent = [parse_traceparent(h["traceparent"].encode()) for h in upstream_requests]
    assert len(sent) == 2
    assert all(s is not None and s[0] == TRACE_ID and s[2] for s in sent)
    spans = {s[1] for s in sent if s is not None}
    assert len(spans) == 2  # a span of its own for each attempt
    assert PARENT_SPAN not in spans
    assert all(h["traceparent"].startswith("00-") for h in upstream_requests)
    assert all(h["tracestate"] == "acme=7f,b=2" for h in upstream_requests)
    [event] = usage()
    assert event.trace_id == TRACE_ID


def test_a_malformed_traceparent_is_replaced_by_a_new_trace(
    mesh, api_key, usage, upstream_requests
):
    malformed = TRACEPARENT.upper()
    response = chat(mesh, api_key, ASK_WESTEUROPE, traceparent=malformed, tracestate="acme=7f")
    assert response.status_code == 200
    trace_id = response.headers["x-tesseract-trace-id"]
    assert re.fullmatch("[0-9a-f]{32}", trace_id)
    assert trace_id != TRACE_ID
    [sent] = upstream_requests
    assert sent["traceparent"].startswith(f"00-{trace_id}-")
    assert "tracestate" not in sent  # it belonged to the discarded trace
    [event] = usage()
    assert event.trace_id == trace_id


def test_a_request_without_a_traceparent_starts_a_sampled_trace_of_its_own(
    mesh, api_key, usage, upstream_requests
):
    response = chat(mesh, api_key, ASK_WESTEUROPE)
    trace_id = response.headers["x-tesseract-trace-id"]
    [sent] = upstream_requests
    assert re.fullmatch(f"00-{trace_id}-[0-9a-f]{{16}}-01", sent["traceparent"])
    usage()


@pytest.mark.parametrize(
    "header",
    [
        TRACEPARENT.upper(),  # upper case hex
        f"00-{'0' * 32}-{PARENT_SPAN}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"ff-{TRACE_ID}-{PARENT_SPAN}-01",  # the forbidden version
        f"00-{TRACE_ID}-{PARENT_SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID[:-1]}-{PARENT_SPAN}-01",  # short trace id
        f"00-{TRACE_ID}-{PARENT_SPAN}0-01",  # long parent id
        f"00_{TRACE_ID}_{PARENT_SPAN}_01",  # wrong separators
        f"0-{TRACE_ID}-{PARENT_SPAN}-01",
        f"00-{TRACE_ID}-{PARENT_SPAN}-1",
        f"00-{TRACE_ID}-{PARENT_SPAN}-0g",
        "",
        "garbage",
    ],
)
def test_a_malformed_traceparent_is_ignored(header):
    assert parse_traceparent(header.encode()) is None
    trace = Trace.from_headers([(b"traceparent", header.encode()), (b"tracestate", b"a=1")])
    assert trace.parent_id is None
    assert trace.state is None
    assert re.fullmatch("[0-9a-f]{32}", trace.trace_id)


def test_a_well_formed_traceparent_is_continued_whatever_its_version_and_flags():
    assert parse_traceparent(TRACEPARENT.encode()) == (TRACE_ID, PARENT_SPAN, True)
    assert parse_traceparent(f" 00-{TRACE_ID}-{PARENT_SPAN}-00 ".encode()) == (
        TRACE_ID,
        PARENT_SPAN,
        False,
    )
    # a later version may add fields: the four known ones are read, the rest ignored
    assert parse_traceparent(f"01-{TRACE_ID}-{PARENT_SPAN}-03-what-next".encode()) == (
        TRACE_ID,
        PARENT_SPAN,
        True,
    )
    unsampled = Trace.from_headers([(b"traceparent", f"00-{TRACE_ID}-{PARENT_SPAN}-00".encode())])
    assert unsampled.upstream_headers()["traceparent"].endswith("-00")


def test_trace_span_and_request_ids_are_hex_of_their_length_and_do_not_repeat():
    ids = [observability.random_hex(8) for _ in range(10_000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    trace = Trace.start()
    assert re.fullmatch(r"[0-9a-f]{32}", trace.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", trace.span_id)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_worker_draws_other_ids_than_the_process_it_was_forked_from():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, "".join(observability.random_hex(8) for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    parent = "".join(observability.random_hex(8) for _ in range(4))
    assert len(child) == 64
    assert child != parent


def test_two_traceparent_headers_start_a_new_trace():
    trace = Trace.from_headers([(b"traceparent", TRACEPARENT.encode())] * 2)
    assert trace.trace_id != TRACE_ID


def test_an_oversized_or_unprintable_tracestate_is_not_forwarded():
    for state in (b"a=" + b"x" * 600, b"a=1\x00"):
        trace = Trace.from_headers([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", state)])
        assert trace.trace_id == TRACE_ID
        assert "tracestate" not in trace.upstream_headers()


# --------------------------------------------------------------------------- span export


class Collector:
    """A stand-in OpenTelemetry collector: records every OTLP/HTTP POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.posts.append((scope["path"], body))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/x-protobuf")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.http",
        reason="the otel extra is not installed (pip install -e '.[otel]')",
    )
    app = Collector()
    with serve(app) as url:
        try:
            yield app, url
        finally:
            observability.configure_export("")


def _attributes(items: Any) -> dict[str, Any]:
    out = {}
    for kv in items:
        field = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, field)
    return out


def test_a_span_per_request_is_exported_over_otlp_when_an_endpoint_is_configured(
    mesh, api_key, usage, upstream_requests, collector
):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    app, url = collector
    exporter = observability.configure_export(url)
    assert exporter is not None
    response = chat(mesh, api_key, ASK_WESTEUROPE, traceparent=TRACEPARENT)
    assert response.status_code == 200
    assert exporter.flush()

    assert {path for path, _ in app.posts} == {"/v1/traces"}
    spans, resources = [], []
    for _, body in app.posts:
        request = ExportTraceServiceRequest.FromString(body)
        for rs in request.resource_spans:
            resources.append(_attributes(rs.resource.attributes))
            spans.extend(span for ss in rs.scope_spans for span in ss.spans)
    assert all(r["service.name"] == "tesseract-gateway" for r in resources)
    [server] = [s for s in spans if s.kind == Span.SPAN_KIND_SERVER]
    [client] = [s for s in spans if s.kind == Span.SPAN_KIND_CLIENT]
    assert server.trace_id.hex() == TRACE_ID
    assert server.parent_span_id.hex() == PARENT_SPAN
    assert server.name == "POST /v1/chat/completions"
    assert server.end_time_unix_nano > server.start_time_unix_nano
    attributes = _attributes(server.attributes)
    info = response.json()["tesseract"]
    assert attributes["gen_ai.request.model"] == EIGHT_B
    assert attributes["tesseract.route"] == response.headers["x-tesseract-route"]
    assert attributes["tesseract.request_id"] == info["request_id"]
    assert attributes["tesseract.sla_met"] is True
    assert attributes["tesseract.ttft_ms"] > 0
    assert attributes["gen_ai.usage.output_tokens"] == 3

    # The backend's span hangs under the very span id it was sent.
    [sent] = upstream_requests
    assert client.trace_id.hex() == TRACE_ID
    assert client.parent_span_id == server.span_id
    assert sent["traceparent"] == f"00-{TRACE_ID}-{client.span_id.hex()}-01"
    assert _attributes(client.attributes)["tesseract.deployment"] == info["route"]["backend"]
    usage()


_ONE_REQUEST_FINISHED = """
import sys, types


class NotInstalled:  # the default install: no otel extra
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(name)


if sys.argv[1] == "default":
    sys.meta_path.insert(0, NotInstalled())

import tesseract_web.asgi  # the whole gateway
from billing.metering import UsageRecord
from routing.gateway import observability as o

record = UsageRecord(
    request_id="req_1", org_id=1, api_key_id=1, created_at=0.0, endpoint="chat.completions",
    model="m", served_model="m", deployment="d", region="r", cluster="c", chip="h100",
    stream=False, status="ok", input_tokens=1, output_tokens=2, usage_source="upstream",
    cost_usd="0", ttft_ms=1.0, latency_ms=2.0, sla_met=True,
)
route = types.SimpleNamespace(max_ttft_ms=100, max_latency_ms=None)
call = types.SimpleNamespace(
    parsed=types.SimpleNamespace(route=route), trace=o.Trace.start(), started=0.0
)
plan = types.SimpleNamespace(primary=object(), degraded=None, infeasible=None, strategy="s")
o.plan_made(plan)
o.request_finished(call=call, plan=plan, record=record)
assert o.span_exporter() is None
export = ("opentelemetry.sdk.trace", "opentelemetry.exporter")
print(sorted(m for m in sys.modules if m.startswith(export)))
"""


def finish_one_request_in_a_process(install: str, var_dir: Any, **env: str) -> str:
    """Run `_ONE_REQUEST_FINISHED` in a fresh interpreter; its last line of output."""
    environ = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tesseract_web.settings",
        "REDIS_URL": settings.REDIS_URL,
        "TESSERACT_VAR_DIR": str(var_dir),
        **env,
    }
    environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    done = subprocess.run(
        [sys.executable, "-c", _ONE_REQUEST_FINISHED, install],
        env=environ,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("install", ["default", "with the otel extra"])
def test_without_an_endpoint_nothing_of_span_export_is_imported(install, tmp_path):
    """The default install runs without the extra; with it, export's modules stay unloaded.

    (redis-py imports `opentelemetry.sdk.metrics` by itself when it is installed.)
    """
    assert finish_one_request_in_a_process(install.split()[0], tmp_path) == "[]"


def test_in_multiprocess_mode_a_scrape_adds_up_every_process(tmp_path, monkeypatch):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    for _ in range(2):  # two gateway workers behind one port
        finish_one_request_in_a_process("with", tmp_path, PROMETHEUS_MULTIPROC_DIR=str(shared))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(shared))
    from prometheus_client import generate_latest

    text = generate_latest(observability._process_registry()).decode()
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    assert value(samples, "tesseract_gateway_routing_decisions_total", strategy="s") == 2
    assert value(samples, "tesseract_gateway_request_duration_seconds_count", model="m") == 2
