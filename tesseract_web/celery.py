"""The Celery app. The beat schedule and the task routes are declared here and nowhere else.

Tasks run on one queue per concern, so a slow invoice run cannot delay a health check
and a burst of probes cannot delay the usage drain: production starts a worker per
queue (`deploy/`). The queues are named after the environment's queue
(`CELERY_QUEUE`, default `celery`): `celery.health`, `celery.placement`,
`celery.billing`. A worker started without `-Q` (`make run`) reads all of them.

The latency probes are the exception: a round measures the RTT from where it runs, so
it must run in the region it measures from. Each gateway region
(`TESSERACT_GATEWAY_REGIONS`) has a queue of its own, `celery.probes.<region>`, which
only a worker in that region reads; the beat schedules one round per region on it.
"""

import os

from celery import Celery
from celery.schedules import crontab
from django.conf import settings
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")

app = Celery("tesseract")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

#: The concern of every task of ours. A task missing here would fall to the default
#: queue, which no production worker is dedicated to: `tests/test_celery_queues.py`
#: fails when one is added without a concern.
TASK_CONCERNS: dict[str, str] = {
    # The live maps the gateways route on: health, RTTs, load, observed speed.
    "backends.tasks.health.check_health": "health",
    "backends.tasks.resources.scrape_metrics": "health",
    "backends.tasks.resources.fold_observed_speeds": "health",
    # Loading and unloading models where the demand is.
    "backends.tasks.placement.run_placement": "placement",
    # Usage, rollups and money.
    "billing.tasks.drain_usage": "billing",
    "billing.tasks.rollup_usage": "billing",
    "billing.tasks.ensure_usage_partitions": "billing",
    "billing.money_tasks.close_month": "billing",
    "billing.money_tasks.push_invoice": "billing",
    "billing.money_tasks.reconcile_stripe": "billing",
    "billing.money_tasks.suspend_overdue": "billing",
    "billing.money_tasks.budget_alerts": "billing",
}
CONCERNS = ("health", "placement", "billing")
#: Tasks that run where they measure: on the queue of the region named by their
#: `region` argument (the process's own region when none is given), not a concern's.
REGIONAL_TASKS = ("backends.tasks.probes.probe_latency",)


def concern_queue(concern: str, default_queue: str | None = None) -> str:
    """The queue of a concern in the environment whose default queue is given."""
    return f"{default_queue or settings.CELERY_TASK_DEFAULT_QUEUE}.{concern}"


def probe_queue(region: str, default_queue: str | None = None) -> str:
    """The queue of the probe rounds measured from `region`: only a worker there reads it."""
    return f"{default_queue or settings.CELERY_TASK_DEFAULT_QUEUE}.probes.{region}"


def environment_queues(
    default_queue: str | None = None, regions: list[str] | None = None
) -> list[str]:
    """Every queue of an environment: its default queue, one per concern, then one per
    gateway region (`regions`, default `TESSERACT_GATEWAY_REGIONS`)."""
    default = default_queue or settings.CELERY_TASK_DEFAULT_QUEUE
    regions = settings.TESSERACT_GATEWAY_REGIONS if regions is None else regions
    return [
        default,
        *(concern_queue(concern, default) for concern in CONCERNS),
        *(probe_queue(region, default) for region in regions),
    ]


def route_regional(
    name: str, args: object, kwargs: dict[str, object] | None, options: object, **_: object
) -> dict[str, str] | None:
    """A regional task goes to the queue of its `region` (by default the sender's own)."""
    if name not in REGIONAL_TASKS:
        return None
    region = (kwargs or {}).get("region") or settings.TESSERACT_GATEWAY_REGION
    return {"queue": probe_queue(str(region))}


app.conf.task_queues = [Queue(name) for name in environment_queues()]
app.conf.task_routes = (
    route_regional,
    {task: {"queue": concern_queue(concern)} for task, concern in TASK_CONCERNS.items()},
)

#: Periodic jobs of the control plane (health checks, probes, placement) are added
#: here as they land; each names one task that takes ids and is safe to run twice.
app.conf.beat_schedule = {
    # Usage reaches the database (and dashboards, budgets, invoices) within a second.
    "drain-usage": {"task": "billing.tasks.drain_usage", "schedule": 1.0},
    # The dashboard's daily rollup, reconciled: days not built yet (today too), dirty days.
    "rollup-usage": {"task": "billing.tasks.rollup_usage", "schedule": 300.0},
    # PostgreSQL: the usage table's month partitions, months ahead; rows that fell into
    # the default partition are logged. Hourly: one catalog query when all is in place.
    "ensure-usage-partitions": {
        "task": "billing.tasks.ensure_usage_partitions",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "check-health": {
        "task": "backends.tasks.health.check_health",
        "schedule": float(settings.TESSERACT_HEALTH_INTERVAL_S),
        "options": {"expires": float(settings.TESSERACT_HEALTH_INTERVAL_S)},
    },
    # The latency map: RTT from each gateway region to every cluster, against physics,
    # measured by a worker in that region (its own queue; see the module docstring).
    **{
        f"probe-latency-{region}": {
            "task": "backends.tasks.probes.probe_latency",
            "schedule": float(settings.TESSERACT_PROBE_INTERVAL_S),
            "kwargs": {"region": region},
            "options": {
                "expires": float(settings.TESSERACT_PROBE_INTERVAL_S),
                "queue": probe_queue(region),
            },
        }
        for region in settings.TESSERACT_GATEWAY_REGIONS
    },
    # The resource map: running / waiting / loaded from every backend's own metrics ...
    "scrape-metrics": {
        "task": "backends.tasks.resources.scrape_metrics",
        "schedule": float(settings.TESSERACT_SCRAPE_INTERVAL_S),
        "options": {"expires": float(settings.TESSERACT_SCRAPE_INTERVAL_S)},
    },
    # ... and observed TTFT and decode speed from the requests it completed.
    "fold-observed-speeds": {
        "task": "backends.tasks.resources.fold_observed_speeds",
        "schedule": float(settings.TESSERACT_OBSERVED_INTERVAL_S),
        "options": {"expires": float(settings.TESSERACT_OBSERVED_INTERVAL_S)},
    },
    # Load models where the demand is, unload them where it is not (or only recommend).
    "run-placement": {
        "task": "backends.tasks.placement.run_placement",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
    # Invoices: on the 1st at 02:00 UTC, close the month before (idempotent).
    "close-month": {
        "task": "billing.money_tasks.close_month",
        "schedule": crontab(minute=0, hour=2, day_of_month=1),
    },
    # Stripe against the local books, daily; suspension after a failed payment's grace.
    "reconcile-stripe": {
        "task": "billing.money_tasks.reconcile_stripe",
        "schedule": crontab(minute=30, hour=3),
    },
    "suspend-overdue": {"task": "billing.money_tasks.suspend_overdue", "schedule": 3600.0},
    # Budget alerts at 50/80/100% of the monthly cap, once each per month.
    "budget-alerts": {
        "task": "billing.money_tasks.budget_alerts",
        "schedule": 60.0,
        "options": {"expires": 60.0},
    },
}
