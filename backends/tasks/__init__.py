"""Celery tasks of the control plane, one module per map. Each task takes ids (or
nothing), calls one service, has a time limit and is safe to run twice. The beat
schedule is in `tesseract_web/celery.py`."""

from backends.tasks import (
    health,  # noqa: F401
    placement,  # noqa: F401
    probes,  # noqa: F401
    resources,  # noqa: F401
)
