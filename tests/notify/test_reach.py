"""Alerts reach people: a target added later hears of open incidents once, nothing queued is left unsaid,
and a URL no plugin understands is a configuration error (against a real HTTP receiver)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.notify.conftest import Receiver, incident, make_env
from watcher import cli
from watcher.notify.sink import StoreSink
from watcher.notify.targets import parse
from watcher.notify.worker import Settings, Worker
from watcher.store import Store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "engine" / "draft-corrupt-default.log"


def _record(state: Path, urls: list[str], n: int = 1) -> list[str]:
    """Record ``n`` open incidents as a watcher with ``urls`` would; returns their keys."""
    env, _, _ = make_env({})
    sink = StoreSink(state / "specwatch.db", [parse(u) for u in urls], Settings(repeat=0), env, exit_grace=0)
    incs = [incident(i) for i in range(n)]
    for i in incs:
        sink.incident(i, "opened")
    sink.close()
    return [i.key for i in incs]


def test_target_added_later_hears_of_open_incidents_once_through_flush(receiver: Receiver, state: Path) -> None:
    """An incident opened before a target existed reaches that target with the next notify flush, once."""
    _record(state, [])  # tried without targets first, the usual way to start
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": f"json://127.0.0.1:{receiver.port}/late"})
    assert cli.run(["notify", "flush"], env) == 0
    assert cli.run(["notify", "flush"], env) == 0
    assert [b["title"][:26] for b in receiver.bodies("/late")] == ["Speculative decoding OFF: "]
    assert b"delivered 1 message rows, 0 still queued" in out.getvalue()


def test_target_added_later_hears_through_the_next_pipe(receiver: Receiver, state: Path) -> None:
    """A pipe started with a new target tells it about incidents still open and unacknowledged, once; an
    acknowledged one is not announced."""
    keys = _record(state, [], n=2)
    ack, _, _ = make_env({"SPECWATCH_STATE_DIR": str(state)})
    assert cli.run(["ack", keys[1][:8]], ack) == 0
    url = f"json://127.0.0.1:{receiver.port}/pipe"
    for _ in range(2):
        env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url}, b"hello\n")
        assert cli.run(["--no-summary"], env) == 0
        assert out.getvalue() == b"hello\n"
    bodies = receiver.bodies("/pipe")
    assert len(bodies) == 1 and f"specwatch ack {keys[0][:8]}" in bodies[0]["message"]
    assert keys[1][:8] not in bodies[0]["message"]


def test_target_fixed_after_a_bad_url_hears_of_the_incident(receiver: Receiver, state: Path) -> None:
    """A target whose URL was wrong when the incident opened gets it once the URL is corrected."""
    receiver.down()
    port = receiver.port
    _record(state, [f"json://127.0.0.1:{port}/wrong-path"])
    receiver.up()
    env, _, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": f"json://127.0.0.1:{port}/fixed"})
    assert cli.run(["notify", "flush"], env) == 0
    assert len(receiver.bodies("/fixed")) == 1


def test_pipe_ending_with_queued_messages_says_how_to_send_them(receiver: Receiver, state: Path) -> None:
    """A pipe whose target is down says at exit how many messages stay queued and how to send them."""
    receiver.down()
    url = f"json://127.0.0.1:{receiver.port}/down"
    (state / "c.toml").write_text("[analysis]\nsettle = 0\n")
    env, out, err = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url}, SAMPLE.read_bytes())
    assert cli.run(["--no-summary", "--config", str(state / "c.toml")], env) == 0
    assert out.getvalue() == SAMPLE.read_bytes()
    n = Worker(state / "specwatch.db", [parse(url)]).pending_count()
    assert n >= 1
    noun = "notification" if n == 1 else "notifications"
    assert f"specwatch: {n} {noun} still queued ({parse(url).label}: " in err.getvalue()
    assert "send them with: specwatch notify flush" in err.getvalue() or "send it with: specwatch notify flush" \
        in err.getvalue()


def test_flush_ignores_the_backoff_and_lists_what_stays(receiver: Receiver, state: Path) -> None:
    """notify flush tries a message whose retry is an hour away now; what still fails is listed."""
    url = f"json://127.0.0.1:{receiver.port}/later"
    receiver.down()
    _record(state, [])
    slow = Worker(state / "specwatch.db", [parse(url)], Settings(repeat=0, backoff=3600, backoff_max=3600))
    assert slow.announce_open() == 1
    assert [r.ok for r in slow.run_once()] == [False]
    assert slow.run_once() == []  # the backoff holds it for an hour
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    assert cli.run(["notify", "flush"], env) == 1
    assert "still queued\n  queued: opened " in out.getvalue().decode()
    assert f"-> {parse(url).label}, 2 attempts" in out.getvalue().decode()
    receiver.up()
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    start = time.monotonic()
    assert cli.run(["notify", "flush"], env) == 0
    assert time.monotonic() - start < 3600
    assert len(receiver.bodies("/later")) == 1
    assert out.getvalue() == b"delivered 1 message rows, 0 still queued\n"


def test_unknown_scheme_in_the_config_file_is_a_config_error(state: Path) -> None:
    """A notification URL no plugin understands: exit 2 naming the file, the line and the key, never queued."""
    conf = state / "c.toml"
    conf.write_text('[notify]\nurls = [\n  "json://127.0.0.1:9/",\n  "notascheme://s3cretT0ken@host",\n]\n')
    env, _, err = make_env({"SPECWATCH_STATE_DIR": str(state)})
    assert cli.run(["notify", "flush", "--config", str(conf)], env) == 2
    assert err.getvalue() == (f"specwatch: {conf}:4: key notify.urls: notascheme://...: no notification plugin "
                              "knows the scheme 'notascheme' (schemes: https://github.com/caronc/apprise/wiki)\n")
    assert "s3cretT0ken" not in err.getvalue()


def test_unknown_scheme_in_a_pipe_still_passes_the_bytes(state: Path) -> None:
    """In pipe mode the bad URL is reported and the exit status is 2, but every byte still flows."""
    data = SAMPLE.read_bytes()
    env, out, err = make_env({"SPECWATCH_STATE_DIR": str(state)}, data)
    assert cli.run(["--notify", "notascheme://x"], env) == 2
    assert out.getvalue() == data
    assert "--notify: notascheme://...: no notification plugin knows the scheme 'notascheme'" in err.getvalue()
    assert not (state / "specwatch.db").exists() or not Store.open(state / "specwatch.db").open_incidents()
