"""Provider credentials, sealed at rest with keys from the environment.

A credential (a provider's API key) is stored only as a Fernet token (AES-128-CBC +
HMAC-SHA256, `cryptography`), sealed with the first of `TESSERACT_SEALING_KEYS`
(comma-separated, or `TESSERACT_SEALING_KEYS_FILE`); every key of the list can unseal,
so keys rotate without downtime: put a new key first, run `manage.py
providers_reseal` (re-seals every credential with it), then drop the old key.

Outside production a key is generated once into `var/secrets.json` when the
environment gives none (`make run` says so). The plaintext exists only in memory:
in the world snapshot the gateway builds (`backends.snapshot`), wrapped in `Secret`,
whose `repr` and `str` show the last four characters at most, so a log line, a
traceback or an error body that formats it leaks nothing.
"""

from __future__ import annotations

from django.conf import settings

#: What an operator sees of a credential after entering it (the last four characters).
VISIBLE = 4


class SealingError(Exception):
    """The keys are missing or malformed, or a token does not open with any of them.

    Its message never contains a credential or a key.
    """


class Secret:
    """A credential in memory: `reveal()` gives it; `repr`/`str` never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    @property
    def last4(self) -> str:
        return last4(self._value)

    def __repr__(self) -> str:
        return f"Secret('…{self.last4}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str:
        raise TypeError("a Secret is not pickled")


def last4(value: str) -> str:
    """The last four characters of a credential, or less of a very short one."""
    if len(value) <= VISIBLE * 2:
        return value[-min(VISIBLE, len(value) // 2) :] if len(value) >= 2 else ""
    return value[-VISIBLE:]


def parse_keys(raw: str) -> list[bytes]:
    """The comma-separated keys of `TESSERACT_SEALING_KEYS`, checked (first seals)."""
    from cryptography.fernet import Fernet

    keys = [part.strip().encode() for part in raw.split(",") if part.strip()]
    for n, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except (ValueError, TypeError):
            raise SealingError(
                f"TESSERACT_SEALING_KEYS: key {n} is not a Fernet key (32 url-safe "
                f"base64-encoded bytes; make one with `manage.py providers_sealing_key`)"
            ) from None
    return keys


def generate_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _fernet(raw: str | None = None) -> object:
    from cryptography.fernet import Fernet, MultiFernet

    raw = settings.TESSERACT_SEALING_KEYS if raw is None else raw
    keys = parse_keys(raw or "")
    if not keys:
        raise SealingError(
            "No sealing key: set TESSERACT_SEALING_KEYS (or TESSERACT_SEALING_KEYS_FILE) "
            "to seal provider credentials."
        )
    return MultiFernet([Fernet(k) for k in keys])


def seal(plaintext: str, *, keys: str | None = None) -> str:
    """The token to store for `plaintext`, sealed with the first key."""
    if not plaintext:
        raise SealingError("an empty credential is not sealed")
    return _fernet(keys).encrypt(plaintext.encode()).decode()  # type: ignore[attr-defined]


def unseal(token: str, *, keys: str | None = None) -> Secret:
    """The credential in `token`, opened with whichever key sealed it."""
    from cryptography.fernet import InvalidToken

    try:
        value = _fernet(keys).decrypt(token.encode())  # type: ignore[attr-defined]
    except InvalidToken:
        raise SealingError(
            "a sealed credential does not open with any of TESSERACT_SEALING_KEYS "
            "(was its key removed before `manage.py providers_reseal`?)"
        ) from None
    return Secret(value.decode())


def reseal(token: str, *, keys: str | None = None) -> str:
    """`token` sealed again with the first key (MultiFernet.rotate)."""
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(keys).rotate(token.encode()).decode()  # type: ignore[attr-defined]
    except InvalidToken:
        raise SealingError(
            "a sealed credential does not open with any of TESSERACT_SEALING_KEYS"
        ) from None
