"""The server-side charts draw what the data holds, even a single day."""

import re

import pytest

from dashboards.charts import Series, line_chart

DAYS = ["Nov 26", "Nov 27", "Nov 28"]


def test_a_day_with_no_neighbours_is_drawn_as_a_dot():
    svg = str(line_chart(DAYS, [Series("p50 TTFT", [None, None, 62.0])], title="TTFT"))
    assert svg.count("<circle") == 1


def test_days_that_join_make_a_line_and_no_dots():
    svg = str(line_chart(DAYS, [Series("requests", [1.0, 2.0, 3.0])], title="Requests"))
    assert "<circle" not in svg
    assert " L" in svg.split('<path d="', 1)[1].split('"', 1)[0]  # one joined path


def test_the_last_days_label_ends_inside_the_chart():
    svg = str(line_chart(DAYS, [Series("requests", [1.0, 2.0, 3.0])], title="Requests"))
    assert 'text-anchor="end" class="tick">Nov 28<' in svg


def axis_labels(svg: str) -> list[str]:
    return re.findall(r'text-anchor="end" class="tick">([^<]*)</text>', svg)[:5]


@pytest.mark.parametrize(
    ("top", "labels"),
    [
        (0.00046, ["0", "0.000125", "0.00025", "0.000375", "0.0005"]),  # a day's cents
        (0.00033, ["0", "0.0001", "0.0002", "0.0003", "0.0004"]),
        (4.2, ["0", "1.25", "2.5", "3.75", "5"]),
        (2100.0, ["0", "1k", "2k", "3k", "4k"]),
        (4_600_000.0, ["0", "1.25M", "2.5M", "3.75M", "5M"]),
        (18.0, ["0", "5", "10", "15", "20"]),
    ],
)
def test_the_value_axis_says_each_ticks_value_not_a_rounding_of_it(top, labels):
    svg = str(line_chart(DAYS, [Series("spend", [0.0, top / 2, top])], title="Spend"))
    assert axis_labels(svg) == labels
