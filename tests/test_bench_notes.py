"""A benchmark's results file keeps the readings written under its tables."""

from __future__ import annotations

import pytest

from bench import notes

FIRST = "# Gateway overhead\n\n| target | p50 |\n|---|---|\n| direct | 0.46 |\n"
READING = "## 2026-11-30 07:19 UTC: the run above\n\nThe machine was slow.\n"
OLDER = "## 2026-11-29: three runs\n\n* 17.0x, 21.5x and 25.0x.\n"


def test_a_new_run_replaces_the_tables_and_keeps_every_section_written_under_them(tmp_path):
    path = tmp_path / "results" / "gateway.md"
    notes.write(path, FIRST)
    path.write_text(path.read_text() + "\n" + READING + "\n" + OLDER)  # written by hand
    notes.write(path, "# Gateway overhead\n\n| target | p50 |\n|---|---|\n| direct | 0.31 |")
    text = path.read_text()
    assert "0.31" in text
    assert "0.46" not in text
    assert text.endswith("\n" + READING + "\n" + OLDER)
    assert text.index("0.31") < text.index(READING)


def test_a_file_without_readings_is_just_the_run(tmp_path):
    path = tmp_path / "limits.md"
    notes.write(path, FIRST)
    notes.write(path, FIRST)
    assert path.read_text() == FIRST


def test_generated_results_with_a_heading_of_their_own_are_refused(tmp_path):
    path = tmp_path / "x.md"
    with pytest.raises(ValueError, match="headings"):
        notes.write(path, FIRST + "\n## a section\n")
    assert not path.exists()
