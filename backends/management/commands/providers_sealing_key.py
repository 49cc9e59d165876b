"""`manage.py providers_sealing_key`: print a new key for TESSERACT_SEALING_KEYS."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from backends import sealing


class Command(BaseCommand):
    help = "Print a new Fernet key to put first in TESSERACT_SEALING_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(sealing.generate_key())
