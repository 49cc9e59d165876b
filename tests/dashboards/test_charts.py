"""The server-side charts draw what the data holds, even a single day."""

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
