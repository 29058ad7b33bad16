"""Fault suite, delivery: a database locked while a message is in flight, a sender killed with -9 in the middle
of a slow send, the worker's database used from two threads. Real SQLite, a real HTTP receiver on 127.0.0.1,
real processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, wait_for
from watcher.incidents import Evidence, Incident
from watcher.notify.outbox import Outbox
from watcher.notify.targets import Target
from watcher.notify.worker import IDEMPOTENCY_HEADER, Settings, Worker
from watcher.store import Store

pytestmark = pytest.mark.faults


class Hook:
    """A webhook on 127.0.0.1 that records each POST's headers; ``on_post`` runs before it answers (to hold
    the answer, or to take a database lock while the sender waits for it)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.on_post = lambda: None
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with hook.lock:
                    hook.posts.append(dict(self.headers))
                hook.on_post()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        with self.lock:
            return [p.get(IDEMPOTENCY_HEADER, "") for p in self.posts]


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.server.shutdown()
    h.server.server_close()


def _queue(db: Path, target: Target, n: int = 0, now: float | None = None) -> str:
    """Record an incident and queue its ``opened`` message for ``target`` (what a watcher does)."""
    inc = Incident(kind="draft_context_failed", severity="critical", source=f"llama-server-{n}", run=1,
                   model="/m/big.gguf", draft_model=f"/m/draft-{n}.gguf", slots=[0], device="CUDA1",
                   reason="failed to allocate", server_state="serving_without_speculation")
    inc.evidence = [Evidence(10, "cudaMalloc failed: out of memory")]
    store = Store.open(db)
    try:
        now = time.time() if now is None else now
        _, row, _ = Outbox(store).record(inc.as_dict(), "opened", now, lambda r, k: [(target.id, target.label)])
        assert row is not None
        return row.key
    finally:
        store.close()


def _states(db: Path) -> list[str]:
    conn = sqlite3.connect(str(db))
    try:
        return [s for (s,) in conn.execute("SELECT state FROM outbox ORDER BY id")]
    finally:
        conn.close()


FAST = Settings(repeat=0, backoff=0.0, backoff_max=0.0, group_window=0.0, poll=0.02, busy_timeout=0.2)


def test_a_delivery_whose_outcome_the_database_refuses_is_recorded_later_and_not_sent_again(
        tmp_path: Path, hook: Hook) -> None:
    """The database is locked while the target answers: the row is marked sent once the lock is gone, and
    the message is not sent a second time."""
    db = tmp_path / "specwatch.db"
    target = Target(hook.url)
    _queue(db, target)
    holder = sqlite3.connect(str(db), isolation_level=None, check_same_thread=False)
    hook.on_post = lambda: holder.execute("BEGIN IMMEDIATE")
    logs: list[str] = []
    worker = Worker(db, [target], FAST, log=logs.append)
    try:
        assert [r.ok for r in worker.run_once()] == [True]
        assert _states(db) == ["sending"]
        assert worker.run_once() == []  # still locked: nothing claimed, nothing sent
        holder.execute("ROLLBACK")
        hook.on_post = lambda: None
        worker.run_once()
        assert _states(db) == ["sent"]
        assert len(hook.posts) == 1
        assert worker.delivered == 1
        assert len(logs) == 1 and "cannot record a delivery yet (database is locked)" in logs[0]
    finally:
        worker.stop()
        holder.close()


def test_a_process_takes_back_its_own_expired_lease(tmp_path: Path, hook: Hook) -> None:
    """A row this process leased and lost track of (left ``sending``) is sent once its lease expires."""
    db = tmp_path / "specwatch.db"
    target = Target(hook.url)
    _queue(db, target, now=1000.0)
    clock = [1000.0]
    worker = Worker(db, [target], FAST, clock=lambda: clock[0])
    store = Store.open(db)
    try:
        # Claimed by this process, whose delivery then never came back to it.
        assert len(Outbox(store).claim([target.id], worker.owner, 1000.0, FAST.lease)) == 1
        assert worker.run_once() == []  # its lease still runs: it may be in flight
        clock[0] += FAST.lease + 1
        assert [r.ok for r in worker.run_once()] == [True]
        assert _states(db) == ["sent"] and len(hook.posts) == 1
    finally:
        store.close()
        worker.stop()


def test_a_sender_killed_during_a_slow_send_sends_again_with_the_same_message_id(tmp_path: Path,
                                                                                 hook: Hook) -> None:
    """kill -9 while the target is answering: the next process sends the message again (at least once), with
    the same Idempotency-Key, so the receiver can drop the duplicate."""
    db = tmp_path / "specwatch.db"
    target = Target(hook.url)
    _queue(db, target)
    answered = threading.Event()
    hook.on_post = lambda: answered.wait(30)  # a slow target: the answer comes after the kill
    env = {**os.environ, "SPECWATCH_STATE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    flush = [sys.executable, "-m", "watcher", "notify", "flush", "--notify", hook.url]
    first = subprocess.Popen(flush, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: hook.posts or first.poll() is not None, "the first send")
        assert hook.posts, first.communicate()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        answered.set()
    assert _states(db) == ["sending"]
    again = subprocess.run(flush, env=env, capture_output=True, timeout=120, check=False)
    assert again.stdout == b"delivered 1 message rows, 0 still queued\n", again.stderr
    keys = hook.keys()
    assert len(keys) == 2
    assert keys[0] and keys[0] == keys[1]
    assert _states(db) == ["sent"]


def test_the_message_id_is_per_message(tmp_path: Path, hook: Hook) -> None:
    """Different messages (another incident, a repeat) carry different ids; a URL's own header is kept."""
    db = tmp_path / "specwatch.db"
    target = Target(hook.url)
    worker = Worker(db, [target], FAST)
    try:
        _queue(db, target, 0)
        worker.run_once()
        _queue(db, target, 1)
        worker.run_once()
        own = Target(hook.url + "?+Idempotency-Key=mine")
        _queue(db, own, 2)
        another = Worker(db, [own], FAST)
        try:
            another.run_once()
        finally:
            another.stop()
    finally:
        worker.stop()
    keys = hook.keys()
    assert len(keys) == 3 and keys[0] != keys[1] and keys[2] == "mine"
    assert all(len(k) == 32 for k in keys[:2])


def test_the_worker_database_is_safe_from_two_threads(tmp_path: Path, hook: Hook) -> None:
    """The worker's own thread and another thread (``run_once``, ``pending_count``) deliver the same outbox at
    once without a transaction error, and every message goes out once."""
    db = tmp_path / "specwatch.db"
    target = Target(hook.url)
    logs: list[str] = []
    # The default lock wait: two connections of one busy process may wait on each other for a while.
    worker = Worker(db, [target], Settings(repeat=0, backoff=0.0, group_window=0.0, poll=0.02), log=logs.append)
    worker.start()
    errors: list[BaseException] = []
    try:
        for n in range(150):
            _queue(db, target, n)  # another connection commits: the worker's thread wakes
            try:
                worker.run_once()
                worker.pending_count()
            except sqlite3.Error as exc:
                errors.append(exc)
        wait_for(lambda: worker.pending_count() == 0, "the outbox to drain")
    finally:
        worker.stop()
    assert errors == [] and logs == []
    assert _states(db) == ["sent"] * 150
    assert len(set(hook.keys())) == len(hook.keys())


def test_a_pass_over_slow_targets_renews_the_lease_before_each_send(tmp_path: Path, hook: Hook) -> None:
    """One pass whose first target answers after the lease ran out: the second target's message, taken over by
    another sender meanwhile, is sent by that sender only, not a second time by the first."""
    db = tmp_path / "specwatch.db"
    other = Hook()
    slow, second = Target(hook.url), Target(other.url)
    now = [time.time()]
    first = Worker(db, [slow, second], FAST, clock=lambda: now[0])
    elsewhere = Worker(db, [second], FAST, clock=lambda: now[0])
    elsewhere.owner = "another-host:1"  # another process, alive: it may take over only an expired lease

    def slow_answer() -> None:
        now[0] += FAST.lease + 1  # this target took longer than the lease
        elsewhere.run_once()

    hook.on_post = slow_answer
    _queue(db, slow, 0, now[0])
    _queue(db, second, 1, now[0])
    try:
        first.run_once()
    finally:
        first.close()
        elsewhere.close()
        other.server.shutdown()
        other.server.server_close()
    assert len(hook.posts) == 1
    assert len(other.posts) == 1
    assert _states(db) == ["sent", "sent"]
