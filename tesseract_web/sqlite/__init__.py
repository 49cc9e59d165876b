"""Django's SQLite backend, set up for several processes writing at once (`make run`).

WAL lets readers and one writer proceed together. The journal mode is a property of
the database file, so it is switched once, by whichever connection gets there first:
switching needs the file to itself, and SQLite answers "database is locked" at once
(without waiting out the busy timeout) when another process holds it. A connection
that loses that race finds the file in WAL already, or switches it on a later try.
"""
