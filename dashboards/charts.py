"""Charts drawn on the server as inline SVG: no scripts, no network, readable offline.

Every function returns markup safe to insert (`SafeString`); the numbers are ours, the
labels are escaped. Colours come from CSS custom properties (`--chart-*`, set for light
and dark in `static/css/tesseract.css`), so one drawing serves both themes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe

#: Line colours for series, in order (CSS variables with fallbacks).
PALETTE = tuple(f"var(--chart-{n})" for n in range(1, 7))


def _svg(markup: str) -> SafeString:
    """Markup built in this module from numbers and `escape()`d text only."""
    return mark_safe(markup)  # noqa: S308


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def sparkline(
    values: Sequence[float | None], *, label: str, width: int = 120, height: int = 28
) -> SafeString:
    """A small trend line; gaps (None) break it. `label` is read by screen readers."""
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(values) < 2 or not points:
        return format_html(
            '<svg class="spark" role="img" aria-label="{}: no data" width="{}" height="{}"></svg>',
            label,
            width,
            height,
        )
    low = min(v for _, v in points)
    high = max(v for _, v in points)
    span = (high - low) or 1.0
    step = (width - 2) / (len(values) - 1)
    segments: list[str] = []
    current: list[str] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                segments.append(" ".join(current))
            current = []
            continue
        x = 1 + i * step
        y = height - 2 - (v - low) / span * (height - 4)
        current.append(f"{'M' if not current else 'L'}{_fmt(x)},{_fmt(y)}")
    if current:
        segments.append(" ".join(current))
    d = " ".join(segments)
    return _svg(
        f'<svg class="spark" role="img" aria-label="{escape(label)}" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}"><path d="{d}" fill="none" '
        f'stroke="var(--chart-1)" stroke-width="1.5" stroke-linejoin="round"/></svg>'
    )


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    unit: str = "",
    objective: float | None = None,
    objective_label: str = "objective",
    width: int = 720,
    height: int = 220,
) -> SafeString:
    """Several series over the same x labels (days), with an optional horizontal
    objective line, axis ticks and a legend. Empty: a chart that says so."""
    left, right, top, bottom = 56, 12, 12, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    every = [v for s in series for v in s.values if v is not None]
    if objective is not None:
        every.append(objective)
    parts = [
        f'<svg class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>"
    ]
    if not every or not labels:
        parts.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="chart-empty">'
            "No requests in this period.</text></svg>"
        )
        return _svg("".join(parts))
    high = max(every) or 1.0
    high = _nice(high)
    n = len(labels)
    step = plot_w / max(n - 1, 1)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + i * step, top + plot_h - v / high * plot_h

    for k in range(5):
        v = high * k / 4
        _, y = xy(0, v)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_fmt(y)}" y2="{_fmt(y)}" class="grid"/>'
            f'<text x="{left - 6}" y="{_fmt(y + 4)}" text-anchor="end" class="tick">'
            f"{escape(_short(v))}{escape(unit)}</text>"
        )
    shown = max(1, math.ceil(n / 8))
    for i, label in enumerate(labels):
        crowded = i != n - 1 and n - 1 - i < shown / 2  # too near the last label
        if (i % shown == 0 and not crowded) or i == n - 1:
            x, _ = xy(i, 0)
            anchor = "end" if i == n - 1 and n > 1 else "middle"  # the last one stays inside
            parts.append(
                f'<text x="{_fmt(x)}" y="{height - 8}" text-anchor="{anchor}" class="tick">'
                f"{escape(label)}</text>"
            )
    if objective is not None:
        _, y = xy(0, objective)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{_fmt(y)}" y2="{_fmt(y)}" '
            'class="objective"/>'
            f'<text x="{width - right}" y="{_fmt(y - 4)}" text-anchor="end" class="tick">'
            f"{escape(objective_label)} {escape(_short(objective))}{escape(unit)}</text>"
        )
    for s_i, s in enumerate(series):
        colour = PALETTE[s_i % len(PALETTE)]
        d: list[str] = []
        pen = False
        values = s.values
        for i, value in enumerate(values):
            if value is None:
                pen = False
                continue
            x, y = xy(i, value)
            d.append(f"{'L' if pen else 'M'}{_fmt(x)},{_fmt(y)}")
            pen = True
            # A day with no neighbour draws no line: a dot shows it.
            if (i == 0 or values[i - 1] is None) and (i == n - 1 or values[i + 1] is None):
                parts.append(f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="3" fill="{colour}"/>')
        parts.append(
            f'<path d="{" ".join(d)}" fill="none" stroke="{colour}" stroke-width="2" '
            f'stroke-linejoin="round"><title>{escape(s.name)}</title></path>'
        )
    parts.append("</svg>")
    legend = "".join(
        f'<li><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
        f"{escape(s.name)}</li>"
        for i, s in enumerate(series)
    )
    return _svg("".join(parts) + f'<ul class="legend">{legend}</ul>')


def breakdown_bar(parts: Sequence[tuple[str, float | None]], *, width: int = 600) -> SafeString:
    """One horizontal stacked bar (network / queue / compute), each part labelled."""
    known = [(name, max(v, 0.0)) for name, v in parts if v is not None]
    total = sum(v for _, v in known)
    if not known or total <= 0:
        return _svg('<p class="muted">No latency breakdown was recorded.</p>')
    height = 34
    x = 0.0
    out = [
        f'<svg class="chart breakdown" role="img" viewBox="0 0 {width} {height}" '
        f'aria-label="Latency breakdown: '
        + escape(", ".join(f"{n} {v:.1f} ms" for n, v in known))
        + '">'
    ]
    for i, (name, v) in enumerate(known):
        w = v / total * width
        out.append(
            f'<rect x="{_fmt(x)}" y="0" width="{_fmt(w)}" height="{height}" '
            f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(name)}: {v:.1f} ms</title></rect>'
        )
        if w > 70:
            out.append(
                f'<text x="{_fmt(x + 6)}" y="{height / 2 + 5}" class="bar-label">'
                f"{escape(name)} {v:.0f} ms</text>"
            )
        x += w
    out.append("</svg>")
    return _svg("".join(out))


@dataclass(frozen=True)
class MapPoint:
    label: str
    latitude: float
    longitude: float
    volume: int
    sla_met_share: float | None  # 0..1 of the requests with a known outcome


def world_map(points: Sequence[MapPoint], *, land_href: str, title: str) -> SafeString:
    """An equirectangular world (x = lon + 180, y = 90 - lat) with a graticule, the
    vendored Natural Earth land outline, and one circle per region: area ∝ volume,
    colour by the share of its requests that met their SLA."""
    parts = [
        f'<svg class="chart worldmap" role="img" aria-label="{escape(title)}" '
        'viewBox="0 0 360 180" preserveAspectRatio="xMidYMid meet">'
        f"<title>{escape(title)}</title>"
        '<rect width="360" height="180" class="sea"/>'
    ]
    for lon in range(-150, 181, 30):
        parts.append(f'<line x1="{lon + 180}" x2="{lon + 180}" y1="0" y2="180" class="grid"/>')
    for lat in range(-60, 61, 30):
        parts.append(f'<line x1="0" x2="360" y1="{90 - lat}" y2="{90 - lat}" class="grid"/>')
    parts.append(f'<image href="{escape(land_href)}" x="0" y="0" width="360" height="180"/>')
    biggest = max((p.volume for p in points), default=0)
    for p in sorted(points, key=lambda p: -p.volume):  # small circles drawn last, on top
        if p.volume <= 0:
            continue
        r = 1.5 + 8.5 * math.sqrt(p.volume / biggest)
        if p.sla_met_share is None:
            cls, met = "dot-unknown", "SLA unknown"
        elif p.sla_met_share >= 0.99:
            cls, met = "dot-met", f"{p.sla_met_share:.1%} met SLA"
        elif p.sla_met_share >= 0.9:
            cls, met = "dot-warn", f"{p.sla_met_share:.1%} met SLA"
        else:
            cls, met = "dot-missed", f"{p.sla_met_share:.1%} met SLA"
        parts.append(
            f'<circle cx="{_fmt(p.longitude + 180)}" cy="{_fmt(90 - p.latitude)}" r="{_fmt(r)}" '
            f'class="{cls}"><title>{escape(p.label)}: {p.volume} requests, {escape(met)}</title>'
            "</circle>"
        )
    parts.append("</svg>")
    return _svg("".join(parts))


def _nice(value: float) -> float:
    """The next 'round' number at or above value (1, 2, 4, 5 × 10^k): its quarters, the
    axis's ticks, need at most three significant digits (2.5 × 10^k would need four)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1, 2, 4, 5, 10):
        if m * 10**exp >= value:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def _short(value: float) -> str:
    """A tick's value to three significant digits (all a tick of `_nice` has), with a k
    or M for thousands or millions, in plain decimals, never rounded to fewer."""
    suffix = ""
    for size, name in ((1_000_000, "M"), (1_000, "k")):
        if abs(value) >= size:
            value, suffix = value / size, name
            break
    if not value:
        return "0"
    decimals = max(0, 2 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return (text.rstrip("0").rstrip(".") if decimals else text) + suffix
