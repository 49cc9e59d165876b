from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backends.services import KINDS, drain_by_slug


class Command(BaseCommand):
    help = "Kill switch: stop (or with --undo, resume) routing to a region, cluster or deployment."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("kind", choices=sorted(KINDS))
        parser.add_argument("slug")
        parser.add_argument("--undo", action="store_true", help="undrain")

    def handle(self, *args: Any, kind: str, slug: str, undo: bool, **options: Any) -> None:
        try:
            target = drain_by_slug(kind, slug, drained=not undo, by="manage.py drain")
        except KINDS[kind].DoesNotExist:
            raise CommandError(f"no {kind} {slug!r}") from None
        self.stdout.write(f"{'undrained' if undo else 'drained'} {kind} {target}")
