"""Tasks run on one queue per concern (health, placement, billing), so that production
can give each concern workers of its own (`deploy/`) and a slow invoice run never
delays a health check or the usage drain."""

from __future__ import annotations

import pytest

from tesseract_web.celery import CONCERNS, TASK_CONCERNS, app, environment_queues

OURS = ("backends.", "billing.", "accounts.", "routing.", "dashboards.", "tesseract_web.")


def queue_of(task_name: str) -> str:
    route = app.amqp.router.route({}, task_name)
    return route["queue"].name


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("backends.tasks.health.check_health", "celery.health"),
        ("backends.tasks.probes.probe_latency", "celery.health"),
        ("backends.tasks.resources.scrape_metrics", "celery.health"),
        ("backends.tasks.resources.fold_observed_speeds", "celery.health"),
        ("backends.tasks.placement.run_placement", "celery.placement"),
        ("billing.tasks.drain_usage", "celery.billing"),
        ("billing.tasks.rollup_usage", "celery.billing"),
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
    assert ours - set(TASK_CONCERNS) == set()
    assert set(TASK_CONCERNS) - ours == set(), "a route names a task that does not exist"


def test_every_scheduled_task_is_routed_to_a_concern_queue():
    for entry in app.conf.beat_schedule.values():
        assert queue_of(entry["task"]) in environment_queues()[1:], entry["task"]


def test_an_environment_s_queues_are_named_after_its_default_queue():
    assert environment_queues("test-1") == [
        "test-1",
        "test-1.health",
        "test-1.placement",
        "test-1.billing",
    ]
    assert set(TASK_CONCERNS.values()) == set(CONCERNS)


def test_a_worker_started_without_q_reads_every_queue_of_its_environment():
    assert [queue.name for queue in app.conf.task_queues] == environment_queues()
