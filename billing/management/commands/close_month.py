"""`manage.py close_month YYYY-MM`: close a month's invoices (safe to run twice)."""

from __future__ import annotations

import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from billing import invoicing


class Command(BaseCommand):
    help = "Close the invoices of a month (YYYY-MM, UTC) for every organization. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("period", help="The month to close, e.g. 2026-10.")

    def handle(self, *args: Any, period: str, **options: Any) -> None:
        match = re.fullmatch(r"(\d{4})-(\d{2})", period)
        if match is None or not 1 <= int(match[2]) <= 12:
            raise CommandError(f"expected a month as YYYY-MM, got {period!r}")
        year, month = int(match[1]), int(match[2])
        created = invoicing.invoices_close_month(year=year, month=month)
        for invoice in created:
            self.stdout.write(f"{invoice.number} {invoice.org.slug} {invoice.total_usd} USD")
        self.stdout.write(f"closed {year:04d}-{month:02d}: {len(created)} new invoice(s)")
