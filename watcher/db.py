"""The embedded SQLite database: safe for several specwatch processes at once, migrated per component.

Each component (incident store, outbox, file checkpoints) owns its tables and its migrations; the
``schema_versions`` table records how far each one has been migrated.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

#: Seconds a write waits for another process's write lock before it fails (and is retried or reported).
BUSY_TIMEOUT = 10.0

T = TypeVar("T")


class StoreError(Exception):
    """The database cannot be opened or used: one line naming the file and SQLite's (or the OS's) reason."""


def opened(path: Path, make: Callable[[sqlite3.Connection], T], timeout: float = BUSY_TIMEOUT) -> T:
    """``make(connection)`` (a component migrating its tables) over a new connection to ``path``.

    The connection is closed again when ``make`` fails; every failure (a garbage file, a directory where
    the database should be, a full disk, a lock held longer than ``timeout``, a schema too new) is a
    :class:`StoreError` naming the file.
    """
    try:
        conn = connect(path, timeout)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(describe(path, exc)) from exc
    try:
        return make(conn)
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        conn.close()
        raise StoreError(describe(path, exc)) from exc


def describe(path: Path, exc: BaseException) -> str:
    """``PATH: reason`` for a failure of the database at ``path``."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    where = Path(exc.filename) if isinstance(exc, OSError) and exc.filename else path
    if isinstance(exc, FileExistsError) and not where.is_dir():
        reason = "not a directory"  # mkdir's complaint about a file where the state directory should be
    return f"{where}: {reason}"


#: SQLite result codes that waiting may cure: another process's lock, a full disk, an I/O error.
_WAITABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR", "SQLITE_PROTOCOL")


def transient(exc: BaseException) -> bool:
    """Whether waiting may cure ``exc`` (a lock, a full disk, an I/O error), not a garbage file, a directory
    in the database's place, a read-only file or a bug."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    name = getattr(exc, "sqlite_errorname", None)  # Python 3.11+
    if name:
        return str(name).startswith(_WAITABLE)
    return any(word in str(exc) for word in ("locked", "busy", "full", "disk I/O"))


def connect(path: Path, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
    """Open (creating with mode 0600) the database in WAL mode with a busy timeout."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, "
                     "version INTEGER NOT NULL)")
    except BaseException:
        conn.close()  # a garbage file: the caller reports it, nothing stays open
        raise
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            Path(str(path) + suffix).chmod(0o600)
    return conn


def migrate(conn: sqlite3.Connection, component: str, migrations: Sequence[str]) -> int:
    """Apply the migrations of ``component`` not yet applied, each in one transaction; returns the version.

    ``migrations[i]`` is the SQL script taking the component from version ``i`` to ``i + 1``.
    Concurrent processes serialise on ``BEGIN IMMEDIATE``, so a migration runs once. A database already at
    this version is only read (WAL readers never wait for a writer): a process holding the write lock for
    a long time must not keep another from starting.
    """
    row = conn.execute("SELECT version FROM schema_versions WHERE component = ?", (component,)).fetchone()
    if row and row[0] == len(migrations):
        return len(migrations)
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
        rollback(conn)
        raise
    return len(migrations)


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: ``BEGIN IMMEDIATE`` (concurrent writers wait for each other instead of failing
    mid-way), committed at the end, rolled back on any error without hiding it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        # Inside the try: a COMMIT that fails (a full disk, a lock it could not upgrade) leaves the
        # transaction open, and the connection must not stay in it.
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so.

    A full disk (SQLITE_FULL) or an I/O error rolls the transaction back by itself; a ``ROLLBACK`` then
    fails with "no transaction is active", which would hide the error that matters.
    """
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
