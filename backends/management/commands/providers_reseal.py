"""`manage.py providers_reseal`: seal every provider credential with the newest key.

Key rotation: put the new key first in TESSERACT_SEALING_KEYS (keep the old ones after
it), run this, then remove the old keys. All or nothing; no credential is printed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from backends import providers, sealing


class Command(BaseCommand):
    help = "Re-seal every provider credential with the first of TESSERACT_SEALING_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            done = providers.reseal_all()
        except sealing.SealingError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Re-sealed {done} provider credential(s) with the first key.")
