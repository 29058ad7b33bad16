"""Where each followed source got to: identity, byte offset and line count, kept in the shared SQLite DB.

A checkpoint is written only after its lines were analysed and the incidents they raised were handed
to the sinks, so a restart (even after ``kill -9``) resumes at a line boundary that was fully processed:
no line is missed, and a line processed twice can only re-raise an incident the store already holds
under the same ``Incident.key``. The line count is saved with the offset, so the lines read again keep
their numbers: the store sees the same occurrence (``watcher.store.Occurrence``), which neither reopens
an acknowledged incident nor counts as a repeat.

Line numbers belong to a followed path, not to one file: after a rotation the new file's lines are numbered on
from the old one's, so a failure in the new file never takes the number of one already counted. Which number a
path's newest file starts from is written at once when it is opened (``file_starts``), ahead of the checkpoint
(which waits for the store): a process started after a ``kill -9`` numbers that file as the killed one did.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from watcher import db

COMPONENT = "checkpoints"
MIGRATIONS = [
    """
    CREATE TABLE checkpoints (
        stream    TEXT PRIMARY KEY,
        dev       INTEGER NOT NULL DEFAULT 0,
        ino       INTEGER NOT NULL DEFAULT 0,
        head_len  INTEGER NOT NULL DEFAULT 0,
        head_hash TEXT NOT NULL DEFAULT '',
        offset    INTEGER NOT NULL DEFAULT 0,
        lines     INTEGER NOT NULL DEFAULT 0,
        cursor    TEXT,
        updated   REAL NOT NULL
    )
    """,
    # Runs seen up to the checkpoint, so a restarted watcher numbers the next run where the last one stopped.
    "ALTER TABLE checkpoints ADD COLUMN runs INTEGER NOT NULL DEFAULT 0",
    # Where each path's newest file, read from its start, began numbering its lines.
    """
    CREATE TABLE file_starts (
        stream    TEXT PRIMARY KEY,
        dev       INTEGER NOT NULL,
        ino       INTEGER NOT NULL,
        head_len  INTEGER NOT NULL,
        head_hash TEXT NOT NULL,
        lines     INTEGER NOT NULL,
        updated   REAL NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class Identity:
    """Which file this is: inode numbers are reused, so the hash of its first bytes goes with them."""

    dev: int
    ino: int
    head_len: int
    head_hash: str


@dataclass(frozen=True)
class Checkpoint:
    """How far one stream (a followed path, a journal unit, a watched root) was processed."""

    stream: str
    identity: Identity
    offset: int
    lines: int
    cursor: str | None = None
    updated: float = 0.0
    runs: int = 0


class Checkpoints:
    """The ``checkpoints`` table: one row per stream name."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        db.migrate(conn, COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, path: Path) -> Checkpoints:
        """Open (creating and migrating) the checkpoints of the database at ``path``."""
        return cls(db.connect(path))

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def get(self, stream: str) -> Checkpoint | None:
        """The checkpoint of ``stream``, if it was ever seen."""
        row = self.conn.execute(
            "SELECT stream, dev, ino, head_len, head_hash, offset, lines, cursor, updated, runs "
            "FROM checkpoints WHERE stream = ?", (stream,)).fetchone()
        return _row(row) if row else None

    def all(self, prefix: str = "") -> list[Checkpoint]:
        """Every checkpoint whose stream name starts with ``prefix``."""
        rows = self.conn.execute(
            "SELECT stream, dev, ino, head_len, head_hash, offset, lines, cursor, updated, runs "
            "FROM checkpoints WHERE substr(stream, 1, ?) = ? ORDER BY stream", (len(prefix), prefix)).fetchall()
        return [_row(r) for r in rows]

    def save(self, checkpoints: Iterable[Checkpoint], now: float | None = None) -> None:
        """Write several checkpoints in one transaction (all or none survive a crash)."""
        stamp = time.time() if now is None else now
        rows = [(c.stream, c.identity.dev, c.identity.ino, c.identity.head_len, c.identity.head_hash,
                 c.offset, c.lines, c.cursor, stamp, c.runs) for c in checkpoints]
        if not rows:
            return
        with db.immediate(self.conn):
            self.conn.executemany(
                "INSERT INTO checkpoints (stream, dev, ino, head_len, head_hash, offset, lines, cursor, updated, runs) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stream) DO UPDATE SET dev = excluded.dev, "
                "ino = excluded.ino, head_len = excluded.head_len, head_hash = excluded.head_hash, "
                "offset = excluded.offset, lines = excluded.lines, cursor = excluded.cursor, "
                "updated = excluded.updated, runs = excluded.runs", rows)

    def file_start(self, stream: str) -> tuple[Identity, int] | None:
        """The newest file of ``stream`` read from its start, and the line count its numbering began after."""
        row = self.conn.execute("SELECT dev, ino, head_len, head_hash, lines FROM file_starts WHERE stream = ?",
                                (stream,)).fetchone()
        return (Identity(int(row[0]), int(row[1]), int(row[2]), str(row[3])), int(row[4])) if row else None

    def save_file_starts(self, starts: Iterable[tuple[str, Identity, int]], now: float | None = None,
                         wait: float = db.BUSY_TIMEOUT) -> None:
        """Record (stream, file identity, lines before it) in one transaction, waiting at most ``wait`` seconds
        for another process's write lock (``sqlite3.OperationalError`` then: nothing was written)."""
        stamp = time.time() if now is None else now
        rows = [(stream, i.dev, i.ino, i.head_len, i.head_hash, lines, stamp) for stream, i, lines in starts]
        if not rows:
            return
        self.conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
        try:
            with db.immediate(self.conn):
                self.conn.executemany(
                    "INSERT INTO file_starts (stream, dev, ino, head_len, head_hash, lines, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stream) DO UPDATE SET dev = excluded.dev, "
                    "ino = excluded.ino, head_len = excluded.head_len, head_hash = excluded.head_hash, "
                    "lines = excluded.lines, updated = excluded.updated", rows)
        finally:
            self.conn.execute(f"PRAGMA busy_timeout={int(db.BUSY_TIMEOUT * 1000)}")

    def forget(self, streams: Iterable[str]) -> None:
        """Drop the checkpoints of streams that are gone for good."""
        self.conn.executemany("DELETE FROM checkpoints WHERE stream = ?", [(s,) for s in streams])


def _row(r: tuple[object, ...]) -> Checkpoint:
    stream, dev, ino, head_len, head_hash, offset, lines, cursor, updated, runs = r
    return Checkpoint(str(stream), Identity(int(dev), int(ino), int(head_len), str(head_hash)),  # type: ignore[call-overload]
                      int(offset), int(lines), None if cursor is None else str(cursor),  # type: ignore[call-overload]
                      float(updated), int(runs))  # type: ignore[arg-type,call-overload]
