"""`manage.py audit_export YYYY-MM [--org SLUG]`: a month of a chain as a proof file."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import audit
from accounts.models import Organization


class Command(BaseCommand):
    help = (
        "Write a month (YYYY-MM, UTC) of an organization's audit chain, or of the"
        " operators' chain without --org, as a proof file (JSON Lines) to stdout."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("month", help="e.g. 2026-11")
        parser.add_argument("--org", help="The organization's slug (default: the operator chain).")

    def handle(self, *args: Any, month: str, org: str | None = None, **options: Any) -> None:
        org_id = None
        if org is not None:
            found = Organization.objects.filter(slug=org).first()
            if found is None:
                raise CommandError(f"no organization {org!r}")
            org_id = found.pk
        try:
            lines = audit.month_lines(org_id=org_id, month=month)
            for line in lines:
                self.stdout.write(line, ending="")
        except ValueError as exc:
            raise CommandError(str(exc)) from None
