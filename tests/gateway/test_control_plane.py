"""The control plane steering live gateways: health with hysteresis, passive health,
the kill switch and session affinity, against the real simulator and a real Redis."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from django.conf import settings

from backends import health
from backends.models import Deployment, HealthEvent
from tests.waiting import eventually

EIGHT_B = "llama-3.1-8b-instruct"
ASK = {"model": EIGHT_B, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
#: The health checks' timeout in these tests: a check that a busy machine delays is not
#: a dead backend (the simulator answers a dead one's check at once, with a 503).
CHECK_TIMEOUT_S = 30.0


@pytest.fixture
def client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def plan(mesh, key: str, body: dict | None = None) -> dict:
    response = httpx.post(
        f"{mesh.gateway_url}/v1/route",
        headers={"Authorization": f"Bearer {key}"},
        json=body or ASK,
    )
    assert response.status_code == 200, response.text
    return response.json()


def chat(mesh, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=body or ASK,
    )


# --------------------------------------------------------------------------- hysteresis


def test_three_failures_take_a_backend_down_and_two_answers_bring_it_back(client, mesh):
    slug = mesh.deployments(EIGHT_B)[0]

    def see(outcome: str) -> str:
        return health.observe(client, slug, outcome, source="check", reason="test")[1]

    assert [see(health.FAIL), see(health.FAIL)] == ["healthy", "healthy"]
    assert see(health.FAIL) == "down"
    assert see(health.OK) == "down"
    assert see(health.OK) == "healthy"


def test_slowness_degrades_after_two_slow_answers_and_one_good_one_does_not_recover(client, mesh):
    slug = mesh.deployments(EIGHT_B)[0]

    def see(outcome: str) -> str:
        return health.observe(client, slug, outcome, source="check", reason="test")[1]

    assert see(health.SLOW) == "healthy"
    assert see(health.SLOW) == "degraded"
    assert see(health.OK) == "degraded"
    assert see(health.OK) == "healthy"


def test_a_failure_in_between_resets_the_count_of_answers(client, mesh):
    slug = mesh.deployments(EIGHT_B)[0]
    for _ in range(3):
        health.observe(client, slug, health.FAIL, source="check", reason="test")
    health.observe(client, slug, health.OK, source="check", reason="test")
    health.observe(client, slug, health.FAIL, source="check", reason="test")
    assert health.observe(client, slug, health.OK, source="check", reason="test")[1] == "down"


# --------------------------------------------------------------------------- the gateways


def test_a_backend_that_goes_down_is_avoided_and_comes_back_after_recovering(
    client, mesh, api_key, monkeypatch
):
    # Slowness is another test's subject: here a check slowed by the busy machine
    # (the simulator, the gateway and the checks share this process) is a good answer.
    monkeypatch.setattr(health, "SLOW_CHECK_MARGIN_MS", 60_000.0)
    primary = plan(mesh, api_key)["primary"]["backend_id"]
    mesh.fault(primary, fault="down")

    def check() -> str:
        return health.check_all(client=client, timeout_s=CHECK_TIMEOUT_S)[primary]

    states = [check() for _ in range(3)]
    assert states[:2] == ["healthy", "healthy"]  # hysteresis: not on one failed check
    assert states[2] == "down"
    # The gateway hears of it (announced at once; at worst its periodic refresh). Not
    # `told_only` here: in the whole suite another test may have started the shared
    # app's listener on an event loop that has since closed.
    eventually(lambda: plan(mesh, api_key)["primary"]["backend_id"] != primary)
    excluded = {e["backend_id"]: e["code"] for e in plan(mesh, api_key)["excluded"]}
    assert excluded[primary] == "down"
    event = HealthEvent.objects.get(deployment__slug=primary)
    assert (event.previous, event.current, event.source) == ("healthy", "down", "check")
    assert Deployment.objects.get(slug=primary).health == "down"

    mesh.fault(primary, fault="none")
    assert [check() for _ in range(2)] == ["down", "healthy"]
    eventually(lambda: plan(mesh, api_key)["primary"]["backend_id"] == primary)
    assert Deployment.objects.get(slug=primary).health == "healthy"


def test_the_gateways_own_failures_take_a_backend_out_without_any_check(
    client, mesh, api_key, usage
):
    primary = plan(mesh, api_key)["primary"]["backend_id"]
    mesh.fault(primary, fault="error")
    served = []

    def taught() -> bool:
        served.append(chat(mesh, api_key).json()["tesseract"])
        return "down" in {e["code"] for e in plan(mesh, api_key)["excluded"]
                          if e["backend_id"] == primary}  # fmt: skip

    eventually(taught)
    # Every request was served, each one that met the failing backend by failing over
    # (a busy machine may route one elsewhere first): three failures took it out.
    assert all(s["route"]["backend"] != primary for s in served)
    assert sum(s["attempts"] - 1 for s in served) >= health.DOWN_AFTER
    assert client.hget(health.REASONS, primary).startswith(b"passive|")
    assert chat(mesh, api_key).json()["tesseract"]["attempts"] == 1  # straight to a good one
    assert len(usage()) == len(served) + 1


# --------------------------------------------------------------------------- kill switch


def test_a_drained_region_receives_nothing_and_in_flight_requests_finish(mesh, api_key, usage):
    from backends.models import Region
    from backends.services import drain_by_slug

    near = {**ASK, "tesseract": {"client_region": "westeurope"}}
    assert plan(mesh, api_key, near)["primary"]["region"] == "westeurope"
    backend = mesh.slowed(EIGHT_B, "westeurope")
    with mesh.stream(api_key, {**near, "max_tokens": 40}) as in_flight:
        lines = in_flight.iter_lines()
        assert next(line for line in lines if '"content":"' in line.replace(" ", ""))
        drain_by_slug("region", "westeurope", drained=True)
        # heard when announced (at worst at the periodic refresh; see above)
        eventually(lambda: plan(mesh, api_key, near)["primary"]["region"] != "westeurope")
        rest = list(lines)  # the request that was already running is not cut off
    assert [line for line in rest if line][-1] == "data: [DONE]"
    assert backend.slots.running == 0

    served = {chat(mesh, api_key, near).json()["tesseract"]["route"]["region"] for _ in range(5)}
    assert "westeurope" not in served
    excluded = plan(mesh, api_key, near)["excluded"]
    assert {e["code"] for e in excluded if e["backend_id"].startswith("westeurope-")} == {"drained"}

    drain_by_slug("region", "westeurope", drained=False)
    eventually(lambda: plan(mesh, api_key, near)["primary"]["region"] == "westeurope")
    assert not Region.objects.get(slug="westeurope").drained
    assert [e.status for e in usage()].count("ok") == 6


def test_draining_is_a_command_too(mesh):
    from django.core.management import call_command

    from backends.models import Cluster

    cluster = Cluster.objects.filter(region__slug="eastus").first()
    call_command("drain", "cluster", cluster.slug)
    assert Cluster.objects.get(pk=cluster.pk).drained
    call_command("drain", "cluster", cluster.slug, "--undo")
    assert not Cluster.objects.get(pk=cluster.pk).drained


# --------------------------------------------------------------------------- affinity


def test_affinity_keeps_a_session_on_its_deployment_until_its_deadline_would_break(
    client, mesh, api_key, usage
):
    from backends import livestate
    from backends.models import SessionMove

    session = {
        **ASK,
        "max_tokens": 64,
        "tesseract": {"session_id": "conv-1", "client_region": "westeurope", "max_ttft_ms": 400},
    }
    first = chat(mesh, api_key, session).json()["tesseract"]["route"]["backend"]
    assert chat(mesh, api_key, session).json()["tesseract"]["route"]["backend"] == first
    prefill_ms = plan(mesh, api_key, session)["primary"]["predicted"]["prefill_ms"]
    profile_ms = Deployment.objects.get(slug=first).ttft_ms

    decode_tps = Deployment.objects.get(slug=first).decode_tokens_per_s

    def slow_to(ms: float) -> None:  # observed TTFT scales the predicted prefill
        livestate.deployment_update(
            client,
            first,
            observed_ttft_ms=profile_ms * ms / prefill_ms,
            observed_decode_tps=decode_tps / 4,  # 64 tokens: ~660 ms more than elsewhere
        )

    # It slows down, still in time: a fresh request would now go to a backend that
    # streams its answer faster (`deadline`'s decode band); the session stays.
    slow_to(200)
    stateless = {**session, "tesseract": {**session["tesseract"], "session_id": None}}
    eventually(lambda: plan(mesh, api_key, stateless)["primary"]["backend_id"] != first)
    stay = plan(mesh, api_key, session)
    assert stay["primary"]["backend_id"] == first
    assert stay["primary"]["meets_sla"]
    assert chat(mesh, api_key, session).json()["tesseract"]["route"]["backend"] == first
    assert not SessionMove.objects.exists()

    # Now staying would break the 400 ms deadline: the session moves, and it is recorded.
    slow_to(1000)
    eventually(lambda: plan(mesh, api_key, session)["primary"]["backend_id"] != first)
    moved_to = chat(mesh, api_key, session).json()["tesseract"]["route"]["backend"]
    assert moved_to != first
    move = eventually_one(SessionMove)
    assert (move.session_id, move.from_deployment, move.to_deployment) == (
        "conv-1", first, moved_to,
    )  # fmt: skip
    assert "deadline" in move.reason or "sla" in move.reason
    assert chat(mesh, api_key, session).json()["tesseract"]["route"]["backend"] == moved_to
    assert len(usage()) == 5


def eventually_one(model):
    eventually(lambda: model.objects.exists())
    return model.objects.get()


# --------------------------------------------------------------------------- real worker


@pytest.fixture
def control_plane(mesh):
    """A real Celery worker running the real beat schedule, health checks every second.

    The other periodic jobs are put off: on a busy machine each takes seconds, and the
    one worker would spend its time on them while the health checks, which expire
    after their interval, waited in the queue.
    """
    from tests.workers import Workers

    workers = Workers(
        TESSERACT_HEALTH_INTERVAL_S="1",
        TESSERACT_HEALTH_TIMEOUT_S=str(int(CHECK_TIMEOUT_S)),
        TESSERACT_PROBE_INTERVAL_S="3600",
        TESSERACT_SCRAPE_INTERVAL_S="3600",
        TESSERACT_OBSERVED_INTERVAL_S="3600",
        TESSERACT_GATEWAY_REGION="westeurope",
    )
    workers.start(beat=True)
    yield workers
    workers.stop()


def test_with_a_real_worker_and_beat_a_dead_backend_is_avoided_and_comes_back(
    control_plane, client, mesh, api_key
):
    primary = plan(mesh, api_key)["primary"]["backend_id"]
    # The beat's checks have begun (a worker starts in seconds on a busy machine).
    eventually(lambda: client.exists(health.COUNTERS + primary), 180)

    def avoided() -> bool:
        why = {e["code"] for e in plan(mesh, api_key)["excluded"] if e["backend_id"] == primary}
        return why == {"down"}

    mesh.fault(primary, fault="down")
    eventually(avoided)
    assert plan(mesh, api_key)["primary"]["backend_id"] != primary
    mesh.fault(primary, fault="none")
    eventually(lambda: not avoided())

    # Three failed checks to go, two answers to come back: the beat ran them all. (Back
    # as healthy, or as degraded where the busy machine made its answers look slow.)
    events = HealthEvent.objects.filter(deployment__slug=primary).order_by("created_at", "pk")
    eventually(lambda: events.count() >= 2)  # the round's end writes the history
    went, came = [(e.previous, e.current, e.source) for e in events][:2]
    assert went == ("healthy", "down", "check")
    assert came in {("down", "healthy", "check"), ("down", "degraded", "check")}


# --------------------------------------------------------------------------- resource map


def test_a_slowed_backend_loses_traffic_before_it_fails(client, mesh, api_key, usage):
    from backends import resources

    mesh.simulator.time_scale = 1.0  # real time: observed speeds are comparable to profiles
    ask = {
        **ASK,
        "max_tokens": 12,
        "stream": True,
        "tesseract": {"client_region": "westeurope", "max_ttft_ms": 300},
    }

    def served() -> str:
        with mesh.stream(api_key, ask) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data: {")]
        usage()  # the billing worker's drain
        resources.fold_observed(client=client)  # the resource map's fold
        return json.loads(lines[-1][6:])["tesseract"]["route"]["backend"]

    first = served()
    mesh.fault(first, fault="slow", slow_factor=5)
    after = []
    while len(after) < 12 and (not after or after[-1] == first):
        after.append(served())
    assert after[-1] != first  # it lost the traffic ...
    health.check_all(client=client, timeout_s=CHECK_TIMEOUT_S)
    live = livestate_of(client, first)
    assert live.health == "healthy"  # ... while it still answers: it never failed
    assert live.observed_ttft_ms > Deployment.objects.get(slug=first).ttft_ms * 2


def livestate_of(client, slug):
    from backends import livestate

    return livestate.read(client).deployments[slug]


# --------------------------------------------------------------------------- placement


def test_placement_loads_a_model_where_demand_grew_and_the_next_requests_route_there(
    client, mesh, api_key, usage
):
    import uuid

    from backends import placement, resources
    from backends.models import ControlSettings, PlacementAction
    from billing.models import UsageEvent

    seventy_b = "llama-3.3-70b-instruct"
    target = f"koreacentral-tesseract-nvidia-h100--{seventy_b}"
    mesh.fault(target, loaded=False)
    deployment = Deployment.objects.get(slug=target)
    deployment.loaded = False
    deployment.save(update_fields=["loaded"])
    korean = {**ASK, "model": seventy_b, "tesseract": {"client_region": "koreacentral"}}
    eventually(lambda: plan(mesh, api_key, korean)["primary"]["backend_id"] != target)
    elsewhere = chat(mesh, api_key, korean).json()["tesseract"]
    [served] = usage()

    # Demand from Korea grows: the last minutes hold 600 such requests, all served far away.
    UsageEvent.objects.bulk_create(
        UsageEvent(
            **{
                **{f.name: getattr(served, f.name) for f in UsageEvent._meta.concrete_fields},
                "id": None,
                "request_id": uuid.uuid4().hex,
            }
        )
        for _ in range(600)
    )
    settings_row = ControlSettings.current()
    settings_row.placement_mode = ControlSettings.PlacementMode.APPLY
    settings_row.save()

    # In real time the 70B's cold start takes 45 s: still under way whenever a busy
    # machine gets to look; the test then fast-forwards it to its end.
    scale, mesh.simulator.time_scale = mesh.simulator.time_scale, 1.0
    placement.placement_run(client=client)
    mesh.simulator.time_scale = scale
    action = PlacementAction.objects.get(deployment__slug=target)
    assert (action.kind, action.status) == ("load", "applied")
    assert "koreacentral" in action.reason
    resources.scrape_metrics(client=client, timeout_s=30)  # it sees the cold start
    assert livestate_of(client, target).loaded is False
    assert chat(mesh, api_key, korean).json()["tesseract"]["route"]["backend"] != target

    mesh.simulator.deployments[target].loading_until = 0.0  # the cold start ends
    resources.scrape_metrics(client=client, timeout_s=30)
    eventually(lambda: plan(mesh, api_key, korean)["primary"]["backend_id"] == target)
    now = chat(mesh, api_key, korean).json()["tesseract"]
    assert now["route"]["backend"] == target
    assert elsewhere["route"]["backend"] != target
