"""Create the usage table's month partitions now (the Celery beat task does it hourly).

    manage.py usage_partitions                    # the last month, this one, 3 ahead
    manage.py usage_partitions --month 2025-01    # and January 2025 (repeatable)

Prints the partitions created and the rows left in the default partition. `--month`
is for rows that landed in the default partition (a month no partition covered): the
new month's partition takes them. PostgreSQL only; SQLite has one plain table.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import partitions


def _month(text: str) -> date:
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError as exc:
        raise CommandError(f"--month takes YYYY-MM, not {text!r}") from exc


class Command(BaseCommand):
    help = "Create the usage table's month partitions and report rows in the default one."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--month", action="append", default=[], metavar="YYYY-MM")
        parser.add_argument("--ahead", type=int, default=partitions.MONTHS_AHEAD)

    def handle(self, *args: Any, month: list[str], ahead: int, **options: Any) -> None:
        report = partitions.ensure(ahead=ahead, also=[_month(m) for m in month])
        self.stdout.write(f"Created: {', '.join(report.created) or 'none'}.")
        if report.moved:
            self.stdout.write(f"Moved {report.moved} row(s) out of the default partition.")
        self.stdout.write(f"Rows in the default partition: {report.in_default}.")
