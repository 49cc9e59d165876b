"""Build the daily usage rollup now (the Celery beat task does it every 5 minutes).

    manage.py rollup_usage              # days not built yet (today too), and dirty ones
    manage.py rollup_usage --rebuild 30 # rebuild the last 30 finished days and today

`--rebuild` is for usage written outside the drain (an import, a fixture): the
drain adds what it inserts to the rollup, a direct INSERT does not.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from billing import rollup
from billing.tasks import rollup_usage


class Command(BaseCommand):
    help = "Build (or rebuild) the daily usage rollup the dashboard's charts read."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rebuild", type=int, metavar="DAYS", default=0)

    def handle(self, *args: Any, rebuild: int, **options: Any) -> None:
        if rebuild < 0:
            self.stderr.write("--rebuild takes a number of days, 0 or more.")
            raise SystemExit(2)
        today = rollup.today()
        for n in range(rebuild, -1 if rebuild else 0, -1):
            rollup.build_day(today - timedelta(days=n))
        built = rollup_usage()
        self.stdout.write(
            f"Rebuilt {rebuild} day(s){' and today' if rebuild else ''}; built {built} more."
        )
