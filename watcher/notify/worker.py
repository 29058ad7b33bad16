"""The delivery worker: a daemon thread that drains the outbox through apprise, with retry and backoff.

Each thread that uses it (its own loop, ``run_once`` or ``pending_count`` called from another thread) gets its
own database connection: one SQLite connection used by two threads at once breaks their transactions ("cannot
start a transaction within a transaction"). It claims due rows for the targets this process knows, groups the
rows of one target that are due together into one message, and sets :data:`watcher.notify.contract.CURRENT`
around ``Apprise.notify`` so first-party plugins see the incidents. It also queues repeats of open,
unacknowledged incidents every ``repeat`` seconds.

Rows queued by another process (``specwatch ack``, a second watcher) wake it too: it polls SQLite's
``PRAGMA data_version`` (changes committed by other connections) every ``poll`` seconds, which costs one
read of the WAL index, so an acknowledgement ends an Alertmanager alert within about a second.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher import db
from watcher.notify import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_REPEAT, message, plugins
from watcher.notify.contract import CURRENT, Delivery
from watcher.notify.notes import Notes
from watcher.notify.outbox import ACKNOWLEDGED_FIRST, Outbox, Row, owner_id
from watcher.notify.redact import Redactor
from watcher.notify.targets import Target
from watcher.store import Store

#: Longer than apprise's own connect + read timeouts, so a slow but live sender keeps its rows.
DEFAULT_LEASE = 120.0
#: Rows that become due within this window of each other go out as one message.
GROUP_WINDOW = 0.3
#: How often an idle worker looks for rows other processes queued.
POLL = 1.0
#: The HTTP header that carries a message's id to generic webhooks (``json://``, ``form://``, ``xml://``): the
#: same message sent again (a sender killed between the receiver's reply and the database commit) carries the
#: same key, so the receiver can drop the duplicate (the name of the IETF draft for idempotent POSTs).
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: apprise's generic webhook schemes, which take extra headers as ``+Name=value`` URL parameters.
_HEADER_SCHEMES = frozenset({"json", "jsons", "form", "forms", "xml", "xmls"})


@dataclass
class Settings:
    """How the worker retries and repeats."""

    repeat: float = DEFAULT_REPEAT
    backoff: float = DEFAULT_BACKOFF
    backoff_max: float = DEFAULT_BACKOFF_MAX
    lease: float = DEFAULT_LEASE
    group_window: float = GROUP_WINDOW
    poll: float = POLL
    #: How long a write waits for another process's lock before it fails (and is retried later).
    busy_timeout: float = db.BUSY_TIMEOUT


@dataclass
class Result:
    """The outcome of one delivery attempt to one target."""

    target: Target
    ok: bool
    error: str = ""
    rows: list[int] = field(default_factory=list)


def message_id(rows: Sequence[tuple[str, int, str, int]]) -> str:
    """The stable id of a message: the same (incident, generation, kind, repeat number) rows, the same id,
    whichever process sends them and however often."""
    parts = sorted(f"{inc}/{gen}/{kind}/{seq}" for inc, gen, kind, seq in rows)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def with_idempotency_key(url: str, key: str) -> str:
    """``url`` with the message id as an ``Idempotency-Key`` header, for apprise's generic webhooks
    (unless the URL sets that header itself); other URLs unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _HEADER_SCHEMES or f"+{IDEMPOTENCY_HEADER.lower()}=" in url.lower():
        return url
    joiner = "&" if "?" in rest else "?"
    return f"{url}{joiner}+{IDEMPOTENCY_HEADER}={key}"


def send(target: Target, title: str, body: str, delivery: Delivery, redact: Callable[[str], str],  # noqa: PLR0917
         key: str = "") -> Result:
    """One apprise notify call to one target; the error is apprise's own message, redacted.

    ``key``: the message id (:func:`message_id`), sent as the ``Idempotency-Key`` header to generic webhooks.
    """
    import apprise

    plugins.load()
    ap = apprise.Apprise()
    if not ap.add(with_idempotency_key(target.url, key) if key else target.url):
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
        self._local = threading.local()
        self._opened: list[Store] = []
        self._lock = threading.Lock()
        #: Outcomes of deliveries whose database update failed (a lock held past the busy timeout): row id ->
        #: ("sent", "") or ("failed", error). Written again before anything else is claimed; until then the
        #: rows stay leased to this process, so neither it nor another one sends them again while the lease
        #: runs (after it, another process may: at least once).
        self._unmarked: dict[int, tuple[str, str]] = {}
        self.delivered = 0
        #: Told the outcome of every delivery attempt (the metrics endpoint counts them).
        self.on_result: Callable[[Result], None] | None = None

    def _db(self) -> tuple[Store, Outbox]:
        """This thread's own connection (opened on first use, closed by ``close``)."""
        store: Store | None = getattr(self._local, "store", None)
        if store is None:
            store = Store.open(self.db_path, timeout=self.settings.busy_timeout)
            self._local.store = store
            with self._lock:
                self._opened.append(store)
        return store, Outbox(store)

    def acknowledge(self, keys: Sequence[str], note: str) -> list[str]:
        """Acknowledge incidents (from a desktop button): its own connection, any thread; the messages that
        end their alerts are queued in the same transaction and this worker is woken to send them."""
        store = Store.open(self.db_path, timeout=self.settings.busy_timeout)
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
        if not self._write_unmarked(ob):
            return []  # the database is still locked: claiming now would only fail too
        now = self.clock()
        if only is None:
            ob.schedule_repeats(self.filters("repeat"), self.settings.repeat, now)
        with self._lock:
            known = set(self._unmarked)
        rows = ob.claim(list(self.by_id), self.owner, now, self.settings.lease, only, skip=known)
        claimed_until = now + self.settings.lease
        results = []
        for target_id in dict.fromkeys(r.target for r in rows):
            mine = [r for r in rows if r.target == target_id]
            # The targets before this one may have taken longer than the lease: renew it, and leave any row
            # another process took over meanwhile to that process.
            try:
                held = set(ob.renew([r.id for r in mine], self.owner, self.clock(), self.settings.lease))
            except sqlite3.OperationalError:
                if self.clock() >= claimed_until:
                    continue  # cannot tell whether another process has them: ours again once expired
                held = {r.id for r in mine}
            mine = [r for r in mine if r.id in held]
            if mine:
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
            elif r.kind in ("opened", "repeat") and inc.status == "acknowledged":
                dropped[r.id] = ACKNOWLEDGED_FIRST
            elif r.kind == "repeat" and inc.status != "open":
                dropped[r.id] = f"not repeated: the incident is {inc.status}"
            else:
                items.append({**inc.as_dict(), "generation": r.generation, "message": r.kind, "repeat": r.seq})
        for why in dict.fromkeys(dropped.values()):
            self._mark(ob, [i for i, w in dropped.items() if w == why], "cancelled", why)
        rows = [r for r in rows if r.id not in dropped]
        ids = [r.id for r in rows]
        if not items:
            self._mark(ob, ids, "sent", "")
            return Result(target, True, rows=ids)
        title, body = message.render(items, self.redact, self.clock)
        key = message_id([(r.incident, r.generation, r.kind, r.seq) for r in rows])
        items = [{**i, "message_id": message_id([(str(i["id"]), int(i["generation"]), str(i["message"]),
                                                   int(i["repeat"]))])} for i in items]
        delivery = Delivery(target.id, title, body, message.severity_of(items), tuple(items),
                            self.acknowledge, self.redact, Notes(self.db_path, target.id),
                            lambda text: self.log(f"specwatch: {target.label}: {self.redact(text)}"))
        res = send(target, title, body, delivery, self.redact, key)
        res.rows = ids
        if self.on_result is not None:
            self.on_result(res)
        if res.ok:
            self.delivered += self._mark(ob, ids, "sent", "")
        else:
            self._mark(ob, ids, "failed", res.error)
            self.log(f"specwatch: notification to {target.label} failed (attempt {max(r.attempts for r in rows)}, "
                     f"will retry): {res.error}")
        return res

    def due_now(self) -> int:
        """Make every pending row of this worker's targets due now (ignore the backoff once)."""
        _, ob = self._db()
        return ob.due_now(list(self.by_id), self.clock())

    def _mark(self, ob: Outbox, ids: list[int], outcome: str, error: str) -> int:
        """Write a delivery's outcome; when the database refuses (locked, full), keep it for the next pass
        instead of leaving the rows ``sending`` for good. Returns the rows written now."""
        try:
            return self._write(ob, ids, outcome, error)
        except sqlite3.OperationalError as exc:
            with self._lock:
                first = not self._unmarked
                self._unmarked.update(dict.fromkeys(ids, (outcome, error)))
            if first:
                self.log(f"specwatch: cannot record a delivery yet ({exc}); will record it when the database "
                         "lets us, without sending it again")
            return 0

    def _write(self, ob: Outbox, ids: list[int], outcome: str, error: str) -> int:
        now = self.clock()
        if outcome == "sent":
            return ob.mark_sent(ids, self.owner, now)
        if outcome == "cancelled":
            return ob.mark_cancelled(ids, self.owner, error)
        ob.mark_failed(ids, self.owner, now, error, self.settings.backoff, self.settings.backoff_max)
        return 0

    def _write_unmarked(self, ob: Outbox) -> bool:
        """Write the outcomes kept by ``_mark``; False while the database still refuses."""
        with self._lock:
            todo = dict(self._unmarked)
        by_outcome: dict[tuple[str, str], list[int]] = {}
        for rid, result in todo.items():
            by_outcome.setdefault(result, []).append(rid)
        for (outcome, error), ids in by_outcome.items():
            try:
                n = self._write(ob, ids, outcome, error)
            except sqlite3.OperationalError:
                return False
            if outcome == "sent":
                self.delivered += n
            with self._lock:
                for rid in ids:
                    self._unmarked.pop(rid, None)
        return True

    def close(self) -> None:
        """Close every connection the worker's threads opened."""
        with self._lock:
            opened, self._opened = self._opened, []
        for store in opened:
            store.close()

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
            if self._unmarked:
                wait = min(wait, 1.0)  # outcomes to write: try again soon, the lock may be gone
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
        """Stop the thread, first giving pending deliveries up to ``drain`` seconds (they stay queued after),
        then write the outcomes still kept (see ``_mark``) one last time and close the connections."""
        deadline = time.monotonic() + drain
        if self._thread is not None:
            check: Store | None = None
            if drain > 0:
                try:
                    check = Store.open(self.db_path, timeout=self.settings.busy_timeout)
                except db.StoreError:
                    check = None
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
            if self._thread.is_alive():
                return  # stuck on the network: its connection goes with the process
        if self._unmarked:
            try:
                _, ob = self._db()
                self._write_unmarked(ob)
            except db.StoreError:
                pass
        self.close()
