"""The Celery app. The beat schedule is declared here and nowhere else."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tesseract_web.settings")

app = Celery("tesseract")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

#: Periodic jobs of the control plane (health checks, probes, placement) are added
#: here as they land; each names one task that takes ids and is safe to run twice.
app.conf.beat_schedule = {
    # Usage reaches the database (and dashboards, budgets, invoices) within a second.
    "drain-usage": {"task": "billing.tasks.drain_usage", "schedule": 1.0},
}
