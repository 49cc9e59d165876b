"""Numbers read from untrusted text (query strings, cursors), for every layer above.

`int()` alone takes "+5", " 5", "5_0" and "²", and gives numbers no column can hold,
which then fail in the database as a 500 instead of at the door as a 400 or 404.
"""

from __future__ import annotations

#: The largest id a row can have (a 64-bit signed primary key).
MAX_ID = 2**63 - 1
#: The most a count or a limit kept in a `PositiveIntegerField` can be on every database
#: (PostgreSQL's `integer`): a form or serializer field bounded by it refuses the rest
#: as a 400, where the database would have refused it as a 500.
MAX_COUNT = 2**31 - 1


def whole_number(raw: str, high: int = MAX_ID) -> int | None:
    """`raw` as a number from 1 to `high` written in ASCII digits, else None."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(high)):
        return None
    value = int(raw)
    return value if 1 <= value <= high else None
