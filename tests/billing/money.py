"""Helpers for the money tests: usage records built like the gateway's, fed to the drain."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from billing import metering
from billing.services import usage_events_record


def usage(
    org,
    *,
    at: datetime,
    deployment,
    input_tokens: int = 1000,
    output_tokens: int = 200,
    status: str = "ok",
    ttft_ms: float | None = 100.0,
    constraints: dict | None = None,
    sla_met: bool | None = True,
    request_id: str | None = None,
) -> metering.UsageRecord:
    """A record as the gateway publishes it, for a request served by `deployment`."""
    cost = (
        input_tokens * deployment.price_input_per_mtok
        + output_tokens * deployment.price_output_per_mtok
    ) / Decimal(1_000_000)
    return metering.UsageRecord(
        request_id=request_id or uuid.uuid4().hex,
        org_id=org.pk,
        api_key_id=None,
        created_at=at.timestamp(),
        endpoint="chat.completions",
        model=deployment.model.slug,
        served_model=deployment.model.slug,
        deployment=deployment.slug,
        region=deployment.cluster.region.slug,
        cluster=deployment.cluster.slug,
        chip=deployment.chip.slug,
        stream=False,
        status=status,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_source="upstream",
        cost_usd=str(cost),
        ttft_ms=ttft_ms,
        latency_ms=None if ttft_ms is None else ttft_ms + 50,
        sla_met=sla_met,
        constraints=constraints or {},
    )


def record(*records: metering.UsageRecord) -> None:
    """Through the drain's own row building (rating included), minus the Redis stream."""
    usage_events_record(list(records))
