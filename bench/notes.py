"""Results files that keep what people wrote under them.

A benchmark writes its tables; the readings of a run (what changed since the last one,
what the numbers mean, the runs before it) are written by hand under headings of their
own (`## ...`) below them. A new run replaces the tables and keeps those sections, so
the history of a results file is not lost to the next run. The generated part never
has a `## ` heading of its own.
"""

from __future__ import annotations

from pathlib import Path

HEADING = "## "


def hand_written(text: str) -> str:
    """The sections written by hand: from the first `## ` heading to the end ("" if none)."""
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        if line.startswith(HEADING):
            return "".join(lines[n:])
    return ""


def write(path: Path, generated: str) -> None:
    """Write a run's generated results to `path`, the sections written by hand under the
    last run's results kept below them."""
    if any(line.startswith(HEADING) for line in generated.splitlines()):
        raise ValueError("generated results must not have `## ` headings: they mark notes")
    kept = hand_written(path.read_text()) if path.exists() else ""
    text = generated.rstrip("\n") + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + ("\n" + kept if kept else ""))
