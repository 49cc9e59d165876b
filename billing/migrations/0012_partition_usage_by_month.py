from django.db import migrations

from billing import partitions

#: The request ids are only ever looked up whole: the LIKE index Django gives a
#: CharField key on PostgreSQL would only cost every drain an extra index insert.
LIKE_INDEX = "billing_usagerequestid_request_id_0fe3a77b_like"


def partition(apps, schema_editor):
    """PostgreSQL: rebuild billing_usageevent partitioned by month (`billing.partitions`).
    SQLite keeps its one plain table."""
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            partitions.convert(cursor, partitioned=True)
            cursor.execute(f"DROP INDEX IF EXISTS {LIKE_INDEX}")


def unpartition(apps, schema_editor):
    """PostgreSQL: back to one plain table, every row kept, primary key (id)."""
    if schema_editor.connection.vendor == "postgresql":
        with schema_editor.connection.cursor() as cursor:
            partitions.convert(cursor, partitioned=False)
            cursor.execute(
                f"CREATE INDEX IF NOT EXISTS {LIKE_INDEX}"
                " ON billing_usagerequestid (request_id varchar_pattern_ops)"
            )


class Migration(migrations.Migration):
    """The usage table partitioned by month of created_at on PostgreSQL; nothing in
    Django's model state changes (the model keeps `id` as its primary key; the
    database's is (id, created_at), which a partitioned table requires).

    The rows are copied in this migration's transaction, which holds the table
    exclusively meanwhile: the drain waits (its records stay in Redis), dashboards'
    reads of raw events wait. Reversible: the reverse copies the rows back into a
    plain table.
    """

    dependencies = [
        ('billing', '0011_usage_request_ids'),
    ]

    operations = [
        migrations.RunPython(partition, unpartition, elidable=False),
    ]
