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
