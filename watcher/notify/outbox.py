"""The outbox: one row per (target, incident, generation, kind of message, repeat number).

Rows are inserted with ``INSERT OR IGNORE`` on that unique key, so however many processes see the same incident,
each message exists once. A worker *claims* due rows by setting ``state = 'sending'`` with a lease (owner
``host:pid``, expiry) in one ``BEGIN IMMEDIATE`` transaction, so two workers never send the same row; it renews
the lease of a target's rows just before sending them (one pass over many slow targets may outlast the first
lease) and skips any another process took over meanwhile; it then marks them ``sent`` (or back to ``pending``
with an exponential backoff) only if it still holds the lease. A worker killed with -9 leaves rows ``sending``:
another worker takes them over as soon as the lease expires, or at once when the owner is a process of this host
that no longer exists; a worker takes back its own rows whose lease expired (an outcome it could not write, a
thread that died). While another live process is sending a row of an incident to a target, no other row of that
incident and target is claimed, so an incident's messages reach a target in order (an acknowledgement never
overtakes a repeat in flight).

Messages belong to a generation of their incident: when it reopens, the rows of older generations still pending
are cancelled in the reopening transaction, and the worker cancels (instead of sending) any it had already
claimed, so an old ``acknowledged`` or ``resolved`` message never ends the new alert. An acknowledgement cancels
its incident's opening and repeat messages not yet sent, for every target, in the acknowledging transaction (the
worker checks the ones it had already claimed again before sending).
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from watcher import db
from watcher.notify import plugins
from watcher.store import Occurrence, Store, StoredIncident

COMPONENT = "outbox"
MIGRATIONS = [
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        label TEXT NOT NULL,
        incident TEXT NOT NULL,
        generation INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('opened', 'repeat', 'resolved')),
        seq INTEGER NOT NULL DEFAULT 0,
        severity TEXT NOT NULL,
        created REAL NOT NULL,
        due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'cancelled')),
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT NOT NULL DEFAULT '',
        sent_at REAL,
        UNIQUE (target, incident, generation, kind, seq)
    );
    CREATE INDEX outbox_due ON outbox (state, target, due);
    """,
    # SQLite cannot change a CHECK constraint in place: rebuild the table with the 'acknowledged' kind.
    """
    CREATE TABLE outbox_v2 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        label TEXT NOT NULL,
        incident TEXT NOT NULL,
        generation INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('opened', 'repeat', 'resolved', 'acknowledged')),
        seq INTEGER NOT NULL DEFAULT 0,
        severity TEXT NOT NULL,
        created REAL NOT NULL,
        due REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sending', 'sent', 'cancelled')),
        lease_owner TEXT,
        lease_until REAL,
        last_error TEXT NOT NULL DEFAULT '',
        sent_at REAL,
        UNIQUE (target, incident, generation, kind, seq)
    );
    INSERT INTO outbox_v2 SELECT * FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_v2 RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox (state, target, due);
    """,
]


@dataclass
class Acknowledged:
    """What :meth:`Outbox.acknowledge` did."""

    keys: list[str] = field(default_factory=list)
    #: Outbox rows queued to end the alert: (row id, target id, label).
    rows: list[tuple[int, str, str]] = field(default_factory=list)


@dataclass
class Row:
    """One claimed outbox row."""

    id: int
    target: str
    incident: str
    generation: int
    kind: str
    seq: int
    attempts: int


def owner_id() -> str:
    """This process, as a lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str | None) -> bool:
    """Whether a lease owner may still be running (only a process of this host can be proven dead)."""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Outbox:
    """The outbox table of the shared database; shares the store's connection and transactions."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn: sqlite3.Connection = store.conn
        db.migrate(self.conn, COMPONENT, MIGRATIONS)

    def enqueue(self, targets: Iterable[tuple[str, str]], incident: str, generation: int, kind: str,  # noqa: PLR0917
                severity: str, now: float, seq: int = 0, need_announced: bool = False) -> int:
        """Add one message for each (target id, label); returns how many rows are new.

        ``need_announced`` (resolved and repeat messages) only queues for targets that were sent, or are
        still to be sent, the ``opened`` message of this generation.
        """
        with self.store.transaction() as c:
            return _insert(c, targets, incident, generation, kind, severity, now, seq, need_announced)

    def record(self, inc: Mapping[str, Any], change: str, now: float,
               wanted: Callable[[StoredIncident, str], list[tuple[str, str]]],
               occurrence: Occurrence | None = None) -> tuple[str, StoredIncident | None, int]:
        """Record an incident change and queue its messages in one transaction: (what, row, rows queued).

        ``wanted(row, kind)`` names the (target id, label) pairs that get an ``opened`` or ``resolved``
        message. A reopened incident's pending messages of older generations are cancelled; a resolved one's
        pending repeats too. Call ``plugins.load()`` first when there are targets: the first import
        takes a while, and inside the write transaction it would hold the database lock.
        """
        added = 0

        def then(c: sqlite3.Connection, what: str, row: StoredIncident) -> None:
            nonlocal added
            if what == "reopened":
                c.execute("UPDATE outbox SET state = 'cancelled', last_error = 'superseded by a newer generation' "
                          "WHERE incident = ? AND generation < ? AND state = 'pending'", (row.key, row.generation))
            kind = "opened" if what in ("opened", "reopened") else "resolved" if what == "resolved" else ""
            if not kind:
                return
            if kind == "resolved":
                _cancel_repeats(c, row.key)
            want = wanted(row, kind)
            if want:
                added += _insert(c, want, row.key, row.generation, kind, row.severity, now,
                                 need_announced=kind == "resolved")

        what, row = self.store.record(inc, change, now, occurrence, then)
        return what, row, added

    def acknowledge(self, keys: list[str] | None, note: str, now: float) -> Acknowledged:
        """Acknowledge incidents (None: every open one), stop their repeats and queue their ``acknowledged``
        messages, all in one transaction, so an acknowledgement never loses the message that ends its alert.

        The message goes to each target that was sent (or is still to be sent) this generation's ``opened``
        message and whose plugin wants acknowledgements; the outbox knows those targets by their rows, so the
        process acknowledging needs no configuration of its own.
        """
        plugins.load()  # not inside the write transaction: the first import takes a while
        out = Acknowledged()

        def then(c: sqlite3.Connection, inc: StoredIncident) -> None:
            # Read before the cancelling below: a target whose opening message is still waiting (a retry's
            # backoff) may show something of the incident already (a bubble of another process), which the
            # acknowledgement ends.
            announced = c.execute("SELECT DISTINCT target, label FROM outbox WHERE incident = ? AND generation = ? "
                                  "AND kind = 'opened' AND state != 'cancelled' ORDER BY id",
                                  (inc.key, inc.generation)).fetchall()
            _cancel_unsent(c, inc.key)
            for target, label in announced:
                if not plugins.wants(label, "acknowledged"):
                    continue
                cur = c.execute("INSERT OR IGNORE INTO outbox (target, label, incident, generation, kind, seq, "
                                "severity, created, due) VALUES (?, ?, ?, ?, 'acknowledged', 0, ?, ?, ?)",
                                (target, label, inc.key, inc.generation, inc.severity, now, now))
                if cur.rowcount and cur.lastrowid is not None:
                    out.rows.append((cur.lastrowid, target, label))

        out.keys = self.store.acknowledge(keys, note, now, then)
        return out

    def cancel_repeats(self, incident: str) -> int:
        """An acknowledged or resolved incident stops repeating."""
        with self.store.transaction() as c:
            return _cancel_repeats(c, incident)

    def schedule_repeats(self, targets: Sequence[tuple[str, str, frozenset[str] | None]], interval: float,
                         now: float) -> int:
        """Queue a repeat for every open, unacknowledged incident announced more than ``interval`` ago.

        The repeat number is ``(now - opened_at) // interval``, so processes agree on it, and a repeat is only
        queued when nothing is pending for that incident and target (an outage sends one reminder, not a pile).
        """
        if interval <= 0:
            return 0
        added = 0
        for inc in self.store.open_incidents(include_acknowledged=False):
            seq = int((now - inc.opened_at) // interval)
            if seq < 1:
                continue
            with self.store.transaction() as c:
                for target, label, severities in targets:
                    if severities is not None and inc.severity not in severities:
                        continue
                    announced = c.execute(
                        "SELECT 1 FROM outbox WHERE target = ? AND incident = ? AND generation = ? AND kind = 'opened'",
                        (target, inc.key, inc.generation)).fetchone()
                    busy = c.execute("SELECT 1 FROM outbox WHERE target = ? AND incident = ? AND state IN "
                                     "('pending', 'sending')", (target, inc.key)).fetchone()
                    if announced and not busy:
                        added += c.execute(
                            "INSERT OR IGNORE INTO outbox (target, label, incident, generation, kind, seq, severity, "
                            "created, due) VALUES (?, ?, ?, ?, 'repeat', ?, ?, ?, ?)",
                            (target, label, inc.key, inc.generation, seq, inc.severity, now, now)).rowcount
        return added

    def announce_open(self, targets: Sequence[tuple[str, str, frozenset[str] | None]], now: float) -> int:
        """Queue the ``opened`` message of every open, unacknowledged incident for each (target id, label,
        severities or None) that was never given it: a target added (or fixed) after the incident opened
        hears of it once. The message's unique key makes a second call, or a second process, add nothing."""
        added = 0
        for inc in self.store.open_incidents(include_acknowledged=False):
            want = [(t, label) for t, label, severities in targets if severities is None or inc.severity in severities]
            if want:
                with self.store.transaction() as c:
                    added += _insert(c, want, inc.key, inc.generation, "opened", inc.severity, now)
        return added

    def due_now(self, targets: Sequence[str], now: float) -> int:
        """Make every pending row of ``targets`` due at once (``notify flush`` does not wait out the backoff)."""
        if not targets:
            return 0
        with self.store.transaction() as c:
            return int(c.execute(f"UPDATE outbox SET due = ? WHERE state = 'pending' AND due > ? AND target IN "  # noqa: S608
                                 f"({','.join('?' * len(targets))})", (now, now, *targets)).rowcount)

    def claim(self, targets: Sequence[str], owner: str, now: float, lease: float,  # noqa: PLR0917
              only: Sequence[int] | None = None, skip: Collection[int] = ()) -> list[Row]:
        """Take every due row of ``targets`` (and rows whose sender died, or whose lease expired, this
        owner's own included) for ``lease`` seconds; ``only`` limits it to those row ids; ``skip``: rows this
        owner holds and knows the outcome of (not yet written), never taken again."""
        if not targets or (only is not None and not only):
            return []
        marks = ",".join("?" * len(targets))
        ids = tuple(int(i) for i in only or ())
        among = f" AND id IN ({','.join('?' * len(ids))})" if only is not None else ""
        with self.store.transaction() as c:
            rows = c.execute(
                f"SELECT id, target, incident, generation, kind, seq, attempts, state, lease_owner, lease_until "  # noqa: S608
                f"FROM outbox WHERE target IN ({marks}){among} AND ((state = 'pending' AND due <= ?) "
                f"OR state = 'sending') ORDER BY id", (*targets, *ids, now)).fetchall()
            # (target, incident) pairs another live process is sending a row of: their other rows wait for it.
            # Looked up over every row, not only ``only``'s: an ack sent at once must not overtake a row in flight.
            sending = c.execute(
                f"SELECT target, incident, lease_owner, lease_until FROM outbox WHERE target IN ({marks}) "  # noqa: S608
                f"AND state = 'sending' AND lease_owner != ?", (*targets, owner)).fetchall()
            busy = {(target, incident) for target, incident, lease_owner, lease_until in sending
                    if (lease_until or 0) > now and _alive(lease_owner)}
            taken = []
            for rid, target, incident, gen, kind, seq, attempts, state, lease_owner, lease_until in rows:
                if (target, incident) in busy:
                    continue
                if state == "sending" and lease_owner == owner and (rid in skip or (lease_until or 0) > now):
                    continue  # in flight in this process (a row it lost track of is taken back once expired)
                c.execute("UPDATE outbox SET state = 'sending', lease_owner = ?, lease_until = ?, "
                          "attempts = attempts + 1 WHERE id = ?", (owner, now + lease, rid))
                taken.append(Row(rid, target, incident, gen, kind, seq, attempts + 1))
        return taken

    def renew(self, ids: Sequence[int], owner: str, now: float, lease: float) -> list[int]:
        """Extend the lease of the rows this owner still holds, just before sending them; returns those rows.

        One pass may send to many slow targets, each up to apprise's timeouts: the lease taken at the claim
        may run out before the last target's turn, and another process may take its rows over. A row not
        returned here is no longer this owner's to send."""
        with self.store.transaction() as c:
            return [i for i in ids if c.execute("UPDATE outbox SET lease_until = ? WHERE id = ? AND lease_owner = ? "
                                                "AND state = 'sending'", (now + lease, i, owner)).rowcount]

    def mark_sent(self, ids: Sequence[int], owner: str, now: float) -> int:
        """Delivered: only rows this owner still leases (a taken-over lease is not marked twice)."""
        with self.store.transaction() as c:
            return sum(c.execute("UPDATE outbox SET state = 'sent', sent_at = ?, last_error = '', lease_owner = NULL, "
                                 "lease_until = NULL WHERE id = ? AND lease_owner = ? AND state = 'sending'",
                                 (now, i, owner)).rowcount for i in ids)

    def mark_cancelled(self, ids: Sequence[int], owner: str, why: str) -> int:
        """Claimed but no longer to be sent (superseded by a newer generation, or a repeat of an incident that
        is no longer open): only rows this owner still leases."""
        with self.store.transaction() as c:
            return sum(c.execute("UPDATE outbox SET state = 'cancelled', last_error = ?, lease_owner = NULL, "
                                 "lease_until = NULL WHERE id = ? AND lease_owner = ? AND state = 'sending'",
                                 (why, i, owner)).rowcount for i in ids)

    def mark_failed(self, ids: Sequence[int], owner: str, now: float, error: str, backoff: float,  # noqa: PLR0917
                    backoff_max: float) -> None:
        """Not delivered: back to pending, due after ``backoff * 2**(attempts-1)`` capped at ``backoff_max``."""
        with self.store.transaction() as c:
            for i in ids:
                r = c.execute("SELECT attempts FROM outbox WHERE id = ?", (i,)).fetchone()
                delay = min(backoff_max, backoff * 2 ** max(0, (r[0] if r else 1) - 1))
                c.execute("UPDATE outbox SET state = 'pending', due = ?, last_error = ?, lease_owner = NULL, "
                          "lease_until = NULL WHERE id = ? AND lease_owner = ? AND state = 'sending'",
                          (now + delay, error[:500], i, owner))

    def next_due(self, targets: Sequence[str]) -> float | None:
        """When the next pending row of ``targets`` is due."""
        if not targets:
            return None
        r = self.conn.execute(f"SELECT MIN(due) FROM outbox WHERE state = 'pending' AND target IN "  # noqa: S608
                              f"({','.join('?' * len(targets))})", tuple(targets)).fetchone()
        return float(r[0]) if r and r[0] is not None else None

    def unsent_for_ack(self) -> list[tuple[str, str, str]]:
        """Messages of incidents still acknowledged that were cancelled because the acknowledgement came before
        them: (label, incident, kind)."""
        q = ("SELECT o.label, o.incident, o.kind FROM outbox o JOIN incidents i ON i.key = o.incident "
             "AND i.generation = o.generation WHERE i.status = 'acknowledged' AND o.state = 'cancelled' "
             "AND o.last_error = ? ORDER BY o.id")
        return [(str(a), str(b), str(c)) for a, b, c in self.conn.execute(q, (ACKNOWLEDGED_FIRST,)).fetchall()]

    def pending(self, targets: Sequence[str] | None = None) -> list[tuple[int, str, str, str, int, str, float, str]]:
        """Undelivered rows: (id, label, incident, kind, attempts, state, due, last error)."""
        q = ("SELECT id, label, incident, kind, attempts, state, due, last_error FROM outbox "
             "WHERE state IN ('pending', 'sending')")
        args: tuple[str, ...] = ()
        if targets is not None:
            q += f" AND target IN ({','.join('?' * len(targets))})"
            args = tuple(targets)
        return [tuple(r) for r in self.conn.execute(q + " ORDER BY id", args).fetchall()]


#: Why an opening or repeat message was not sent (``notify list --all`` and the docs quote it).
ACKNOWLEDGED_FIRST = "cancelled: acknowledged before it was sent"


def _cancel_unsent(c: sqlite3.Connection, incident: str) -> int:
    """An acknowledged incident's opening and repeat messages not yet sent are never sent: nobody needs telling
    of a failure someone already acknowledged (and a bubble shown after the acknowledgement closed the others
    would stay up). Rows in flight (``sending``) are checked again by the worker before it sends them."""
    return int(c.execute("UPDATE outbox SET state = 'cancelled', last_error = ? WHERE incident = ? "
                         "AND kind IN ('opened', 'repeat') AND state = 'pending'",
                         (ACKNOWLEDGED_FIRST, incident)).rowcount)


def _cancel_repeats(c: sqlite3.Connection, incident: str) -> int:
    return int(c.execute("UPDATE outbox SET state = 'cancelled' WHERE incident = ? AND kind = 'repeat' "
                         "AND state = 'pending'", (incident,)).rowcount)


def _insert(c: sqlite3.Connection, targets: Iterable[tuple[str, str]], incident: str, generation: int,  # noqa: PLR0917
            kind: str, severity: str, now: float, seq: int = 0, need_announced: bool = False) -> int:
    added = 0
    for target, label in targets:
        if need_announced and not c.execute(
                "SELECT 1 FROM outbox WHERE target = ? AND incident = ? AND generation = ? AND kind = 'opened' "
                "AND state != 'cancelled'", (target, incident, generation)).fetchone():
            continue
        cur = c.execute("INSERT OR IGNORE INTO outbox (target, label, incident, generation, kind, seq, "
                        "severity, created, due) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (target, label, incident, generation, kind, seq, severity, now, now))
        added += cur.rowcount
    return added
