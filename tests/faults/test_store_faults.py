"""Fault suite, the incident store: a database another process holds locked, a full disk, a store that cannot
be opened. Real SQLite files, real processes; each fault is held until the behaviour under it is seen."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SEED, cli, wait_for
from watcher.checkpoints import Checkpoints
from watcher.environment import Environment
from watcher.incidents import Evidence, Incident
from watcher.notify.outbox import Outbox
from watcher.notify.sink import StoreSink
from watcher.notify.targets import Target
from watcher.notify.worker import Settings
from watcher.store import Store

pytestmark = pytest.mark.faults


def _incident(n: int = 0, slots: list[int] | None = None, text: str = "cudaMalloc failed: out of memory") -> Incident:
    inc = Incident(kind="draft_context_failed", severity="critical", source=f"llama-server-{n}", run=1,
                   model="/m/big.gguf", draft_model=f"/m/draft-{n}.gguf", slots=slots or [0], device="CUDA1",
                   reason="failed to allocate", server_state="serving_without_speculation")
    inc.evidence = [Evidence(10 + i, text) for i in range(8)]
    return inc


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A migrated store (incidents and outbox), as any earlier specwatch run leaves it."""
    path = tmp_path / "state" / "specwatch.db"
    store = Store.open(path)
    Outbox(store)
    store.close()
    return path


@pytest.fixture
def lock(db: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection holding the write lock (as a slow ``specwatch ack`` or a backup would)."""
    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    yield holder
    if holder.in_transaction:
        holder.execute("ROLLBACK")
    holder.close()


def _sink(db: Path, **kw: object) -> tuple[StoreSink, io.StringIO]:
    err = io.StringIO()
    env = Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=err, environ={})
    return StoreSink(db, [], Settings(), env, **kw), err  # type: ignore[arg-type]


def test_a_migrated_store_opens_while_another_process_holds_the_write_lock(db: Path,
                                                                           lock: sqlite3.Connection) -> None:
    """Opening a store that needs no migration only reads, so a held write lock does not make it fail."""
    store = Store.open(db, timeout=0.1)
    try:
        assert store.open_incidents() == []
    finally:
        store.close()


def test_an_incident_refused_by_a_locked_database_is_kept_until_stored(db: Path, lock: sqlite3.Connection) -> None:
    """A change the database refuses (locked) is retried until stored, saying so once, not per retry."""
    sink, err = _sink(db)
    inc = _incident()
    sink.incident(inc, "opened")
    wait_for(lambda: sink.refused >= 3, "three refused attempts")
    lock.execute("ROLLBACK")
    sink.close()
    assert Store.open(db).get(inc.key) is not None
    assert err.getvalue().count("cannot record incidents yet (database is locked); keeping them and retrying") == 1
    assert err.getvalue().count("incidents recorded again; none lost") == 1


def test_an_incident_refused_by_a_full_disk_is_kept_until_stored(db: Path) -> None:
    """SQLITE_FULL (the database may not grow) keeps the change and stores it once there is room again."""
    full = Store.open(db)
    # The database may not grow by a page: what SQLite reports on a full disk (SQLITE_FULL).
    full.conn.execute(f"PRAGMA max_page_count = {full.conn.execute('PRAGMA page_count').fetchone()[0]}")
    sink, err = _sink(db, opener=lambda: full)
    inc = _incident(text="x" * 3000)  # 8 evidence lines of 3000 bytes need new pages
    sink.incident(inc, "opened")
    wait_for(lambda: sink.refused >= 2, "two refused attempts")
    full.conn.execute("PRAGMA max_page_count = 1073741823")  # room again
    sink.close()
    stored = Store.open(db).get(inc.key)
    assert stored is not None and stored.status == "open"
    assert err.getvalue().count("database or disk is full") == 1


def test_changes_waiting_for_the_database_stay_bounded_and_the_last_state_is_stored(
        db: Path, lock: sqlite3.Connection) -> None:
    """Thousands of updates queued while the database is locked wait as one change per incident (besides the
    one being written); the last snapshot of each is what gets stored."""
    sink, _ = _sink(db)
    incs = [_incident(n) for n in range(3)]
    for inc in incs:
        sink.incident(inc, "opened")
    for i in range(2000):
        for inc in incs:
            inc.slots = [i % 4, 4 + i % 3]
            sink.incident(inc, "updated")
    wait_for(lambda: sink.refused >= 2 and sink.queue.empty(), "the queue taken in while the lock is held")
    assert len(sink.backlog) <= len(incs) + 1  # one per incident, and the change being written
    lock.execute("ROLLBACK")
    sink.close()
    store = Store.open(db)
    for inc in incs:
        row = store.get(inc.key)
        assert row is not None and row.slots == [1999 % 4, 4 + 1999 % 3] and row.count == 1


def _specwatch(*args: str, state: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SPECWATCH_STATE_DIR": str(state), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "watcher", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def test_a_pipe_passes_output_and_shows_banners_while_the_database_is_locked(db: Path,
                                                                              lock: sqlite3.Connection) -> None:
    """With the write lock held by another process from the start, the pipe copies the server's output and
    prints its banner at once, and stores the incident once the lock is released."""
    log = SEED.read_bytes()
    proc = _specwatch("--no-summary", state=db.parent)
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(log)
    proc.stdin.flush()
    seen = b""
    while b"SPECWATCH CRITICAL" not in seen and b"not watching" not in seen:
        line = proc.stderr.readline()
        assert line, f"specwatch ended before any banner: {seen.decode()}"
        seen += line
    assert b"SPECWATCH CRITICAL" in seen
    assert b"not watching" not in seen
    lock.execute("ROLLBACK")
    out, _ = proc.communicate(timeout=60)
    assert out == log
    assert proc.returncode == 0
    store = Store.open(db)
    assert len(store.open_incidents()) == 2
    store.close()


def test_watch_starts_and_warns_while_the_database_is_locked(db: Path, tmp_path: Path) -> None:
    """``watch`` started while another process holds the write lock follows its file and prints the banner at
    once (its store and checkpoints need no migration, so no write lock), then stops cleanly on SIGTERM."""
    Checkpoints.open(db).close()
    holder = sqlite3.connect(str(db), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        log = tmp_path / "server.log"
        log.write_bytes(SEED.read_bytes())
        proc = _specwatch("watch", "--from-start", str(log), state=db.parent)
        assert proc.stderr is not None
        seen = b""
        while b"SPECWATCH CRITICAL" not in seen:
            line = proc.stderr.readline()
            assert line, f"watch ended before any banner: {seen.decode()}"
            seen += line
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    proc.terminate()
    _, rest = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest.decode()
    assert b"Traceback" not in seen + rest
    store = Store.open(db)
    assert len(store.open_incidents()) == 2
    store.close()


@pytest.fixture(params=["garbage file", "directory in its place", "state dir is a file"])
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A state directory whose store cannot be opened, whoever runs the test (root included)."""
    state = tmp_path / "state"
    if request.param == "state dir is a file":
        state.write_text("not a directory\n")
        return state
    state.mkdir()
    if request.param == "garbage file":
        (state / "specwatch.db").write_bytes(b"this is not a database, it is a text file\n" * 200)
    else:
        (state / "specwatch.db").mkdir()
    return state


@pytest.mark.parametrize("argv", [
    ["status"], ["history"], ["ack", "--all"], ["notify", "list", "--notify", "json://127.0.0.1:9/"],
    ["notify", "flush", "--notify", "json://127.0.0.1:9/"], ["scan", "--notify", "json://127.0.0.1:9/", str(SEED)],
    ["watch", str(SEED)],
], ids=["status", "history", "ack", "notify list", "notify flush", "scan --notify", "watch"])
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_2(broken: Path, argv: list[str]) -> None:
    """Every command that needs the store says in one line which file failed and why, and exits 2."""
    res = cli(*argv, "--state-dir", str(broken))
    assert res.status == 2
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("specwatch: incident store ")
    assert str(broken) in lines[0]
    assert "Traceback" not in res.stderr


def test_a_pipe_whose_store_cannot_be_opened_still_shows_banners(broken: Path) -> None:
    """The banners need no store: a pipe says once that incidents are not recorded, and warns as usual."""
    log = SEED.read_bytes()
    res = cli("--no-summary", "--state-dir", str(broken), stdin=log)
    assert res.status == 0
    assert res.stdout == log
    assert "SPECWATCH CRITICAL" in res.stderr
    assert res.stderr.count("specwatch: incidents are not recorded or notified: incident store ") == 1
    assert "Traceback" not in res.stderr


def test_an_incident_opened_and_resolved_while_the_backlog_is_full_is_still_recorded(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the backlog's bound, a failure that opens and resolves while the database is locked is still
    stored, opened then resolved (merging keeps a change's opening), and an incident that resolves and
    fails again meanwhile ends open, not resolved."""
    monkeypatch.setattr("watcher.notify.sink.BACKLOG", 3)
    sink, _ = _sink(db)
    stored = _incident(100)
    sink.incident(stored, "opened")
    reader = Store.open(db)
    wait_for(lambda: reader.get(stored.key) is not None, "the first incident stored")
    reader.close()
    lock = sqlite3.connect(str(db), isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    for n in range(4):  # fill the backlog past its bound with other incidents
        sink.incident(_incident(n), "opened")
    flapping = _incident(200)
    sink.incident(flapping, "opened")
    flapping.status = "resolved"
    sink.incident(flapping, "resolved")
    stored.status = "resolved"  # the stored incident resolves, then fails again in this process's stream
    sink.incident(stored, "resolved")
    stored.status = "open"
    sink.incident(stored, "updated")
    wait_for(lambda: sink.refused >= 2 and sink.queue.empty(), "the queue taken in while the lock is held")
    lock.execute("ROLLBACK")
    lock.close()
    sink.close()
    store = Store.open(db)
    row = store.get(flapping.key)
    assert row is not None and row.status == "resolved"
    assert [what for _at, key, what, _n, _t in reversed(store.history()) if key == flapping.key] == \
        ["opened", "resolved"]
    again = store.get(stored.key)
    assert again is not None and again.status == "open"


def test_a_pipe_ending_while_the_store_is_still_locked_at_open_waits_for_it(db: Path) -> None:
    """A pipe whose recorder could not yet open the outbox (its targets' announcement refused by a lock) does
    not give up at the end of input: it waits, as for any change, and stores the incident once the lock goes."""
    earlier = _incident(1)
    store = Store.open(db)
    store.record(earlier.as_dict(), "opened", 1.0)  # open: the pipe's start announces it to its target
    store.close()
    holder = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    err = io.StringIO()
    env = Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=err, environ={})
    target = Target("json://127.0.0.1:9/hook")
    sink = StoreSink(db, [target], Settings(), env, open_now=False, exit_grace=0.0)  # type: ignore[arg-type]
    inc = _incident(2)
    sink.incident(inc, "opened")
    wait_for(lambda: sink.refused >= 1, "the announcement refused by the lock")

    def release() -> None:
        # Released once the recorder was refused twice after the end of input (so at least once in an attempt
        # begun after it), or once it gave up.
        wait_for(lambda: sink._closing, "the end of input taken in")
        refused = sink.refused
        wait_for(lambda: sink.refused >= refused + 2 or not sink.recorder.is_alive(), "two more refusals")
        holder.execute("ROLLBACK")

    releaser = threading.Thread(target=release)
    releaser.start()
    try:
        sink.close()
    finally:
        releaser.join()
        holder.close()
    assert Store.open(db).get(inc.key) is not None, err.getvalue()
    assert "not recorded" not in err.getvalue()


def test_at_exit_a_store_locked_past_the_wait_is_said_with_the_count_of_changes_left(
        db: Path, lock: sqlite3.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database still locked when the exit's wait runs out: the process says how many changes it could not
    record, naming the file, instead of waiting for ever."""
    monkeypatch.setattr("watcher.notify.sink.CLOSE_WAIT", 0.5)
    sink, err = _sink(db)
    for n in range(2):
        sink.incident(_incident(n), "opened")
    wait_for(lambda: sink.refused >= 1 and sink.queue.empty(), "the changes refused by the lock")
    sink.close()
    assert f"2 incident changes could not be recorded: the incident store {db} still refuses writes" in err.getvalue()
    # The recorder is still retrying: let it finish here, not behind a later test's back.
    lock.execute("ROLLBACK")
    sink.recorder.join(timeout=30)
    assert not sink.recorder.is_alive()
    store = Store.open(db)
    assert len(store.open_incidents()) == 2
    store.close()
