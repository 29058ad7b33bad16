"""Delivery through apprise to a real HTTP receiver: payloads, grouping, repeats, outages, kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.notify.conftest import Receiver, incident, make_env
from watcher import cli
from watcher.notify.notes import Notes
from watcher.notify.sink import StoreSink
from watcher.notify.targets import parse
from watcher.notify.worker import Settings, Worker
from watcher.store import Store

FAST = Settings(repeat=0, backoff=0.05, backoff_max=0.2)
REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "engine" / "draft-corrupt-default.log"


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


def record(state: Path, urls: list[str], incidents: list, change: str = "opened", grace: float = 0.0) -> None:  # type: ignore[type-arg]
    env, _, _ = make_env({})
    sink = StoreSink(state / "specwatch.db", [parse(u) for u in urls], FAST, env, exit_grace=grace)
    for i in incidents:
        sink.incident(i, change)
    sink.close()


def test_json_payload_and_slack_compatible(receiver: Receiver, state: Path) -> None:
    """json:// and a Mattermost (Slack-compatible) webhook get the issue's title, hint, host and evidence."""
    urls = [f"json://127.0.0.1:{receiver.port}/hook", f"mmost://127.0.0.1:{receiver.port}/tok3nSECRETvalue"]
    record(state, urls, [incident()], grace=5.0)
    assert wait_for(lambda: len(receiver.posts) == 2)
    j = receiver.bodies("/hook")[0]
    assert j["title"] == "Speculative decoding OFF: draft draft-0.gguf out of memory on CUDA1 (7168 MiB), slots 0-3"
    assert "Lower --ctx-size-draft" in j["message"] and "source llama-server-0" in j["message"]
    assert "cudaMalloc failed: out of memory" in j["message"] and j["type"] == "failure"
    m = receiver.bodies("/hooks/tok3nSECRETvalue")[0]
    assert m["text"].startswith("Speculative decoding OFF: draft draft-0.gguf out of memory on CUDA1")
    assert "specwatch ack" in m["text"]


def test_group_resolved_and_no_duplicates(receiver: Receiver, state: Path) -> None:
    """Incidents arriving together are one message; resolving sends one resolved message; re-runs send nothing."""
    url = f"json://127.0.0.1:{receiver.port}/g"
    record(state, [url], [incident(1), incident(2), incident(3)])
    env, _out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    assert cli.run(["notify", "flush"], env) == 0
    assert len(receiver.bodies("/g")) == 1
    grouped = receiver.bodies("/g")[0]
    assert grouped["title"].startswith("specwatch: 3 open speculative-decoding incidents on ")
    assert grouped["message"].count("Speculative decoding OFF") == 3
    done = incident(2)
    done.status = "resolved"
    record(state, [url], [done], change="resolved")
    assert cli.run(["notify", "flush"], env) == 0
    assert cli.run(["notify", "flush"], env) == 0
    assert [b["title"][:9] for b in receiver.bodies("/g")] == ["specwatch", "Resolved:"]


def test_repeat_until_acknowledged(receiver: Receiver, state: Path) -> None:
    """An open incident repeats once per interval and stops once acknowledged."""
    url = f"json://127.0.0.1:{receiver.port}/r"
    record(state, [url], [incident()])
    now = [time.time()]
    w = Worker(state / "specwatch.db", [parse(url)], Settings(repeat=60, backoff=0.05), clock=lambda: now[0])
    w.run_once()
    now[0] += 61
    w.run_once()
    w.run_once()
    assert [b["title"][:11] for b in receiver.bodies("/r")] == ["Speculative", "Still open:"]
    env, _out, _ = make_env({"SPECWATCH_STATE_DIR": str(state)})
    assert cli.run(["status"], env) == 1
    assert cli.run(["ack", "--all", "--note", "swapping the draft"], env) == 0
    assert cli.run(["status"], env) == 0
    now[0] += 120
    w.run_once()
    assert len(receiver.bodies("/r")) == 2


def test_outage_then_recovery(receiver: Receiver, state: Path) -> None:
    """A target that is down gets its message once it is back, exactly once, with the error redacted meanwhile."""
    url = f"json://user:hunter2secret@127.0.0.1:{receiver.port}/o"
    receiver.down()
    record(state, [url], [incident()])
    w = Worker(state / "specwatch.db", [parse(url)], FAST)
    res: list = []  # type: ignore[type-arg]
    assert wait_for(lambda: res.extend(w.run_once()) or res)
    assert not res[0].ok and "hunter2secret" not in res[0].error and "127.0.0.1" in res[0].error
    receiver.up()
    assert wait_for(lambda: (w.run_once() or True) and len(receiver.bodies("/o")) == 1)
    w.run_once()
    assert len(receiver.bodies("/o")) == 1 and w.pending_count() == 0


def test_kill9_mid_retry_then_restart(receiver: Receiver, state: Path, tmp_path: Path) -> None:
    """specwatch killed with SIGKILL while retrying, then restarted: every message arrives exactly once."""
    url = f"json://127.0.0.1:{receiver.port}/k"
    receiver.down()
    record(state, [url], [incident(1), incident(2)])
    conf = tmp_path / "c.toml"
    conf.write_text("[notify]\nbackoff = 0.05\nbackoff_max = 0.1\nrepeat = 0\n")
    env = {**os.environ, "SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "notify", "flush", "--wait", "60", "--config",
                             str(conf)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = sqlite3.connect(state / "specwatch.db")
    try:
        assert wait_for(lambda: db.execute("SELECT MIN(attempts) FROM outbox").fetchone()[0] >= 3, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    receiver.up()
    e, _out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    assert cli.run(["notify", "flush", "--wait", "10", "--config", str(conf)], e) == 0
    assert cli.run(["notify", "flush", "--config", str(conf)], e) == 0
    assert len(receiver.bodies("/k")) == 1  # both incidents, grouped, once
    assert receiver.bodies("/k")[0]["message"].count("Speculative decoding OFF") == 2
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state != 'sent'").fetchone()[0] == 0


def test_pipe_records_and_notifies(receiver: Receiver, state: Path) -> None:
    """Pipe mode with $SPECWATCH_NOTIFY stores the sample's incidents and delivers them before exiting."""
    url = f"json://127.0.0.1:{receiver.port}/p"
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url}, SAMPLE.read_bytes())
    assert cli.run([], env) == 0
    assert out.getvalue() == SAMPLE.read_bytes()
    opened = Store.open(state / "specwatch.db").open_incidents()
    assert opened and receiver.bodies("/p")
    assert opened[0].title in receiver.bodies("/p")[0]["message"] + receiver.bodies("/p")[0]["title"]


def test_notify_list_and_test_redact(receiver: Receiver, state: Path) -> None:
    """notify list masks tokens; notify test reports per target, with the exact (redacted) error."""
    good = f"mmost://127.0.0.1:{receiver.port}/SuperSecretToken123"
    bad = "json://user:pw-Sekrit99@127.0.0.1:9/x"
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": f"{good} {bad}"})
    assert cli.run(["notify", "list"], env) == 0
    assert cli.run(["notify", "test"], env) == 1
    text = out.getvalue().decode()
    assert "SuperSecretToken123" not in text and "Sekrit99" not in text
    assert "ok      mmost://127.0.0.1" in text and "FAILED  json://user:****@127.0.0.1:9/****" in text
    assert receiver.bodies()[0]["text"].startswith("specwatch test")


def test_notes_take_raises_the_error_that_rolled_its_transaction_back(tmp_path: Path) -> None:
    """A failure that rolls the whole transaction back (as a full disk does) is raised as itself, not hidden
    behind a failed ROLLBACK's "no transaction is active"."""
    db = tmp_path / "specwatch.db"
    notes = Notes(db, "t")
    notes.add(["i"], "server:1")
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TRIGGER full BEFORE DELETE ON plugin_notes BEGIN SELECT RAISE(ROLLBACK, "
                 "'database or disk is full'); END")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.Error, match="database or disk is full"):
        notes.take(["i"])
