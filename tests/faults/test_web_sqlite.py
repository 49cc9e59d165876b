"""The default run's SQLite takes concurrent writers without "database is locked".

Two processes configured by the real settings (as the web, the gateway and the
workers of `make run` are) each run read-then-write transactions as fast as they
can, at the same time. Every transaction must commit, and they must serialize: each
sees a different count of the rows before it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRANSACTIONS = 200

WRITER = textwrap.dedent(
    """
    import os, sys, time
    import django
    django.setup()
    from django.db import connection, transaction

    who, count, start_at = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    while time.time() < start_at:  # both begin together
        time.sleep(0.001)
    for _ in range(count):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM work")
            seen = cursor.fetchone()[0]
            cursor.execute("INSERT INTO work (who, seen) VALUES (%s, %s)", [who, seen])
    """
)


def test_two_processes_writing_at_once_both_finish_every_transaction(tmp_path):
    database = tmp_path / "run.sqlite3"
    with sqlite3.connect(database) as setup:
        setup.execute("CREATE TABLE work (id INTEGER PRIMARY KEY, who TEXT, seen INTEGER)")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tesseract_web.settings",
        "DATABASE_URL": f"sqlite:///{database}",
        "REDIS_URL": "redis://127.0.0.1:1/0",  # read by settings, never used here
        "TESSERACT_VAR_DIR": str(tmp_path / "var"),
    }
    start_at = time.time() + 8  # both processes have set Django up by then
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, who, str(TRANSACTIONS), str(start_at)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("web", "worker")
    ]
    results = [w.communicate(timeout=300) for w in writers]
    for writer, (_, err) in zip(writers, results, strict=True):
        assert writer.returncode == 0, err[-2000:]

    with sqlite3.connect(database) as check:
        rows = check.execute("SELECT who, seen FROM work").fetchall()
        journal = check.execute("PRAGMA journal_mode").fetchone()[0]
    assert len(rows) == 2 * TRANSACTIONS
    assert sorted(seen for _, seen in rows) == list(range(2 * TRANSACTIONS))
    assert journal == "wal"
