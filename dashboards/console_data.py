"""What the operator console shows, gathered in a fixed number of queries.

Reads only: the live maps from Redis (`backends.livestate`), history from the catalog's
rows (`HealthEvent`, `LatencyProbe`, `PlacementAction`), tenants from accounts and
billing, and the operator-action log. Every function here is shaped for one page or one
live message; none of them writes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from html import escape
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone
from django.utils.safestring import mark_safe

from accounts.models import OperatorAction, Organization
from backends import livestate
from backends.models import (
    Deployment,
    Health,
    HealthEvent,
    LatencyProbe,
    PlacementAction,
    Region,
    RegionLatency,
)
from backends.world import INTRA_REGION_RTT_MS
from billing.limits import month_bounds, month_of
from billing.models import UsageEvent
from dashboards import svgmap
from routing.engine.inputs import physical_rtt_floor_ms

#: worst first: a region's colour on the map is its worst routable deployment's health
_HEALTH_RANK = {Health.DOWN.value: 0, Health.DEGRADED.value: 1, Health.HEALTHY.value: 2}
#: how far back the heat-map looks for the latest probe of each pair
PROBE_LOOKBACK = timedelta(minutes=15)
PROBE_ROWS = 5000


# --------------------------------------------------------------------------- deployments


@dataclass(frozen=True, slots=True)
class Static:
    """What the catalog says of one deployment (the live maps add the rest)."""

    slug: str
    region: str
    region_name: str
    lat: float
    lon: float
    cluster: str
    chip: str
    model: str
    loaded: bool
    drained: bool
    health: str
    slots: int
    ttft_profile_ms: float
    decode_profile_tps: float
    simulated: bool


def deployments_static() -> list[Static]:
    """Every deployment with its region's coordinates and drain state: one query."""
    rows = Deployment.objects.select_related("cluster__region", "chip", "model").order_by(
        "cluster__region__name", "slug"
    )
    return [
        Static(
            slug=d.slug,
            region=d.cluster.region.slug,
            region_name=d.cluster.region.name,
            lat=d.cluster.region.latitude,
            lon=d.cluster.region.longitude,
            cluster=d.cluster.slug,
            chip=d.chip.slug,
            model=d.model.slug,
            loaded=d.loaded,
            drained=d.drained or d.cluster.drained or d.cluster.region.drained,
            health=d.health,
            slots=d.concurrency_slots,
            ttft_profile_ms=round(d.ttft_ms, 1),
            decode_profile_tps=round(d.decode_tokens_per_s, 1),
            simulated=d.adapter == Deployment.Adapter.SIMULATOR,
        )
        for d in rows
    ]


def _ratio(observed: float | None, profile: float) -> float | None:
    if observed is None or profile <= 0:
        return None
    return round(observed / profile, 2)


def deployment_row(s: Static, live: livestate.LiveMaps, gateway_region: str) -> dict[str, Any]:
    """One deployment as the console shows it: catalog facts under live state."""
    state = live.deployments.get(s.slug, livestate.DeploymentLive(health=s.health))
    rtt = (
        INTRA_REGION_RTT_MS
        if s.region == gateway_region
        else live.rtt.get((gateway_region, s.region))
    )
    return {
        "slug": s.slug,
        "region": s.region,
        "cluster": s.cluster,
        "chip": s.chip,
        "model": s.model,
        "health": state.health,
        "loaded": s.loaded if state.loaded is None else state.loaded,
        "drained": s.drained,
        "running": state.running,
        "waiting": state.waiting,
        "inflight": live.inflight.get(s.slug, 0),
        "slots": s.slots,
        "ttft_profile_ms": s.ttft_profile_ms,
        "ttft_observed_ms": None
        if state.observed_ttft_ms is None
        else round(state.observed_ttft_ms, 1),
        "ttft_ratio": _ratio(state.observed_ttft_ms, s.ttft_profile_ms),
        "decode_profile_tps": s.decode_profile_tps,
        "decode_observed_tps": None
        if state.observed_decode_tps is None
        else round(state.observed_decode_tps, 1),
        "decode_ratio": _ratio(state.observed_decode_tps, s.decode_profile_tps),
        "rtt_ms": None if rtt is None else round(rtt, 1),
        "simulated": s.simulated,
    }


def counters(rows: list[dict[str, Any]]) -> dict[str, int]:
    """The numbers at the top of the console."""
    out = {"healthy": 0, "degraded": 0, "down": 0, "drained": 0, "inflight": 0, "waiting": 0}
    for r in rows:
        out[r["health"]] = out.get(r["health"], 0) + 1
        out["drained"] += bool(r["drained"])
        out["inflight"] += r["inflight"]
        out["waiting"] += r["waiting"] or 0
    out["deployments"] = len(rows)
    return out


def region_health(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per region: its worst health among undrained deployments, and counts."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = out.setdefault(
            r["region"], {"health": Health.HEALTHY.value, "count": 0, "drained": 0, "inflight": 0}
        )
        entry["count"] += 1
        entry["inflight"] += r["inflight"]
        if r["drained"]:
            entry["drained"] += 1
            continue
        if _HEALTH_RANK.get(r["health"], 2) < _HEALTH_RANK[entry["health"]]:
            entry["health"] = r["health"]
    for entry in out.values():
        entry["css"] = "drained" if entry["drained"] == entry["count"] else entry["health"]
    return out


def mesh_map(statics: list[Static], rows: list[dict[str, Any]]) -> str:
    """The mesh on the world map: a circle per region, sized by deployments, coloured by
    the worst health there (grey when everything there is drained)."""
    where = {s.region: s for s in statics}
    points = []
    for region, entry in region_health(rows).items():
        s = where[region]
        points.append(
            svgmap.Point(
                lat=s.lat,
                lon=s.lon,
                radius=3 + 3 * min(entry["count"], 9) ** 0.5,
                css_class=f"health-{entry['css']}",
                title=f"{s.region_name}: {entry['count']} deployments, {entry['health']}"
                + (f", {entry['drained']} drained" if entry["drained"] else ""),
                key=region,
            )
        )
    return svgmap.render(points, title="The mesh: regions coloured by health", dom_id="mesh-map")


def health_timeline(limit: int = 40) -> list[HealthEvent]:
    return list(
        HealthEvent.objects.select_related("deployment").order_by("-created_at", "-pk")[:limit]
    )


#: the health strips look back this far
STRIP_WINDOW = timedelta(hours=6)


def health_strips(
    *, now: datetime | None = None, window: timedelta = STRIP_WINDOW, limit: int = 20
) -> str:
    """The health timeline as SVG: a strip per deployment that changed within `window`
    (the `limit` most recently changed), coloured by its state over time. "" when
    nothing changed. One query."""
    now = now or timezone.now()
    since = now - window
    events = (
        HealthEvent.objects.filter(created_at__gte=since)
        .order_by("created_at", "pk")
        .values_list("deployment__slug", "previous", "current", "created_at")[:5000]
    )
    spans: dict[str, list[tuple[datetime, str]]] = {}
    for slug, previous, current, at in events:
        spans.setdefault(slug, [(since, previous)]).append((at, current))
    if not spans:
        return ""
    shown = sorted(spans, key=lambda slug: spans[slug][-1][0], reverse=True)[:limit]
    label_w, bar_w, row_h = 330, 630, 16
    total = window.total_seconds()
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="strips" role="img" '
        f'viewBox="0 0 {label_w + bar_w} {row_h * len(shown) + 18}" '
        f'aria-label="Health of the deployments that changed in the last '
        f'{window.total_seconds() / 3600:g} hours">'
    ]
    for i, slug in enumerate(sorted(shown)):
        y = i * row_h
        parts.append(f'<text class="strip-label" x="0" y="{y + 11}">{escape(slug)}</text>')
        points = spans[slug] + [(now, "")]
        for (start, state), (end, _) in itertools.pairwise(points):
            x = label_w + (start - since).total_seconds() / total * bar_w
            w = max((end - start).total_seconds() / total * bar_w, 0.5)
            parts.append(
                f'<rect class="strip health-{escape(state)}" x="{x:.1f}" y="{y + 2}" '
                f'width="{w:.1f}" height="{row_h - 4}"><title>{escape(slug)}: '
                f"{escape(state)} from {start:%H:%M:%S}</title></rect>"
            )
    axis_y = row_h * len(shown) + 13
    parts.append(
        f'<text class="strip-axis" x="{label_w}" y="{axis_y}">{since:%H:%M}</text>'
        f'<text class="strip-axis" x="{label_w + bar_w}" y="{axis_y}" text-anchor="end">'
        f"{now:%H:%M} UTC</text></svg>"
    )
    return mark_safe("".join(parts))  # noqa: S308 - every value above is escaped


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True, slots=True)
class Cell:
    src: str
    dst: str
    rtt_ms: float | None
    floor_ms: float
    #: rtt / floor; None without a measurement or a floor
    ratio: float | None
    #: the latest probe's verdict for a cluster of that pair, when it was not "ok"
    flag: str
    css: str
    #: the RTT is the probes' (live); False: the catalog's published figure
    live: bool = True

    @property
    def title(self) -> str:
        measured = "no measurement" if self.rtt_ms is None else f"{self.rtt_ms:.1f} ms"
        if self.rtt_ms is not None and not self.live:
            measured += " (catalog, not probed)"
        flag = f"; flagged: {self.flag.replace('_', ' ')}" if self.flag else ""
        return f"{self.src} → {self.dst}: {measured}, floor {self.floor_ms:.1f} ms{flag}"


def _cell_css(ratio: float | None, flag: str) -> str:
    if flag:
        return "flagged"
    if ratio is None:
        return "none"
    if ratio < 1.5:
        return "near"
    if ratio < 2.5:
        return "fair"
    if ratio < 4:
        return "far"
    return "worst"


def latency_matrix(
    live: livestate.LiveMaps, *, every_region: bool = False, now: datetime | None = None
) -> dict[str, Any]:
    """Gateway region × cluster region: the RTT the gateways route on (the probes' EWMA,
    else the catalog's published figure) against the physical floor, with the latest
    flagged probe of each pair marked. `every_region`: a row for every region with
    clusters too, as if a gateway ran there (catalog figures where nothing probes)."""
    now = now or timezone.now()
    regions = {r.slug: r for r in Region.objects.order_by("name")}
    dsts = sorted(
        set(Deployment.objects.values_list("cluster__region__slug", flat=True).distinct()),
        key=lambda slug: regions[slug].name,
    )
    latest: dict[tuple[str, str], str] = {}
    probes = (
        LatencyProbe.objects.filter(measured_at__gte=now - PROBE_LOOKBACK)
        .order_by("-measured_at")
        .values_list("src_region__slug", "cluster__region__slug", "cluster__slug", "verdict")[
            :PROBE_ROWS
        ]
    )
    seen_clusters: set[tuple[str, str]] = set()
    for src, dst, cluster, verdict in probes:
        if (src, cluster) in seen_clusters:
            continue
        seen_clusters.add((src, cluster))
        if verdict != LatencyProbe.Verdict.OK and (src, dst) not in latest:
            latest[(src, dst)] = verdict
        latest.setdefault((src, dst), "")
    srcs = sorted(
        {settings.TESSERACT_GATEWAY_REGION}
        | {src for src, _ in live.rtt if src in regions}
        | {src for src, _ in latest if src in regions},
        key=lambda slug: regions[slug].name if slug in regions else slug,
    )
    if every_region:
        srcs += [dst for dst in dsts if dst not in srcs]
    catalog = {
        (src, dst): ms
        for src, dst, ms in RegionLatency.objects.filter(src__slug__in=srcs).values_list(
            "src__slug", "dst__slug", "rtt_p50_ms"
        )
    }
    rows = []
    for src in srcs:
        cells = []
        a = regions.get(src)
        for dst in dsts:
            b = regions[dst]
            floor = (
                0.0
                if a is None
                else physical_rtt_floor_ms(a.latitude, a.longitude, b.latitude, b.longitude)
            )
            rtt = INTRA_REGION_RTT_MS if src == dst else live.rtt.get((src, dst))
            measured = rtt is not None
            if rtt is None:
                rtt = catalog.get((src, dst))
            ratio = round(rtt / floor, 2) if rtt is not None and floor > 0 else None
            flag = latest.get((src, dst), "")
            # Inside one region the floor is ~0: the intra-region RTT is as near as it gets.
            css = "near" if src == dst and not flag else _cell_css(ratio, flag)
            cells.append(Cell(src, dst, rtt, floor, ratio, flag, css, live=measured))
        rows.append({"src": src, "cells": cells})
    return {"columns": dsts, "rows": rows}


# --------------------------------------------------------------------------- placement


def placement_recommendations(limit: int = 50) -> list[PlacementAction]:
    return list(
        PlacementAction.objects.filter(status=PlacementAction.Status.RECOMMENDED)
        .select_related("deployment__cluster__region", "deployment__model")
        .order_by("-benefit", "-created_at")[:limit]
    )


def placement_history(limit: int = 30) -> list[PlacementAction]:
    return list(
        PlacementAction.objects.exclude(status=PlacementAction.Status.RECOMMENDED)
        .select_related("deployment")
        .order_by("-created_at", "-pk")[:limit]
    )


# --------------------------------------------------------------------------- tenants


def month_start(now: datetime | None = None) -> datetime:
    """The first instant of the billing month (UTC) that `now` falls in."""
    return month_bounds(month_of(now or timezone.now()))[0]


def tenant_rows(*, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every organization with its tier, limits, status and this month's usage: two queries."""
    since = month_start(now)
    usage: dict[int, dict[str, Any]] = {
        row["org"]: dict(row)
        for row in UsageEvent.objects.filter(created_at__gte=since)
        .values("org")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            spend=Sum("charge_usd"),
        )
        .order_by()
    }
    out = []
    for org in Organization.objects.select_related("billing_account__tier").order_by("name"):
        account = getattr(org, "billing_account", None)
        used = usage.get(org.pk, {})
        tier = account.tier if account else None
        out.append(
            {
                "org": org,
                "tier": tier,
                "budget": account.monthly_cap_usd if account else None,
                "requests": used.get("requests", 0),
                "tokens": (used.get("input_tokens") or 0) + (used.get("output_tokens") or 0),
                "spend": used.get("spend") or Decimal(0),
                "suspended_at": account.suspended_at if account else None,
                "suspended_reason": account.suspended_reason if account else "",
            }
        )
    return out


def operator_actions(limit: int = 100) -> list[OperatorAction]:
    return list(
        OperatorAction.objects.select_related("actor").order_by("-created_at", "-pk")[:limit]
    )
