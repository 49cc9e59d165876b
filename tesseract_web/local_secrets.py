"""Secrets for a local run, generated once and kept under `var/` (mode 0600).

Outside production (`TESSERACT_ENV` is not `production`) a secret that the
environment does not give is read from `var/secrets.json`, which the first process
to need it creates. Every process of one run — the web, the gateway, the workers —
and every later run on this machine share the same values, so sessions and API keys
survive a restart. Production never comes here: there the secrets must be given.

The file is created atomically (written aside, then hard-linked into place, which
fails if another process won the race), so concurrent start-ups agree on one value.
A secret added later (`ADDED`: the key that seals provider credentials) is generated
into an existing file under an exclusive lock, re-read inside it, so that concurrent
processes agree on that one too; `load_or_create` says which names it generated.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import secrets
from pathlib import Path

FILENAME = "secrets.json"
NAMES = ("SECRET_KEY", "API_KEY_PEPPER")
#: Secrets that files written before them lack: generated into the file when missing.
#: TESSERACT_SEALING_KEYS is a Fernet key (32 random bytes, url-safe base64).
ADDED = ("TESSERACT_SEALING_KEYS",)


def _generate_one(name: str) -> str:
    if name == "TESSERACT_SEALING_KEYS":
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    return secrets.token_urlsafe(48)


def _generate() -> dict[str, str]:
    return {name: _generate_one(name) for name in (*NAMES, *ADDED)}


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
    if any(not values.get(name) for name in ADDED):
        values = _add_missing(path)
    return {name: str(values[name]) for name in (*NAMES, *ADDED)}


def _add_missing(path: Path) -> dict[str, str]:
    """Generate the `ADDED` secrets an older file lacks, under an exclusive lock."""
    lock = path.with_name(f".{FILENAME}.lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        values = json.loads(path.read_text())  # again: another process may have won
        missing = [name for name in ADDED if not values.get(name)]
        if missing:
            values.update({name: _generate_one(name) for name in missing})
            tmp = path.with_name(f".{FILENAME}.{os.getpid()}.tmp")
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(out_fd, "w") as out:
                json.dump(values, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        return values
    finally:
        os.close(fd)  # releases the lock
