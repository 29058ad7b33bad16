"""What a plugin remembers about an incident for one target, across processes: the desktop notifier keeps
the ids of the bubbles it showed here, so whichever process later acknowledges the incident can close them.

Its own table in the shared database (component ``plugin_notes``); every call opens a short connection, so
any thread of any process may use it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from watcher import db

COMPONENT = "plugin_notes"
MIGRATIONS = [
    """
    CREATE TABLE plugin_notes (
        target   TEXT NOT NULL,
        incident TEXT NOT NULL,
        note     TEXT NOT NULL,
        created  REAL NOT NULL,
        PRIMARY KEY (target, incident, note)
    )
    """,
]


class Notes:
    """The notes of one target."""

    def __init__(self, db_path: Path, target: str) -> None:
        self.db_path = db_path
        self.target = target

    def _connect(self) -> sqlite3.Connection:
        conn = db.connect(self.db_path)
        db.migrate(conn, COMPONENT, MIGRATIONS)
        return conn

    def add(self, incidents: Sequence[str], note: str) -> None:
        """Remember ``note`` for each incident."""
        conn = self._connect()
        try:
            conn.executemany("INSERT OR IGNORE INTO plugin_notes (target, incident, note, created) "
                             "VALUES (?, ?, ?, ?)", [(self.target, i, note, time.time()) for i in incidents])
        finally:
            conn.close()

    def take(self, incidents: Sequence[str]) -> list[str]:
        """The notes of these incidents, forgotten as they are returned (each is acted on once)."""
        if not incidents:
            return []
        conn = self._connect()
        marks = ",".join("?" * len(incidents))
        try:
            # One transaction: two processes acknowledging at once do not both act on the same note.
            with db.immediate(conn):
                rows = conn.execute(f"SELECT DISTINCT note FROM plugin_notes WHERE target = ? "  # noqa: S608
                                    f"AND incident IN ({marks}) ORDER BY created", (self.target, *incidents)).fetchall()
                conn.execute(f"DELETE FROM plugin_notes WHERE target = ? AND incident IN ({marks})",  # noqa: S608
                             (self.target, *incidents))
        finally:
            conn.close()
        return [str(r[0]) for r in rows]
