"""The embedded SQLite database: safe for several specwatch processes at once, migrated per component.

Each component (incident store, outbox, file checkpoints) owns its tables and its migrations; the
``schema_versions`` table records how far each one has been migrated.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path


def connect(path: Path, timeout: float = 10.0) -> sqlite3.Connection:
    """Open (creating with mode 0600) the database in WAL mode with a busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(str(path) + suffix).chmod(0o600)
    return conn


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply the migrations of ``component`` not yet applied, each in one transaction; returns the version.

    ``migrations[i]`` is the SQL script taking the component from version ``i`` to ``i + 1``.
    Concurrent processes serialise on ``BEGIN IMMEDIATE``, so a migration runs once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
        current = row[0] if row else 0
        if current > len(migrations):
            # Rolled back by the handler below, then re-raised.
            raise RuntimeError(  # noqa: TRY301
                f"database {component} schema v{current} is newer than this specwatch (v{len(migrations)}); "
                "upgrade specwatch")
        for version in range(current, len(migrations)):
            for statement in _statements(migrations[version]):
                conn.execute(statement)
        conn.execute("INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                     "ON CONFLICT(component) DO UPDATE SET version = excluded.version", (component, len(migrations)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return len(migrations)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
