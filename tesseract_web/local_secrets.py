"""Secrets for a local run, generated once and kept under `var/` (mode 0600).

Outside production (`TESSERACT_ENV` is not `production`) a secret that the
environment does not give is read from `var/secrets.json`, which the first process
to need it creates. Every process of one run — the web, the gateway, the workers —
and every later run on this machine share the same values, so sessions and API keys
survive a restart. Production never comes here: there the secrets must be given.

The file is created atomically (written aside, then hard-linked into place, which
fails if another process won the race), so concurrent start-ups agree on one value.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

FILENAME = "secrets.json"
NAMES = ("SECRET_KEY", "API_KEY_PEPPER")


def _generate() -> dict[str, str]:
    return {name: secrets.token_urlsafe(48) for name in NAMES}


def load_or_create(var_dir: Path) -> dict[str, str]:
    """The local secrets, created (mode 0600) on first use."""
    path = var_dir / FILENAME
    if not path.exists():
        tmp = var_dir / f".{FILENAME}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(_generate(), out)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces a file another process made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    values = json.loads(path.read_text())
    missing = [name for name in NAMES if not values.get(name)]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: delete it to start afresh")
    return {name: str(values[name]) for name in NAMES}
