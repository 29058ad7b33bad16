"""The embedded database: private file, per-component migrations applied once, a newer schema refused."""

from __future__ import annotations

import stat

import pytest

from watcher import db

STEPS = ["CREATE TABLE t (a INTEGER)", "ALTER TABLE t ADD COLUMN b TEXT"]


def test_database_file_is_private(tmp_path) -> None:
    """The file holds incident details and target URLs: mode 0600."""
    db.connect(tmp_path / "s.db").close()
    assert stat.S_IMODE((tmp_path / "s.db").stat().st_mode) == 0o600


def test_migrations_apply_once_per_component(tmp_path) -> None:
    """A second migrate is a no-op; another component keeps its own version."""
    conn = db.connect(tmp_path / "s.db")
    assert db.migrate(conn, "one", STEPS) == 2
    assert db.migrate(conn, "one", STEPS) == 2
    assert db.migrate(conn, "two", ["CREATE TABLE u (c INTEGER)"]) == 1
    cols = [r[1] for r in conn.execute("PRAGMA table_info(t)")]
    assert cols == ["a", "b"]


def test_newer_schema_is_refused_with_a_whole_message(tmp_path) -> None:
    """A database written by a newer specwatch says so, names the component and both versions."""
    conn = db.connect(tmp_path / "s.db")
    db.migrate(conn, "store", STEPS)
    with pytest.raises(RuntimeError) as err:
        db.migrate(conn, "store", STEPS[:1])
    assert str(err.value) == "database store schema v2 is newer than this specwatch (v1); upgrade specwatch"
    assert conn.execute("SELECT version FROM schema_versions WHERE component = 'store'").fetchone()[0] == 2


def test_a_write_refused_for_a_full_disk_raises_its_own_error_and_leaves_no_transaction(tmp_path) -> None:
    """A full disk rolls the transaction back by itself: the caller sees "full", not "no transaction is active",
    and the connection is usable again (the checkpoints and the load book wrote their own ROLLBACK)."""
    import sqlite3

    import pytest

    from watcher import db

    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    conn.execute("CREATE TABLE t (b BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(sqlite3.OperationalError, match="full"), db.immediate(conn):
        conn.execute("INSERT INTO t VALUES (zeroblob(1000000))")
    assert not conn.in_transaction
    with db.immediate(conn):
        conn.execute("INSERT INTO t VALUES (x'00')")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1


def test_checkpoints_refused_for_a_full_disk_say_so(tmp_path) -> None:
    """Checkpoints that a full disk refuses raise SQLite's own "full" error (a ROLLBACK of their own hid it behind
    "no transaction is active"), and a later save on the same connection works."""
    import sqlite3

    import pytest

    from watcher.checkpoints import Checkpoint, Checkpoints, Identity

    store = Checkpoints.open(tmp_path / "state.db")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages}")
    many = [Checkpoint(f"stream-{i}-" + "x" * 500, Identity(1, i, 0, ""), i, i) for i in range(200)]
    with pytest.raises(sqlite3.OperationalError, match="full"):
        store.save(many)
    assert not store.conn.in_transaction
    store.conn.execute(f"PRAGMA max_page_count = {pages + 1000}")
    store.save(many[:1])
