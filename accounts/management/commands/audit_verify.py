"""`manage.py audit_verify [--file F ...]`: check the audit chains and every route's policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import audit, audit_verify


class Command(BaseCommand):
    help = (
        "Check the hash chains of the audit log and that every routed request met its"
        " policy: the stored chains, or the proof files given with --file (offline)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--file",
            action="append",
            dest="files",
            metavar="F",
            help="A proof file (a month's or a request's, JSON Lines); repeatable.",
        )

    def handle(self, *args: Any, files: list[str] | None = None, **options: Any) -> None:
        failed = 0
        if files:
            for name in files:
                try:
                    text = Path(name).read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise CommandError(f"{name}: cannot be read: {exc}") from None
                failed += self._show(name, audit_verify.verify_text(text))
        else:
            failed += self._show("the stored audit log", audit.verify_stored())
        if failed:
            raise CommandError(f"verification failed: {failed} problem(s)")

    def _show(self, name: str, report: audit_verify.Report) -> int:
        for problem in report.problems:
            self.stderr.write(f"{name}: {problem}")
        if report.ok:
            self.stdout.write(
                f"{name}: OK, {report.entries} entries chained,"
                f" {report.routes} routes met their policy"
            )
        return len(report.problems)
