"""Messages of one generation never act on the next; recording and queueing commit together; repeats
never outlive an acknowledgement; re-reading the same lines does not reopen an acknowledged incident."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli, wait_for
from tests.notify.conftest import Receiver, incident, make_env
from watcher.incidents import Incident
from watcher.notify import plugins
from watcher.notify.outbox import Outbox
from watcher.notify.sink import StoreSink
from watcher.notify.targets import parse
from watcher.notify.worker import Settings, Worker
from watcher.store import Store

FAST = Settings(repeat=0, backoff=0.05, backoff_max=0.2)
ROOT = Path(__file__).resolve().parents[2]
RANGE_CHECK = ROOT / "samples" / "public" / "turboquant-209-draft-load-range-check-exit.log"


def am_url(receiver: Receiver) -> str:
    """alertmanager:// in front of the fake receiver: it records the v2 alerts posted."""
    return f"alertmanager://127.0.0.1:{receiver.port}"


def record(state: Path, url: str, inc: Incident, change: str = "opened") -> None:
    """One process recording one incident change (its own sink, so its own occurrence identity)."""
    env, _, _ = make_env({})
    sink = StoreSink(state / "specwatch.db", [parse(url)], FAST, env, exit_grace=0.0)
    sink.incident(inc, change)
    sink.close()


def posted(receiver: Receiver, key: str) -> list[dict[str, Any]]:
    """Every alert posted for incident ``key``, in order."""
    return [a for body in receiver.bodies("/api/v2/alerts") for a in body
            if a["annotations"].get("specwatch_id") == key]


def ends(alert: dict[str, Any]) -> float:
    return datetime.fromisoformat(alert["endsAt"].replace("Z", "+00:00")).timestamp()


def later() -> Incident:
    """The same failure on the server's next load (a later run, further down the log)."""
    inc = incident()
    inc.run, inc.first_line = 2, 500
    return inc


def rows(state: Path) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(state / "specwatch.db")
    return [(int(g), str(k), str(s)) for g, k, s in
            db.execute("SELECT generation, kind, state FROM outbox ORDER BY id")]


def test_stale_ack_does_not_end_the_reopened_alert(receiver: Receiver, state: Path) -> None:
    """An ack queued while Alertmanager was down and retried after the incident reopened never ends the new alert."""
    url = am_url(receiver)
    record(state, url, incident())
    now = [time.time()]
    w = Worker(state / "specwatch.db", [parse(url)], Settings(repeat=0, backoff=30), clock=lambda: now[0])
    w.run_once()
    key = incident().key
    assert ends(posted(receiver, key)[-1]) > time.time() + 3600  # firing
    receiver.down()
    store = Store.open(state / "specwatch.db")
    assert Outbox(store).acknowledge(None, "", now[0]).keys == [key]
    assert [r.ok for r in w.run_once()] == [False]  # the ack waits 30 s for its retry
    receiver.up()
    record(state, url, later())  # the server failed again: generation 2
    assert store.get(key).generation == 2  # type: ignore[union-attr]
    w.run_once()
    now[0] += 60  # the generation-1 ack is due again
    w.run_once()
    assert ends(posted(receiver, key)[-1]) > time.time() + 3600  # still firing
    assert store.get(key).status == "open"  # type: ignore[union-attr]
    assert (1, "acknowledged", "cancelled") in rows(state)


def test_stale_row_claimed_before_the_reopen_is_cancelled(receiver: Receiver, state: Path) -> None:
    """A generation-1 ack a worker had already claimed when the incident reopened is cancelled, not posted."""
    url = am_url(receiver)
    record(state, url, incident())
    w = Worker(state / "specwatch.db", [parse(url)], FAST)
    w.run_once()
    store = Store.open(state / "specwatch.db")
    ob = Outbox(store)
    ob.acknowledge(None, "", time.time())
    claimed = ob.claim([parse(url).id], w.owner, time.time(), 60)
    assert [r.kind for r in claimed] == ["acknowledged"]
    store.record(later().as_dict(), "opened", time.time())  # reopened meanwhile (generation 2)
    before = len(receiver.bodies())
    res = w._deliver(store, ob, parse(url), claimed)
    assert res.ok and len(receiver.bodies()) == before
    assert (1, "acknowledged", "cancelled") in rows(state)


def test_repeat_claimed_before_the_ack_is_not_posted(receiver: Receiver, state: Path) -> None:
    """A repeat claimed while the incident was open, then acknowledged before it went out, is cancelled."""
    url = am_url(receiver)
    record(state, url, incident())
    now = [time.time()]
    w = Worker(state / "specwatch.db", [parse(url)], Settings(repeat=60), clock=lambda: now[0])
    w.run_once()
    store = Store.open(state / "specwatch.db")
    ob = Outbox(store)
    now[0] += 61
    ob.schedule_repeats([(parse(url).id, url, None)], 60, now[0])
    claimed = ob.claim([parse(url).id], w.owner, now[0], 60)
    assert [r.kind for r in claimed] == ["repeat"]
    ob.acknowledge(None, "", now[0])  # commits while the repeat is being rendered
    before = len(receiver.bodies())
    w._deliver(store, ob, parse(url), claimed)
    assert len(receiver.bodies()) == before
    assert [(k, s) for _, k, s in rows(state) if k == "repeat"] == [("repeat", "cancelled")]


def test_ack_waits_for_a_repeat_another_process_is_sending(receiver: Receiver, state: Path) -> None:
    """While a repeat of an incident is being sent by another process, its ack is not sent past it."""
    url = am_url(receiver)
    target = parse(url).id
    record(state, url, incident())
    store = Store.open(state / "specwatch.db")
    ob = Outbox(store)
    now = time.time()
    ob.mark_sent([r.id for r in ob.claim([target], "elsewhere:1", now, 60)], "elsewhere:1", now)
    ob.enqueue([(target, url)], incident().key, 1, "repeat", "critical", now, seq=1)
    assert [r.kind for r in ob.claim([target], "elsewhere:1", now, 60)] == ["repeat"]  # in flight elsewhere
    acked = ob.acknowledge(None, "", now)
    assert ob.claim([target], "here:2", now, 60) == []  # the ack goes out after the repeat
    # Nor when `specwatch ack` sends just its own rows at once.
    assert ob.claim([target], "here:2", now, 60, only=[r[0] for r in acked.rows]) == []
    ob.mark_sent([r[0] for r in ob.pending() if r[3] == "repeat"], "elsewhere:1", now)
    assert [r.kind for r in ob.claim([target], "here:2", now, 60)] == ["acknowledged"]


def test_queueing_failure_rolls_the_incident_back(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash between recording an incident and queueing its message loses nothing: both or neither commit."""
    url = "json://127.0.0.1:9/x"
    env, _, _ = make_env({})
    s = StoreSink(state / "specwatch.db", [parse(url)], FAST, env, exit_grace=0.0)
    store = Store.open(state / "specwatch.db")
    real = plugins.wants

    def crash(u: str, kind: str) -> bool:
        raise RuntimeError("killed")

    monkeypatch.setattr(plugins, "wants", crash)
    with pytest.raises(RuntimeError):
        s._record(Outbox(store), incident().as_dict(), "opened", time.time())
    monkeypatch.setattr(plugins, "wants", real)
    assert store.get(incident().key) is None
    s._record(Outbox(store), incident().as_dict(), "opened", time.time())  # the replay
    s.close()
    assert rows(state) == [(1, "opened", "pending")]


def test_scanning_the_same_log_again_leaves_it_acknowledged() -> None:
    """scan --notify, ack, scan the same file again: still acknowledged, no second 'opened' queued."""
    url = "json://127.0.0.1:9/"
    assert cli("scan", "--notify", url, str(RANGE_CHECK)).status != 2
    assert "acknowledged" in cli("ack", "--all").out
    assert cli("scan", "--notify", url, str(RANGE_CHECK)).status != 2
    status = cli("status")
    assert status.status == 0 and "acknowledged" in status.out
    db = Path(os.environ["SPECWATCH_STATE_DIR"]) / "specwatch.db"
    assert [k for (k,) in sqlite3.connect(db).execute("SELECT kind FROM outbox")] == ["opened"]


def test_watch_from_start_after_ack_leaves_it_acknowledged(tmp_path: Path) -> None:
    """watch --from-start re-reading the lines of a scanned and acknowledged log does not reopen it."""
    log = tmp_path / "srv.log"
    log.write_bytes(RANGE_CHECK.read_bytes())
    url = "json://127.0.0.1:9/"
    assert cli("scan", "--notify", url, str(log)).status != 2
    assert "acknowledged" in cli("ack", "--all").out
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "watch", "--from-start", "--notify", url, str(log)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = sqlite3.connect(Path(os.environ["SPECWATCH_STATE_DIR"]) / "specwatch.db")
    try:
        wait_for(lambda: db.execute("SELECT name FROM sqlite_master WHERE name = 'checkpoints'").fetchone()
                 and db.execute("SELECT COUNT(*) FROM checkpoints").fetchone()[0], "the watch checkpoint")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    status = cli("status")
    assert status.status == 0 and "acknowledged" in status.out
    assert [k for (k,) in db.execute("SELECT kind FROM outbox")] == ["opened"]


def test_scan_of_stdin_is_a_new_occurrence_each_time() -> None:
    """'scan -' reads a stream once, like pipe mode: the same failure piped in again after an ack reopens it."""
    url = "json://127.0.0.1:9/"
    data = RANGE_CHECK.read_bytes()
    cli("scan", "--notify", url, "-", stdin=data)
    assert "acknowledged" in cli("ack", "--all").out
    cli("scan", "--notify", url, "-", stdin=data)
    assert cli("status").status == 1


def test_a_recorder_that_cannot_start_is_reported_not_fatal(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the recorder cannot open its outbox it says so once, keeps draining, and closing does not hang."""
    def broken(store: Store) -> Outbox:
        raise sqlite3.DatabaseError("file is not a database")

    monkeypatch.setattr("watcher.notify.outbox.Outbox", broken)
    env, _, err = make_env({})
    sink = StoreSink(state / "specwatch.db", [], FAST, env, exit_grace=0.0)
    for n in range(3):
        sink.incident(incident(n), "opened")
    sink.close()
    assert not sink.recorder.is_alive()
    assert err.getvalue().count("incidents are not recorded or notified: incident store ") == 1
    assert err.getvalue().count("file is not a database") == 1
