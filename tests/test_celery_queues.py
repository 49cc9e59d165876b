"""Tasks run on one queue per concern (health, placement, billing), so that production
can give each concern workers of its own (`deploy/`) and a slow invoice run never
delays a health check or the usage drain."""

from __future__ import annotations

import pytest

from tesseract_web.celery import (
    CONCERNS,
    REGIONAL_TASKS,
    TASK_CONCERNS,
    app,
    environment_queues,
    probe_queue,
)

OURS = ("backends.", "billing.", "accounts.", "routing.", "dashboards.", "tesseract_web.")


def queue_of(task_name: str, kwargs: dict | None = None) -> str:
    route = app.amqp.router.route({}, task_name, kwargs=kwargs)
    return route["queue"].name


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("backends.tasks.health.check_health", "celery.health"),
        ("backends.tasks.resources.scrape_metrics", "celery.health"),
        ("backends.tasks.resources.fold_observed_speeds", "celery.health"),
        ("backends.tasks.placement.run_placement", "celery.placement"),
        ("billing.tasks.drain_usage", "celery.billing"),
        ("billing.tasks.rollup_usage", "celery.billing"),
        ("billing.tasks.ensure_usage_partitions", "celery.billing"),
        ("billing.money_tasks.close_month", "celery.billing"),
        ("billing.money_tasks.push_invoice", "celery.billing"),
        ("billing.money_tasks.reconcile_stripe", "celery.billing"),
        ("billing.money_tasks.suspend_overdue", "celery.billing"),
        ("billing.money_tasks.budget_alerts", "celery.billing"),
    ],
)
def test_each_task_is_sent_to_the_queue_of_its_concern(task, queue):
    assert queue_of(task) == queue


def test_every_task_of_ours_has_a_concern_so_none_lands_on_the_default_queue():
    app.loader.import_default_modules()  # autodiscovery: every tasks module
    ours = {name for name in app.tasks if name.startswith(OURS)}
    assert ours, "autodiscovery found no task"
    assert ours - set(TASK_CONCERNS) - set(REGIONAL_TASKS) == set()
    routed = set(TASK_CONCERNS) | set(REGIONAL_TASKS)
    assert routed - ours == set(), "a route names a task that does not exist"


def test_every_scheduled_task_is_routed_to_a_concern_or_region_queue():
    for entry in app.conf.beat_schedule.values():
        queue = entry.get("options", {}).get("queue") or queue_of(entry["task"])
        assert queue in environment_queues()[1:], entry["task"]


def test_a_probe_round_goes_to_the_queue_of_the_region_it_measures_from(settings):
    task = "backends.tasks.probes.probe_latency"
    assert queue_of(task, {"region": "eastus"}) == "celery.probes.eastus"
    settings.TESSERACT_GATEWAY_REGION = "japaneast"
    assert queue_of(task) == "celery.probes.japaneast"  # by default, the sender's own
    assert probe_queue("eastus", "test-1") == "test-1.probes.eastus"


def test_the_beat_schedules_a_probe_round_per_gateway_region():
    probes = [
        entry
        for entry in app.conf.beat_schedule.values()
        if entry["task"] == "backends.tasks.probes.probe_latency"
    ]
    from django.conf import settings

    assert [p["kwargs"]["region"] for p in probes] == settings.TESSERACT_GATEWAY_REGIONS
    assert [p["options"]["queue"] for p in probes] == [
        probe_queue(region) for region in settings.TESSERACT_GATEWAY_REGIONS
    ]


def test_an_environment_s_queues_are_named_after_its_default_queue():
    assert environment_queues("test-1", ["westeurope", "eastus"]) == [
        "test-1",
        "test-1.health",
        "test-1.placement",
        "test-1.billing",
        "test-1.probes.westeurope",
        "test-1.probes.eastus",
    ]
    assert set(TASK_CONCERNS.values()) == set(CONCERNS)


def test_a_worker_started_without_q_reads_every_queue_of_its_environment():
    assert [queue.name for queue in app.conf.task_queues] == environment_queues()
