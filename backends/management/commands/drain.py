from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.operator_actions import REASON_MAX, record_operator_action
from backends.services import KINDS, drain_by_slug


class Command(BaseCommand):
    help = "Kill switch: stop (or with --undo, resume) routing to a region, cluster or deployment."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("kind", choices=sorted(KINDS))
        parser.add_argument("slug")
        parser.add_argument("--undo", action="store_true", help="undrain")
        parser.add_argument("--reason", default="", help="why (kept in the operator log)")

    def handle(
        self, *args: Any, kind: str, slug: str, undo: bool, reason: str, **options: Any
    ) -> None:
        if len(reason.strip()) > REASON_MAX:
            raise CommandError(f"the reason must be at most {REASON_MAX} characters")
        try:
            with transaction.atomic():
                target = drain_by_slug(kind, slug, drained=not undo, by="manage.py drain")
                record_operator_action(
                    None,
                    "undrain" if undo else "drain",
                    f"{kind}:{slug}",
                    reason.strip() or "manage.py drain (no reason given)",
                )
        except KINDS[kind].DoesNotExist:
            raise CommandError(f"no {kind} {slug!r}") from None
        self.stdout.write(f"{'undrained' if undo else 'drained'} {kind} {target}")
