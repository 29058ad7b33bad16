"""The delivery worker: a daemon thread that drains the outbox through apprise, with retry and backoff.

It owns its own database connection (SQLite connections are not shared across threads here), claims due
rows for the targets this process knows, groups the rows of one target that are due together into one
message, and sets :data:`watcher.notify.contract.CURRENT` around ``Apprise.notify`` so first-party plugins
see the incidents. It also queues repeats of open, unacknowledged incidents every ``repeat`` seconds.

Rows queued by another process (``specwatch ack``, a second watcher) wake it too: it polls SQLite's
``PRAGMA data_version`` (changes committed by other connections) every ``poll`` seconds, which costs one
read of the WAL index, so an acknowledgement ends an Alertmanager alert within about a second.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher.notify import message, plugins
from watcher.notify.contract import CURRENT, Delivery
from watcher.notify.notes import Notes
from watcher.notify.outbox import Outbox, Row, owner_id
from watcher.notify.redact import Redactor
from watcher.notify.targets import Target
from watcher.store import Store

DEFAULT_REPEAT = 3600.0
DEFAULT_BACKOFF = 10.0
DEFAULT_BACKOFF_MAX = 300.0
#: Longer than apprise's own connect + read timeouts, so a slow but live sender keeps its rows.
DEFAULT_LEASE = 120.0
#: Rows that become due within this window of each other go out as one message.
GROUP_WINDOW = 0.3
#: How often an idle worker looks for rows other processes queued.
POLL = 1.0


@dataclass
class Settings:
    """How the worker retries and repeats."""

    repeat: float = DEFAULT_REPEAT
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    lease: float = DEFAULT_LEASE
    group_window: float = GROUP_WINDOW
    poll: float = POLL


@dataclass
class Result:
    """The outcome of one delivery attempt to one target."""

    target: Target
    ok: bool
    error: str = ""
    rows: list[int] = field(default_factory=list)


def send(target: Target, title: str, body: str, delivery: Delivery, redact: Callable[[str], str]) -> Result:
    """One apprise notify call to one target; the error is apprise's own message, redacted."""
    import apprise

    plugins.load()
    ap = apprise.Apprise()
    if not ap.add(target.url):
        return Result(target, False, redact(f"apprise cannot use this URL (unknown scheme or bad syntax): "
                                            f"{target.url}"))
    ntype = apprise.NotifyType.SUCCESS if delivery.kind == "resolved" else apprise.NotifyType.INFO \
        if delivery.kind == "acknowledged" else (
        apprise.NotifyType.FAILURE if delivery.severity == "critical" else apprise.NotifyType.WARNING)
    token = CURRENT.set(delivery)
    try:
        with apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as logs:  # type: ignore[no-untyped-call]
            ok = bool(ap.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT, notify_type=ntype))
            captured = logs.getvalue().strip() if hasattr(logs, "getvalue") else ""
    except Exception as exc:  # noqa: BLE001 - a plugin bug is a failed delivery, retried later
        ok, captured = False, f"{type(exc).__name__}: {exc}"
    finally:
        CURRENT.reset(token)
    return Result(target, ok, "" if ok else redact(" ".join(captured.split()) or "delivery failed"))


class Worker:
    """Delivers the outbox rows of ``targets``; ``run_once`` for one-shot use, ``start`` for a thread."""

    def __init__(self, db_path: Path, targets: Sequence[Target], settings: Settings | None = None,
                 clock: Callable[[], float] = time.time, log: Callable[[str], None] | None = None) -> None:
        self.db_path = db_path
        self.targets = list(targets)
        self.by_id = {t.id: t for t in self.targets}
        self.settings = settings or Settings()
        self.clock = clock
        self.log = log or (lambda _m: None)
        self.redact = Redactor(t.url for t in self.targets)
        self.owner = owner_id()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: Store | None = None
        self.delivered = 0
        #: Told the outcome of every delivery attempt (the metrics endpoint counts them).
        self.on_result: Callable[[Result], None] | None = None

    def _db(self) -> tuple[Store, Outbox]:
        if self._store is None:
            self._store = Store.open(self.db_path)
        return self._store, Outbox(self._store)

    def acknowledge(self, keys: Sequence[str], note: str) -> list[str]:
        """Acknowledge incidents (from a desktop button): its own connection, any thread; the messages that
        end their alerts are queued in the same transaction and this worker is woken to send them."""
        store = Store.open(self.db_path)
        try:
            done = Outbox(store).acknowledge(list(keys), note, self.clock())
        finally:
            store.close()
        if done.rows:
            self.wake()
        return done.keys

    def filters(self, message_kind: str) -> list[tuple[str, str, frozenset[str] | None]]:
        """(target id, label, severities or None) of the targets whose plugin wants ``message_kind``."""
        return [(t.id, t.label, (frozenset(s for s in t.tags if s in message._SEVERITY_ORDER) or None))
                for t in self.targets if plugins.wants(t.url, message_kind)]

    def announce_open(self) -> int:
        """Queue, for each target never told, the incidents still open and unacknowledged; returns rows added."""
        _, ob = self._db()
        return ob.announce_open(self.filters("opened"), self.clock())

    def run_once(self, only: Sequence[int] | None = None) -> list[Result]:
        """Queue due repeats, then claim and deliver every due row once; returns one result per message.

        ``only``: deliver just these rows (``specwatch ack`` sends what it queued, nothing else, no repeats).
        """
        store, ob = self._db()
        now = self.clock()
        if only is None:
            ob.schedule_repeats(self.filters("repeat"), self.settings.repeat, now)
        rows = ob.claim(list(self.by_id), self.owner, now, self.settings.lease, only)
        results = []
        for target_id in dict.fromkeys(r.target for r in rows):
            mine = [r for r in rows if r.target == target_id]
            results.append(self._deliver(store, ob, self.by_id[target_id], mine))
        return results

    def _deliver(self, store: Store, ob: Outbox, target: Target, rows: list[Row]) -> Result:
        items: list[dict[str, Any]] = []
        dropped: dict[int, str] = {}
        for r in rows:
            inc = store.get(r.incident)
            if inc is None:
                continue
            # Checked as late as possible, after the claim: the incident may have moved on since it was queued.
            if r.generation < inc.generation:
                dropped[r.id] = f"superseded: the incident reopened as generation {inc.generation}"
            elif r.kind == "repeat" and inc.status != "open":
                dropped[r.id] = f"not repeated: the incident is {inc.status}"
            else:
                items.append({**inc.as_dict(), "generation": r.generation, "message": r.kind, "repeat": r.seq})
        for why in dict.fromkeys(dropped.values()):
            ob.mark_cancelled([i for i, w in dropped.items() if w == why], self.owner, why)
        rows = [r for r in rows if r.id not in dropped]
        ids = [r.id for r in rows]
        if not items:
            ob.mark_sent(ids, self.owner, self.clock())
            return Result(target, True, rows=ids)
        title, body = message.render(items, self.redact, self.clock)
        delivery = Delivery(target.id, title, body, message.severity_of(items), tuple(items),
                            self.acknowledge, self.redact, Notes(self.db_path, target.id))
        res = send(target, title, body, delivery, self.redact)
        res.rows = ids
        if self.on_result is not None:
            self.on_result(res)
        if res.ok:
            self.delivered += ob.mark_sent(ids, self.owner, self.clock())
        else:
            ob.mark_failed(ids, self.owner, self.clock(), res.error, self.settings.backoff, self.settings.backoff_max)
            self.log(f"specwatch: notification to {target.label} failed (attempt {max(r.attempts for r in rows)}, "
                     f"will retry): {res.error}")
        return res

    def due_now(self) -> int:
        """Make every pending row of this worker's targets due now (ignore the backoff once)."""
        _, ob = self._db()
        return ob.due_now(list(self.by_id), self.clock())

    def pending_count(self) -> int:
        """Undelivered rows of this worker's targets."""
        _, ob = self._db()
        return len(ob.pending(list(self.by_id)))

    def _data_version(self) -> int:
        """Changes other connections committed, as a counter (cheap: no table is read)."""
        store, _ = self._db()
        return int(store.conn.execute("PRAGMA data_version").fetchone()[0])

    def wake(self) -> None:
        """New rows were queued."""
        self._wake.set()

    def start(self) -> None:
        """Run in a daemon thread until ``stop``."""
        self._thread = threading.Thread(target=self._loop, name="specwatch-notify", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen: int | None = None
            try:
                # Read before looking at the rows, so a commit made while run_once runs still wakes us.
                seen = self._data_version()
                self.run_once()
                _, ob = self._db()
                nxt = ob.next_due(list(self.by_id))
            except Exception as exc:  # noqa: BLE001 - a locked or broken database must not kill alerts for good
                self.log(f"specwatch: notification worker: {self.redact(str(exc))}")
                nxt = None
            wait = 30.0 if nxt is None else max(0.05, min(30.0, nxt - self.clock()))
            if self.settings.repeat > 0:
                wait = min(wait, max(1.0, self.settings.repeat / 4))
            if self._sleep(wait, seen):
                # Let the rest of a burst arrive, so it goes out as one message.
                self._stop.wait(self.settings.group_window)

    def _sleep(self, wait: float, seen: int | None) -> bool:
        """Wait up to ``wait`` seconds; True when woken early, by ``wake`` or by a commit of another
        connection since ``seen`` (rows queued by ``specwatch ack`` or another process)."""
        deadline = time.monotonic() + wait
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self._wake.wait(min(left, self.settings.poll) if self.settings.poll > 0 else left):
                self._wake.clear()
                return True
            try:
                if seen is not None and self._data_version() != seen:
                    return True
            except Exception:  # noqa: BLE001, S112 - a locked database: look again at the next poll
                continue
        return False

    def stop(self, drain: float = 0.0) -> None:
        """Stop the thread, first giving pending deliveries up to ``drain`` seconds (they stay queued after)."""
        deadline = time.monotonic() + drain
        if self._thread is not None:
            check = Store.open(self.db_path) if drain > 0 else None
            ob = Outbox(check) if check is not None else None
            while ob is not None and time.monotonic() < deadline:
                try:
                    nxt = ob.next_due(list(self.by_id))
                    busy = ob.pending(list(self.by_id))
                except Exception:  # noqa: BLE001
                    break
                if not busy or (nxt is not None and nxt > self.clock() + (deadline - time.monotonic())):
                    break
                self._wake.set()
                time.sleep(0.05)
            if check is not None:
                check.close()
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout=max(1.0, deadline - time.monotonic()))
