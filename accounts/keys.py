"""API key material: generation, parsing and hashing. No database, no Django models.

A key reads `tsk_` + an 8-character lookup prefix + a 32-character secret, all in
lowercase base36. Only the prefix and an HMAC-SHA256 of the whole key (peppered with
`settings.API_KEY_PEPPER`) are stored, so a database dump reveals no usable key.
Lookup is by prefix (indexed), then the digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from dataclasses import dataclass

KEY_PREFIX = "tsk_"
LOOKUP_LEN = 8
SECRET_LEN = 32
KEY_LEN = len(KEY_PREFIX) + LOOKUP_LEN + SECRET_LEN
_ALPHABET = string.ascii_lowercase + string.digits
_ALPHABET_SET = frozenset(_ALPHABET)
#: A key's shape in words, for the error that a malformed one gets.
SHAPE = f"{KEY_PREFIX} followed by {LOOKUP_LEN + SECRET_LEN} lowercase letters and digits"


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly generated key: `plaintext` is shown to the user once, then dropped."""

    plaintext: str
    lookup: str
    digest: str


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def digest(plaintext: str, pepper: str) -> str:
    return hmac.digest(pepper.encode(), plaintext.encode(), hashlib.sha256).hex()


def generate(pepper: str) -> NewKey:
    lookup = _random(LOOKUP_LEN)
    plaintext = f"{KEY_PREFIX}{lookup}{_random(SECRET_LEN)}"
    return NewKey(plaintext=plaintext, lookup=lookup, digest=digest(plaintext, pepper))


def parse_lookup(plaintext: str) -> str | None:
    """The lookup prefix of a well-formed key, or None for anything else."""
    if len(plaintext) != KEY_LEN or not plaintext.startswith(KEY_PREFIX):
        return None
    body = plaintext[len(KEY_PREFIX) :]
    if not _ALPHABET_SET.issuperset(body):
        return None
    return body[:LOOKUP_LEN]


def matches(plaintext: str, stored_digest: str, pepper: str) -> bool:
    return hmac.compare_digest(digest(plaintext, pepper), stored_digest)
