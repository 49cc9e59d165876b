"""The usage table's monthly partitions (PostgreSQL; SQLite keeps one plain table).

On PostgreSQL `billing_usageevent` is partitioned by range of `created_at`, one
partition per calendar month in UTC (`billing_usageevent_y2026m11`), plus a DEFAULT
partition that takes any row no month covers. A month is cheap to drop or detach
whole, and reads of a period (the rollup's days, an invoice's month, the request log's
newest rows) touch only the partitions that hold it.

The beat task `billing.tasks.ensure_usage_partitions` keeps the months from the last
one to `MONTHS_AHEAD` ahead in place (`ensure`), so rows never need the default; rows
that land there anyway (a clock far off, a month the task could not create in time)
are counted and logged at WARNING on every run. A month created after the fact takes
its rows out of the default partition (PostgreSQL refuses to create a partition whose
rows sit in the default one).

`convert` turns the plain table into the partitioned one and back (migration 0012).
Exactly-once does not depend on any of this: request ids are unique in
`UsageRequestId`, an unpartitioned table (a partitioned table's unique keys must
include `created_at`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

TABLE = "billing_usageevent"
DEFAULT = f"{TABLE}_default"
#: How many months after the current one always have their partition.
MONTHS_AHEAD = 3
#: DDL on the usage table waits at most this long for its lock, then gives up (the next
#: run tries again): a CREATE … PARTITION OF queued behind a long read would otherwise
#: hold up every drain and dashboard query queued behind it.
LOCK_TIMEOUT = "5s"

logger = logging.getLogger(__name__)


def month_of(moment: datetime | date) -> date:
    """The first day of the UTC month `moment` is in."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def add_months(month: date, n: int) -> date:
    index = month.year * 12 + month.month - 1 + n
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{TABLE}_y{month:%Y}m{month:%m}"


def _bounds(month: date) -> str:
    """FOR VALUES of a month's partition: [its first instant, the next month's), UTC."""
    start, end = month.isoformat(), add_months(month, 1).isoformat()
    return f"FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"


def months_to_keep(now: datetime, ahead: int = MONTHS_AHEAD) -> list[date]:
    """The last month (records published late, at the turn of a month), this one, and
    `ahead` more."""
    this = month_of(now)
    return [add_months(this, n) for n in range(-1, ahead + 1)]


def is_partitioned(cursor: Any) -> bool:
    """Whether the usage table is partitioned (`cursor`: a Django cursor)."""
    if cursor.db.vendor != "postgresql":
        return False
    cursor.execute("SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(%s)", [TABLE])
    return cursor.fetchone() is not None


def partitions(cursor: Any) -> set[str]:
    """The names of the usage table's partitions, the default one included."""
    cursor.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)",
        [TABLE],
    )
    return {name for (name,) in cursor.fetchall()}


def create_month(cursor: Any, month: date) -> int:
    """Create a month's partition (if missing); return the rows it took from the default
    partition. Call it in a transaction."""
    name, bounds = partition_name(month), _bounds(month)
    start, end = month, add_months(month, 1)
    cursor.execute(
        f"SELECT count(*) FROM {DEFAULT} WHERE created_at >= %s AND created_at < %s",  # noqa: S608
        [_instant(start), _instant(end)],
    )
    stranded = int(cursor.fetchone()[0])
    if not stranded:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {TABLE}"
                       f" FOR VALUES {bounds}")  # fmt: skip
        return 0
    # The month's rows are in the default partition: move them into a table of their
    # own, then attach it (the indexes, keys and checks follow the parent's).
    cursor.execute(f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cursor.execute(
        f"WITH moved AS (DELETE FROM {DEFAULT} WHERE created_at >= %s AND created_at < %s"  # noqa: S608
        f" RETURNING *) INSERT INTO {name} SELECT * FROM moved",
        [_instant(start), _instant(end)],
    )
    cursor.execute(f"ALTER TABLE {TABLE} ATTACH PARTITION {name} FOR VALUES {bounds}")
    return stranded


def _instant(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass
class Report:
    """What `ensure` did and found."""

    created: list[str] = field(default_factory=list)
    moved: int = 0  # rows taken out of the default partition into a new month's
    in_default: int = 0  # rows still in the default partition
    oldest_in_default: datetime | None = None
    newest_in_default: datetime | None = None


def ensure(
    now: datetime | None = None, ahead: int = MONTHS_AHEAD, also: Iterable[date] = ()
) -> Report:
    """Create the missing partitions of `months_to_keep` (and of the months `also`
    names, for rows stranded in the default partition) and report the rows in the
    default partition (logged at WARNING: they mean a month was missing). Idempotent;
    nothing to do on SQLite, or while the table is not partitioned."""
    report = Report()
    months = sorted({*months_to_keep(now or timezone.now(), ahead), *map(month_of, also)})
    with transaction.atomic(), connection.cursor() as cursor:
        if not is_partitioned(cursor):
            return report
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        existing = partitions(cursor)
        for month in months:
            if partition_name(month) not in existing:
                report.moved += create_month(cursor, month)
                report.created.append(partition_name(month))
        cursor.execute(f"SELECT count(*), min(created_at), max(created_at) FROM {DEFAULT}")  # noqa: S608
        count, report.oldest_in_default, report.newest_in_default = cursor.fetchone()
        report.in_default = int(count)
    if report.created:
        logger.info("usage partitions created: %s", ", ".join(report.created))
    if report.moved:
        logger.warning("%d usage rows moved from the default partition", report.moved)
    if report.in_default:
        logger.warning(
            "%d usage rows are in the default partition %s (created_at %s to %s): no month"
            " partition covers them (manage.py usage_partitions --month YYYY-MM moves them)",
            report.in_default,
            DEFAULT,
            report.oldest_in_default,
            report.newest_in_default,
        )
    return report


def convert(cursor: Any, *, partitioned: bool, now: datetime | None = None) -> None:
    """Rebuild the usage table as a partitioned table (`partitioned`) or a plain one,
    with the same columns, defaults, checks, identity sequence (continuing where it
    was), indexes (same names), foreign keys, owner and grants, and every row.

    Partitioned: a month partition from the oldest row's month (or the last month) to
    `MONTHS_AHEAD` ahead, and the default partition; the primary key is (id,
    created_at). Plain: the primary key is (id). Runs in the caller's transaction, which
    holds the table exclusively while the rows are copied and the indexes built.
    """
    old = f"{TABLE}_old"
    referencing = _catalog(
        cursor,
        "SELECT conrelid::regclass::text FROM pg_constraint WHERE confrelid = {t}"
        " AND contype = 'f'",
    )
    if referencing:
        # A foreign key to a partitioned table needs a unique key there, which must
        # include created_at: point it at UsageRequestId.request_id instead.
        names = ", ".join(name for (name,) in referencing)
        raise RuntimeError(f"{names} reference {TABLE}: cannot rebuild it")
    indexes = _catalog(
        cursor,
        "SELECT pg_get_indexdef(indexrelid), indisunique FROM pg_index"
        " WHERE indrelid = {t} AND NOT indisprimary",
    )
    if partitioned and any(unique for _, unique in indexes):
        raise RuntimeError(f"{TABLE} has a unique index without created_at: cannot partition it")
    foreign_keys = _catalog(
        cursor,
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = {t} AND contype = 'f'",
    )
    ((owner, me),) = _catalog(
        cursor, "SELECT pg_get_userbyid(relowner), current_user FROM pg_class WHERE oid = {t}"
    )
    grants = _catalog(
        cursor,
        "SELECT privilege_type, CASE WHEN grantee = 0 THEN 'PUBLIC'"
        " ELSE quote_ident(pg_get_userbyid(grantee)) END"
        " FROM pg_class, aclexplode(relacl) WHERE oid = {t} AND grantee <> relowner",
    )
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    (sequence,) = cursor.fetchone()
    cursor.execute(f"SELECT last_value, is_called FROM {sequence}")  # noqa: S608
    last_value, is_called = cursor.fetchone()

    # Foreign-key checks deferred to the commit of rows this transaction wrote would
    # stop the DROP below ("pending trigger events"): run them now.
    cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    cursor.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
    cursor.execute(
        f"CREATE TABLE {TABLE} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS"
        " INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMMENTS)"
        + (" PARTITION BY RANGE (created_at)" if partitioned else "")
    )
    if partitioned:
        cursor.execute(f"SELECT min(created_at) FROM {old}")  # noqa: S608
        (oldest,) = cursor.fetchone()
        now = now or timezone.now()
        month = min(month_of(oldest), months_to_keep(now)[0]) if oldest else months_to_keep(now)[0]
        while month <= add_months(month_of(now), MONTHS_AHEAD):
            cursor.execute(
                f"CREATE TABLE {partition_name(month)} PARTITION OF {TABLE}"
                f" FOR VALUES {_bounds(month)}"
            )
            month = add_months(month, 1)
        cursor.execute(f"CREATE TABLE {DEFAULT} PARTITION OF {TABLE} DEFAULT")
    cursor.execute(f"INSERT INTO {TABLE} OVERRIDING SYSTEM VALUE SELECT * FROM {old}")  # noqa: S608
    cursor.execute(f"SELECT max(id) FROM {old}")  # noqa: S608
    (max_id,) = cursor.fetchone()
    cursor.execute(f"DROP TABLE {old}")  # its sequence, indexes and keys go with it

    # The new identity sequence takes the old one's name, and goes on where it was.
    cursor.execute("SELECT pg_get_serial_sequence(%s, 'id')", [TABLE])
    (new_sequence,) = cursor.fetchone()
    cursor.execute(f"ALTER SEQUENCE {new_sequence} RENAME TO {sequence.rpartition('.')[2]}")
    issued = max(last_value if is_called else last_value - 1, max_id or 0)
    cursor.execute(f"SELECT setval('{sequence}', %s, %s)", [max(issued, 1), issued > 0])
    key = "id, created_at" if partitioned else "id"
    cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY ({key})")
    for name, definition in foreign_keys:
        cursor.execute(f"ALTER TABLE {TABLE} ADD CONSTRAINT {name} {definition}")
    for definition, _ in indexes:
        # A partitioned table's index reads "ON ONLY": built here on every partition.
        cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
    if owner != me:
        cursor.execute(f'ALTER TABLE {TABLE} OWNER TO "{owner}"')
    for privilege, grantee in grants:
        cursor.execute(f"GRANT {privilege} ON {TABLE} TO {grantee}")
    cursor.execute(f"ANALYZE {TABLE}")


def _catalog(cursor: Any, sql: str) -> list[tuple[Any, ...]]:
    """The rows of a catalog query about the usage table (`{t}`: its oid)."""
    cursor.execute(sql.format(t="to_regclass(%s)"), [TABLE])
    return list(cursor.fetchall())
