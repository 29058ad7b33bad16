"""Acknowledgements in the outbox: one transaction, routed by the plugin's declaration, sent once."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from tests.notify.conftest import Receiver, incident, make_env
from watcher import cli
from watcher.notify import message
from watcher.notify.outbox import MIGRATIONS, Outbox
from watcher.notify.sink import StoreSink
from watcher.notify.targets import parse
from watcher.notify.worker import Settings, Worker
from watcher.store import Store

FAST = Settings(repeat=0, backoff=0.05, backoff_max=0.2)
#: Nothing listens here: the alertmanager target is only announced to, never reached.
AM = "alertmanager://127.0.0.1:9"


def record(state: Path, urls: list[str], n: int = 1) -> None:
    env, _, _ = make_env({})
    sink = StoreSink(state / "specwatch.db", [parse(u) for u in urls], FAST, env, exit_grace=0.0)
    for i in range(n):
        sink.incident(incident(i), "opened")
    sink.close()


def rows(state: Path, kind: str) -> list[tuple[str, str]]:
    db = sqlite3.connect(state / "specwatch.db")
    return [(str(label), str(st)) for label, st in
            db.execute("SELECT label, state FROM outbox WHERE kind = ? ORDER BY id", (kind,))]


def test_ack_queues_the_end_only_for_targets_that_want_it(receiver: Receiver, state: Path) -> None:
    """Acknowledging queues one 'acknowledged' row for alertmanager:// and none for json://, which hears nothing."""
    hook = f"json://127.0.0.1:{receiver.port}/a"
    record(state, [hook, AM])
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": hook})
    assert cli.run(["notify", "flush"], env) == 0
    assert len(receiver.bodies("/a")) == 1
    assert cli.run(["ack", "--all"], env) == 0
    assert [r[0].split("://")[0] for r in rows(state, "acknowledged")] == ["alertmanager"]
    assert "queued: alertmanager://127.0.0.1:9" in out.getvalue().decode()
    assert cli.run(["notify", "flush"], env) == 0
    assert len(receiver.bodies("/a")) == 1  # no "acknowledged" notice in the chat
    assert cli.run(["ack", "--all"], env) == 0
    assert len(rows(state, "acknowledged")) == 1  # a second ack changes nothing and queues nothing


def test_desktop_button_queues_the_end_too(state: Path) -> None:
    """The Acknowledge button (Worker.acknowledge) queues the alert end in the same way as `specwatch ack`."""
    record(state, [AM], n=2)
    key = incident(0).key
    w = Worker(state / "specwatch.db", [parse(AM)], FAST)
    assert w.acknowledge([key], "from the desktop") == [key]
    assert rows(state, "acknowledged") == [(rows(state, "opened")[0][0], "pending")]
    store = Store.open(state / "specwatch.db")
    assert store.get(key).status == "acknowledged"  # type: ignore[union-attr]
    assert store.get(incident(1).key).status == "open"  # type: ignore[union-attr]


def test_ack_cancels_pending_repeats_in_the_same_transaction(state: Path) -> None:
    """A repeat still queued when the incident is acknowledged is cancelled, the ack row queued instead."""
    record(state, [AM])
    store = Store.open(state / "specwatch.db")
    ob = Outbox(store)
    key = incident(0).key
    ob.enqueue([(parse(AM).id, AM)], key, 1, "repeat", "critical", time.time(), seq=1)
    done = ob.acknowledge(None, "", time.time())
    assert done.keys == [key] and len(done.rows) == 1
    assert rows(state, "repeat") == [(AM, "cancelled")]


def test_outbox_migrates_from_the_first_schema(tmp_path: Path) -> None:
    """A database written by the previous version keeps its rows and accepts 'acknowledged' messages."""
    path = tmp_path / "old.db"
    store = Store.open(path)
    conn = store.conn
    conn.execute("BEGIN")
    for stmt in MIGRATIONS[0].split(";"):
        if stmt.strip():
            conn.execute(stmt)
    conn.execute("INSERT INTO schema_versions VALUES ('outbox', 1)")
    conn.execute("INSERT INTO outbox (target, label, incident, generation, kind, severity, created, due) "
                 "VALUES ('t', 'json://x', 'k', 1, 'opened', 'critical', 1, 1)")
    conn.execute("COMMIT")
    ob = Outbox(store)
    assert ob.pending() == [(1, "json://x", "k", "opened", 0, "pending", 1.0, "")]
    assert ob.enqueue([("t", "json://x")], "k", 1, "acknowledged", "critical", 2.0) == 1


def test_acknowledged_message_text() -> None:
    """Should a target ask for acknowledgements, its text says so, with the note and without the ack command."""
    item = {**incident().as_dict(), "message": "acknowledged", "ack_note": "swapping the draft", "count": 1}
    title, body = message.render([item], lambda t: t)
    assert title.startswith("Acknowledged: Speculative decoding OFF")
    assert "Acknowledged: swapping the draft" in body and "specwatch ack" not in body
    assert "Lower --ctx-size-draft" not in body
    grouped, _ = message.render([item, {**item, "message": "opened", "id": "x"}], lambda t: t)
    assert grouped.startswith("specwatch: 1 open, 1 acknowledged speculative-decoding incidents")


def test_an_opening_message_claimed_by_a_sender_that_died_is_not_sent_after_the_ack(receiver: Receiver,
                                                                                    state: Path) -> None:
    """An opening message left `sending` by a killed sender when the incident is acknowledged: the worker that
    takes it over cancels it (acknowledged before it was sent) instead of telling the target of the failure."""
    import socket
    import subprocess

    hook = parse(f"json://127.0.0.1:{receiver.port}/a")
    record(state, [])
    store = Store.open(state / "specwatch.db")
    key = store.open_incidents()[0].key
    ob = Outbox(store)
    now = time.time()
    ob.enqueue([(hook.id, hook.label)], key, 1, "opened", "critical", now)
    dead = subprocess.Popen(["true"])
    dead.wait()
    assert len(ob.claim([hook.id], f"{socket.gethostname()}:{dead.pid}", now, 120)) == 1
    ob.acknowledge([key], "", now)
    store.close()
    Worker(state / "specwatch.db", [hook], FAST).run_once()
    assert receiver.bodies() == []
    assert rows(state, "opened") == [(hook.label, "cancelled")]
