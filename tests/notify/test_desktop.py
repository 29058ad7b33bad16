"""The specwatch:// notifier against a real notification server: dunst on a private D-Bus under Xvfb."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.notify.conftest import incident, make_env
from watcher.notify import desktop
from watcher.notify.notes import Notes
from watcher.notify.outbox import Outbox
from watcher.notify.sink import StoreSink
from watcher.notify.targets import parse
from watcher.notify.worker import Settings, Worker
from watcher.store import Store

pytestmark = pytest.mark.dbus
NEEDED = ("dbus-daemon", "dbus-send", "Xvfb", "dunst", "dunstctl", "dbus-monitor")


def wait_for(cond, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


@pytest.fixture
def session(tmp_path: Path) -> Iterator[dict[str, str]]:
    missing = [b for b in NEEDED if shutil.which(b) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian: dunst xvfb dbus-x11 libnotify-bin)")
    procs: list[subprocess.Popen[bytes]] = []
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"], stdout=subprocess.PIPE)
    procs.append(bus)
    assert bus.stdout is not None
    address = bus.stdout.readline().decode().strip()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-nolisten", "tcp"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    procs.append(xvfb)
    assert xvfb.stdout is not None
    display = ":" + xvfb.stdout.readline().decode().strip()
    # dmenu stands in for the person choosing "Acknowledge" in dunst's context menu.
    menu = tmp_path / "menu.sh"
    menu.write_text("#!/bin/sh\ngrep -i acknowledge | head -n1\n")
    menu.chmod(0o755)
    rc = tmp_path / "dunstrc"
    rc.write_text(f'[global]\ndmenu = "{menu}"\n[urgency_low]\ntimeout = 1\n[urgency_normal]\ntimeout = 1\n'
                  "[urgency_critical]\ntimeout = 1\n")
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address, "DISPLAY": display}
    procs.append(subprocess.Popen(["dunst", "-config", str(rc)], env=env, stderr=subprocess.DEVNULL))
    # Ask whether our dunst owns the name without auto-starting another one (that one would have no display).
    owned = ["dbus-send", "--session", "--print-reply=literal", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
             "org.freedesktop.DBus.NameHasOwner", "string:org.freedesktop.Notifications"]
    assert wait_for(lambda: "true" in subprocess.run(owned, env=env, capture_output=True, text=True,
                                                     check=False).stdout)
    old = os.environ.get("DBUS_SESSION_BUS_ADDRESS")
    os.environ["DBUS_SESSION_BUS_ADDRESS"] = address
    desktop.reset()
    try:
        yield env
    finally:
        desktop.reset()  # before the bus goes away, so no receiver thread is left reading a dead socket
        if old is None:
            os.environ.pop("DBUS_SESSION_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SESSION_BUS_ADDRESS"] = old
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=5)


def displayed(env: dict[str, str]) -> int:
    return int(subprocess.run(["dunstctl", "count", "displayed"], env=env, capture_output=True, check=False,
                              text=True).stdout.strip() or 0)


def test_critical_stays_updates_in_place_and_acknowledges(session: dict[str, str], tmp_path: Path) -> None:
    """Critical urgency, no expiry (outlives dunst's 1 s timeouts), repeats replace the bubble, the button acks."""
    state = tmp_path / "state"
    db = state / "specwatch.db"
    url = "specwatch://"
    e, _, _ = make_env({})
    sink = StoreSink(db, [parse(url)], Settings(repeat=0), e, exit_grace=0)
    inc = incident()
    sink.incident(inc, "opened")
    sink.close()
    now = [time.time()]
    w = Worker(db, [parse(url)], Settings(repeat=60), clock=lambda: now[0])
    assert wait_for(lambda: (w.run_once() or True) and displayed(session) == 1)
    time.sleep(2.5)  # longer than every timeout in this dunstrc: only expire_timeout 0 keeps it up
    assert displayed(session) == 1
    now[0] += 61
    assert [r.ok for r in w.run_once()] == [True]  # the repeat
    assert displayed(session) == 1  # replaced in place, not stacked
    subprocess.run(["dunstctl", "context"], env=session, check=True, timeout=10)
    store = Store.open(db)
    assert wait_for(lambda: store.get(inc.key).status == "acknowledged")  # type: ignore[union-attr]
    assert "desktop" in store.get(inc.key).ack_note  # type: ignore[union-attr]
    assert wait_for(lambda: displayed(session) == 0)


def test_notify_call_arguments(session: dict[str, str], tmp_path: Path) -> None:
    """The Notify call carries urgency byte 2, expire_timeout 0 and the Acknowledge action (seen on the bus)."""
    monitor = subprocess.Popen(["dbus-monitor", "--session", "interface='org.freedesktop.Notifications'"],
                               env=session, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)  # let the monitor register before the call it must see
    e, _, _ = make_env({})
    db = tmp_path / "s" / "specwatch.db"
    sink = StoreSink(db, [parse("specwatch://")], Settings(repeat=0), e, exit_grace=0)
    sink.incident(incident(), "opened")
    sink.close()
    w = Worker(db, [parse("specwatch://")], Settings(repeat=0))
    assert wait_for(lambda: (w.run_once() or True) and displayed(session) == 1)
    monitor.terminate()
    out, _ = monitor.communicate(timeout=5)
    call = out[out.index("member=Notify"):]
    assert '"urgency"' in call and "variant             byte 2" in call
    assert 'string "acknowledge"' in call and 'string "Acknowledge"' in call
    assert call.split("]")[-1].strip().splitlines()[0].strip() == "int32 0"


def _show(db: Path, incidents: list) -> None:  # type: ignore[type-arg]
    """A watcher that records ``incidents`` and shows their bubble, then exits (its bus connection closes)."""
    e, _, _ = make_env({})
    sink = StoreSink(db, [], Settings(repeat=0), e, exit_grace=0)  # recorded only: its worker sends nothing
    for inc in incidents:
        sink.incident(inc, "opened")
    sink.close()
    target = parse("specwatch://")
    store = Store.open(db)
    for row in store.open_incidents():
        Outbox(store).enqueue([(target.id, target.label)], row.key, row.generation, "opened", row.severity,
                              time.time())
    store.close()
    w = Worker(db, [target], Settings(repeat=0))
    assert [r.ok for r in w.run_once()] == [True]  # one message, all incidents
    desktop.reset()


def test_ack_command_closes_the_bubble_of_a_process_that_is_gone(session: dict[str, str], tmp_path: Path) -> None:
    """`specwatch ack`, with no target configured, closes the bubble a watcher that has since exited left up."""
    state = tmp_path / "state"
    _show(state / "specwatch.db", [incident()])
    assert wait_for(lambda: displayed(session) == 1)
    e, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state)})
    from watcher import cli

    assert cli.run(["ack", "--all"], e) == 0
    assert "alert ended: specwatch://" in out.getvalue().decode()
    assert wait_for(lambda: displayed(session) == 0)


def test_a_later_process_button_closes_every_bubble_of_the_incident(session: dict[str, str], tmp_path: Path) -> None:
    """Acknowledge pressed on a later watcher's bubble closes the earlier watcher's bubble of the same incident."""
    db = tmp_path / "state" / "specwatch.db"
    inc = incident()
    _show(db, [inc])
    now = [time.time() + 61]
    later = Worker(db, [parse("specwatch://")], Settings(repeat=60), clock=lambda: now[0])
    assert [r.ok for r in later.run_once()] == [True]  # the repeat: this process's own bubble
    assert wait_for(lambda: displayed(session) == 2)
    later.start()
    try:
        subprocess.run(["dunstctl", "context"], env=session, check=True, timeout=10)
        store = Store.open(db)
        assert wait_for(lambda: store.get(inc.key).status == "acknowledged")  # type: ignore[union-attr]
        assert wait_for(lambda: displayed(session) == 0)
    finally:
        later.stop()


def test_grouped_bubble_lists_every_title_and_offers_acknowledge_once(session: dict[str, str],
                                                                      tmp_path: Path) -> None:
    """Three incidents in one bubble: its body starts with the three titles; one Acknowledge action."""
    monitor = subprocess.Popen(["dbus-monitor", "--session", "interface='org.freedesktop.Notifications'"],
                               env=session, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)  # let the monitor register before the call it must see
    incs = [incident(n) for n in range(3)]
    _show(tmp_path / "s" / "specwatch.db", incs)
    assert wait_for(lambda: displayed(session) == 1)
    monitor.terminate()
    out, _ = monitor.communicate(timeout=5)
    call = out[out.index("member=Notify"):]
    # Notify's arguments as dbus-monitor prints them: app name, replaces id, icon, summary, body, then actions.
    args = call.split('\n   string "')
    body = args[4].split('"\n   array [')[0]
    assert sorted(body.splitlines()[:3]) == sorted(f"• {i.title}" for i in incs)
    assert call.count('string "Acknowledge"') == 1


def test_an_acknowledgement_cancels_the_opening_bubble_still_waiting_for_its_retry(
        session: dict[str, str], tmp_path: Path) -> None:
    """The first bubble failed and waits out its backoff when another process acknowledges: it is never shown
    (no stale bubble of an acknowledged incident), and `notify list` says why it was not sent."""
    state = tmp_path / "state"
    db = state / "specwatch.db"
    target = parse("specwatch://")
    _record_only(db, [incident()])
    store = Store.open(db)
    key = store.open_incidents()[0].key
    ob = Outbox(store)
    now = time.time()
    ob.enqueue([(target.id, target.label)], key, 1, "opened", "critical", now)
    me = Worker(db, [target], Settings(repeat=0)).owner
    # A first attempt that failed (the notification server was not up yet): due again in 10 s.
    ids = [r.id for r in ob.claim([target.id], me, now, 120)]
    ob.mark_failed(ids, me, now, "org.freedesktop.Notifications: no such name", 10, 300)
    store.close()
    e, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state)})
    from watcher import cli

    assert cli.run(["ack", "--all"], e) == 0  # another process: the end of the alert goes out now
    w = Worker(db, [target], Settings(repeat=0), clock=lambda: now + 11)
    w.run_once()  # the retry's turn
    time.sleep(0.5)  # dunst shows a bubble within milliseconds of the Notify call
    assert displayed(session) == 0
    store = Store.open(db)
    assert store.conn.execute("SELECT state, last_error FROM outbox WHERE kind = 'opened'").fetchall() == [
        ("cancelled", "cancelled: acknowledged before it was sent")]
    store.close()
    e, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state)})
    assert cli.run(["notify", "list", "--notify", "specwatch://"], e) == 0
    assert (f"  cancelled: opened {key[:8]} -> specwatch://: acknowledged before it was sent"
            in out.getvalue().decode())


def _record_only(db: Path, incidents: list) -> None:  # type: ignore[type-arg]
    """A watcher with no target records ``incidents``."""
    e, _, _ = make_env({})
    sink = StoreSink(db, [], Settings(repeat=0), e, exit_grace=0)
    for inc in incidents:
        sink.incident(inc, "opened")
    sink.close()


def test_a_bubble_whose_note_cannot_be_kept_is_delivered_once_and_the_failure_said(
        session: dict[str, str], tmp_path: Path) -> None:
    """The bubble is shown but the database refuses its note (disk full): the message counts as sent, no second
    bubble follows at the retry, and the log says the bubble cannot be closed by another process."""
    db = tmp_path / "state" / "specwatch.db"
    target = parse("specwatch://")
    _record_only(db, [incident()])
    Notes(db, target.id).take(["none"])  # creates the notes table, to which the disk-full trigger is added
    conn = sqlite3.connect(str(db))
    conn.execute("CREATE TRIGGER full BEFORE INSERT ON plugin_notes BEGIN SELECT RAISE(FAIL, "
                 "'database or disk is full'); END")
    conn.commit()
    conn.close()
    store = Store.open(db)
    row = store.open_incidents()[0]
    Outbox(store).enqueue([(target.id, target.label)], row.key, row.generation, "opened", row.severity, time.time())
    store.close()
    logs: list[str] = []
    now = [time.time()]
    w = Worker(db, [target], Settings(repeat=0), clock=lambda: now[0], log=logs.append)
    assert [r.ok for r in w.run_once()] == [True]
    now[0] += 3600  # past any retry's backoff
    assert w.run_once() == []
    assert wait_for(lambda: displayed(session) == 1)
    time.sleep(0.5)  # a second bubble would be up within milliseconds
    assert displayed(session) == 1
    assert logs == ["specwatch: specwatch://: the bubble is shown, but its id could not be kept (database or disk "
                    "is full): an acknowledgement by another process will not close it"]
