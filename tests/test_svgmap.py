"""The server-side world map: where a point lands, and that nothing in it is unescaped."""

from __future__ import annotations

from dashboards import svgmap


def test_the_projection_puts_the_corners_and_the_equator_where_they_belong():
    width, height = 960, 379
    assert svgmap.project(svgmap.LAT_TOP, -180, width=width, height=height) == (0, 0)
    assert svgmap.project(svgmap.LAT_BOTTOM, 180, width=width, height=height) == (960, 379)
    x, y = svgmap.project(0, 0, width=width, height=height)
    assert x == 480
    assert y == round(84 / 142 * height, 1)


def test_points_beyond_the_map_are_held_at_its_edge():
    assert svgmap.project(-89, 0, width=360, height=142)[1] == 142
    assert svgmap.project(89, 0, width=360, height=142)[1] == 0
    assert (
        svgmap.project(0, 190, width=360, height=142)[0]
        == svgmap.project(0, -170, width=360, height=142)[0]
    )


def test_a_point_carries_its_class_key_radius_and_escaped_title():
    svg = svgmap.render(
        [svgmap.Point(lat=52.4, lon=4.9, radius=7, css_class="health-down",
                      title='Amsterdam <b>"down"</b>', key="westeurope", label="A&B")],
        title="Mesh <test>",
    )  # fmt: skip
    assert svg.startswith("<svg")
    assert svg.endswith("</svg>")
    assert 'class="point health-down" data-key="westeurope"' in svg
    assert 'r="7"' in svg
    assert "<title>Amsterdam &lt;b&gt;&quot;down&quot;&lt;/b&gt;</title>" in svg
    assert "A&amp;B" in svg
    assert 'aria-label="Mesh &lt;test&gt;"' in svg
    assert "<b>" not in svg


def test_bigger_points_are_drawn_first_so_small_ones_stay_on_top():
    svg = svgmap.render(
        [svgmap.Point(0, 0, radius=2, key="small"), svgmap.Point(0, 0, radius=20, key="big")]
    )
    assert svg.index('data-key="big"') < svg.index('data-key="small"')


def test_the_map_draws_land_and_needs_nothing_from_the_internet():
    svg = svgmap.render([])
    assert '<path class="land" d="M' in svg
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")
