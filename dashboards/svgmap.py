"""A world map drawn on the server as SVG: no tiles, no scripts, nothing from the internet.

One renderer for every map in the web (the operator console's mesh and a developer's
"where your requests ran"): give it points with a latitude, a longitude, a radius, a CSS
class and a title, get back an accessible inline `<svg>`. Colours come from the page's
stylesheet (the classes), so light and dark themes need nothing here.

The land is a coarse hand-traced outline of the continents in an equirectangular
projection (longitude −180…180, latitude 84…−58): good enough to place a region at a
glance, not a cartographic product.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from django.utils.safestring import SafeString, mark_safe

LAT_TOP, LAT_BOTTOM = 84.0, -58.0

#: (longitude, latitude) rings, clockwise or not; coarse on purpose.
LAND: dict[str, tuple[tuple[float, float], ...]] = {
    "north-america": (
        (-168, 66), (-162, 70), (-156, 71), (-140, 70), (-128, 70), (-115, 68), (-95, 72),
        (-82, 73), (-75, 68), (-62, 60), (-56, 52), (-66, 45), (-70, 42), (-76, 35),
        (-81, 31), (-80, 25), (-82, 28), (-85, 30), (-90, 29), (-97, 27), (-97, 22),
        (-92, 18), (-87, 21), (-88, 16), (-83, 15), (-83, 10), (-77, 8), (-80, 7),
        (-86, 12), (-92, 14), (-98, 16), (-105, 20), (-106, 23), (-112, 29), (-115, 31),
        (-110, 23), (-115, 28), (-117, 32), (-121, 35), (-124, 40), (-124, 48), (-130, 55),
        (-137, 59), (-147, 61), (-152, 59), (-158, 57), (-164, 55), (-158, 58), (-162, 60),
        (-165, 63),
    ),
    "greenland": (
        (-55, 60), (-45, 60), (-40, 65), (-22, 70), (-20, 76), (-18, 81), (-35, 83),
        (-60, 82), (-72, 78), (-68, 76), (-58, 75), (-52, 69),
    ),
    "south-america": (
        (-77, 8), (-72, 12), (-62, 11), (-52, 5), (-50, 0), (-44, -2), (-35, -5), (-35, -9),
        (-39, -14), (-40, -21), (-48, -26), (-53, -34), (-58, -38), (-62, -41), (-65, -45),
        (-68, -51), (-69, -55), (-73, -53), (-75, -47), (-73, -40), (-72, -30), (-70, -18),
        (-76, -14), (-81, -6), (-80, -1), (-77, 4),
    ),
    "eurasia": (
        (-9, 39), (-9, 43), (-2, 43.5), (-1, 46), (-4, 48), (2, 51), (5, 53), (8, 54),
        (8, 57), (10, 58), (11, 56), (12, 54), (14, 54), (20, 55), (21, 57), (24, 59),
        (28, 60), (22, 61), (21, 63), (25, 65), (22, 66), (17, 62), (19, 60), (16, 56),
        (12, 56), (11, 59), (5, 58), (5, 62), (10, 64), (15, 68), (20, 70), (28, 71),
        (33, 69), (41, 67), (44, 68), (55, 69), (60, 70), (70, 73), (80, 73), (90, 76),
        (105, 78), (113, 74), (130, 71), (140, 72), (160, 70), (170, 70), (180, 69),
        (180, 65), (178, 62), (170, 60), (163, 60), (162, 56), (156, 51), (156, 57),
        (163, 62), (155, 59), (142, 59), (136, 54), (141, 52), (140, 47), (133, 43),
        (129, 41), (129, 36), (126, 35), (126, 38), (125, 40), (121, 39), (122, 37),
        (119, 35), (121, 31), (122, 29), (119, 25), (116, 23), (110, 21), (108, 22),
        (106, 19), (109, 15), (109, 11), (105, 9), (105, 11), (101, 13), (100, 9), (103, 5),
        (104, 1), (101, 3), (98, 8), (98, 15), (94, 17), (92, 22), (88, 22), (86, 20),
        (80, 15), (80, 10), (77, 8), (73, 16), (72, 21), (67, 25), (62, 25), (57, 26),
        (56, 27), (51, 27), (48, 30), (50, 26), (51, 24), (56, 24), (57, 22), (59, 22),
        (55, 17), (52, 16), (45, 13), (43, 13), (39, 20), (35, 28), (34, 31), (35, 36),
        (30, 36), (27, 37), (26, 40), (24, 40), (23, 37), (21, 38), (19, 42), (16, 44),
        (13, 45), (14, 42), (16, 40), (15, 38), (12, 42), (9, 44), (6, 43), (3, 43),
        (0, 39), (-2, 37), (-6, 36), (-9, 37),
    ),
    "africa": (
        (-17, 21), (-13, 28), (-10, 30), (-6, 36), (0, 36), (10, 37), (11, 33), (20, 31),
        (25, 32), (32, 31), (34, 28), (39, 20), (43, 12), (51, 12), (48, 5), (40, -3),
        (39, -10), (40, -15), (35, -23), (33, -28), (27, -34), (20, -35), (18, -32),
        (15, -27), (12, -18), (14, -10), (12, -5), (9, -1), (9, 4), (5, 6), (-2, 5), (-8, 4),
        (-13, 8), (-17, 14),
    ),
    "madagascar": ((44, -25), (47, -25), (50, -15), (49, -12), (44, -17)),
    "australia": (
        (114, -22), (114, -34), (118, -35), (124, -34), (131, -31), (137, -34), (140, -38),
        (147, -39), (150, -37), (153, -30), (153, -25), (146, -19), (142, -11), (141, -17),
        (136, -12), (131, -11), (126, -14), (122, -18),
    ),
    "great-britain": (
        (-5, 50), (1, 51), (2, 53), (-1, 55), (-2, 57), (-4, 58.6), (-6, 57), (-5, 55),
        (-3, 54), (-4, 53), (-5, 52),
    ),
    "ireland": ((-10, 52), (-6, 52), (-6, 54), (-8, 55), (-10, 54)),
    "iceland": ((-24, 64), (-22, 66), (-14, 66.5), (-13, 65), (-18, 63.4)),
    "japan": (
        (130, 31), (132, 34), (135, 34), (140, 35), (141, 38), (142, 43), (145, 44),
        (141, 45), (140, 41), (139, 38), (136, 36), (132, 35), (130, 33),
    ),
    "sumatra": ((95, 5), (98, 4), (104, -2), (106, -6), (102, -4), (98, 0)),
    "java": ((105, -6), (114, -7), (114, -8.5), (106, -7.5)),
    "borneo": ((109, 2), (111, 1), (117, 7), (119, 5), (116, -4), (110, -3)),
    "new-guinea": ((131, -1), (141, -3), (148, -6), (150, -10), (141, -9), (138, -8), (132, -4)),
    "philippines": ((120, 18), (122, 18), (126, 7), (122, 7), (120, 14)),
    "new-zealand": (
        (172, -34), (178, -38), (175, -41), (171, -44), (167, -46), (170, -46), (174, -41),
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Point:
    """One mark on the map: a circle at (lat, lon) with a hover title.

    `css_class` colours it (the page's stylesheet decides the colour), `key` is written
    as `data-key` so a script can find the circle again to update it live, `label` is
    drawn beside it (empty: none).
    """

    lat: float
    lon: float
    radius: float = 6.0
    css_class: str = ""
    title: str = ""
    key: str = ""
    label: str = ""


def project(lat: float, lon: float, *, width: float, height: float) -> tuple[float, float]:
    """Equirectangular: (lat, lon) in degrees to (x, y) in the map's pixels."""
    lat = min(max(lat, LAT_BOTTOM), LAT_TOP)
    lon = ((lon + 180.0) % 360.0) - 180.0 if not -180.0 <= lon <= 180.0 else lon
    x = (lon + 180.0) / 360.0 * width
    y = (LAT_TOP - lat) / (LAT_TOP - LAT_BOTTOM) * height
    return round(x, 1), round(y, 1)


def _ring(ring: Sequence[tuple[float, float]], width: float, height: float) -> str:
    points = [project(lat, lon, width=width, height=height) for lon, lat in ring]
    return "M" + "L".join(f"{x:g},{y:g}" for x, y in points) + "Z"


def _attr(value: str) -> str:
    return escape(value, quote=True)


def render(
    points: Iterable[Point],
    *,
    title: str = "World map",
    width: int = 960,
    css_class: str = "worldmap",
    dom_id: str = "",
) -> SafeString:
    """An inline, responsive `<svg>` of the world with `points` on it (largest drawn first,
    so small marks stay clickable on top of big ones)."""
    height = round(width * (LAT_TOP - LAT_BOTTOM) / 360.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'class="{_attr(css_class)}" role="img" aria-label="{_attr(title)}"'
        + (f' id="{_attr(dom_id)}"' if dom_id else "")
        + f"><title>{escape(title)}</title>",
        f'<rect class="sea" x="0" y="0" width="{width}" height="{height}"/>',
        '<g class="graticule">',
    ]
    for lon in range(-150, 180, 30):
        x, _ = project(0, lon, width=width, height=height)
        parts.append(f'<line x1="{x:g}" y1="0" x2="{x:g}" y2="{height}"/>')
    for lat in range(-30, 90, 30):
        _, y = project(lat, 0, width=width, height=height)
        parts.append(f'<line x1="0" y1="{y:g}" x2="{width}" y2="{y:g}"/>')
    parts.append("</g>")
    land = "".join(_ring(ring, width, height) for ring in LAND.values())
    parts.append(f'<path class="land" d="{land}"/>')
    parts.append('<g class="points">')
    for p in sorted(points, key=lambda p: -p.radius):
        x, y = project(p.lat, p.lon, width=width, height=height)
        key = f' data-key="{_attr(p.key)}"' if p.key else ""
        parts.append(
            f'<circle class="point {_attr(p.css_class)}"{key} cx="{x:g}" cy="{y:g}" '
            f'r="{max(p.radius, 0.0):g}"><title>{escape(p.title)}</title></circle>'
        )
        if p.label:
            parts.append(
                f'<text class="point-label" x="{x + p.radius + 2:g}" y="{y + 4:g}">'
                f"{escape(p.label)}</text>"
            )
    parts.append("</g></svg>")
    return mark_safe("".join(parts))  # noqa: S308 - every value above is escaped
