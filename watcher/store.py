"""The incident store: every incident a person has not yet dealt with, shared by every specwatch process.

An incident row is keyed by ``Incident.key`` and has a lifecycle: ``open`` -> ``acknowledged`` (a person,
with an optional note) or ``resolved`` (the server later loaded with working speculation). A *new
occurrence* (see :class:`Occurrence`) after ``resolved`` or ``acknowledged`` opens it again in a new
*generation* (the outbox keys its messages by generation, so a reopened incident is announced again: an
acknowledgement ends the alert, so it must not silence the next failure). A failure first reported already
resolved (it recovered before it settled) is stored ``resolved``, logged as opened then resolved, and not
announced (its ``resolved`` message needs an announced ``opened``). A new occurrence of an open one bumps
``count``. A reader of a restart loop records its incident again with a higher ``count``: the loads it
adds are new occurrences, so the first of them after an acknowledgement reopens it. The same occurrence read
again (a second ``scan`` of a file, ``watch --from-start``, the lines a restarted ``watch`` reads again after
its last checkpoint) changes no status and no count; a restart loop read again that went on since (from its
first load, or from inside the loop last counted) adds only its loads after the last one counted. Every
transition is also written to ``incident_log`` for ``specwatch history``.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watcher import db

COMPONENT = "incidents"
MIGRATIONS = [
    """
    CREATE TABLE incidents (
        key TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        source TEXT NOT NULL,
        host TEXT NOT NULL,
        slots TEXT NOT NULL DEFAULT '[]',
        evidence TEXT NOT NULL DEFAULT '[]',
        hint TEXT NOT NULL DEFAULT '',
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        opened_at REAL NOT NULL,
        count INTEGER NOT NULL DEFAULT 1,
        generation INTEGER NOT NULL DEFAULT 1,
        status TEXT NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
        ack_note TEXT NOT NULL DEFAULT '',
        acked_at REAL,
        resolved_at REAL,
        resolution TEXT NOT NULL DEFAULT '',
        details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX incidents_status ON incidents (status, last_seen);
    CREATE TABLE incident_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL,
        at REAL NOT NULL,
        what TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX incident_log_at ON incident_log (at);
    """,
    # The occurrence last counted (who read it, its run and first line) and the furthest first line counted.
    """
    ALTER TABLE incidents ADD COLUMN occ_reader TEXT NOT NULL DEFAULT '';
    ALTER TABLE incidents ADD COLUMN occ_run INTEGER;
    ALTER TABLE incidents ADD COLUMN occ_line INTEGER;
    ALTER TABLE incidents ADD COLUMN occ_max_line INTEGER;
    """,
    # How many times the occurrence last counted had recurred (a restart loop is one incident, counted): a
    # later record of the same occurrence adds only what is new.
    """
    ALTER TABLE incidents ADD COLUMN occ_count INTEGER NOT NULL DEFAULT 1;
    """,
    # The furthest line of any load counted (a restart loop's later loads lie past its first line): a process
    # that resumes inside a counted loop tells its loads apart from those, and a new file is numbered past them.
    """
    ALTER TABLE incidents ADD COLUMN occ_last_line INTEGER;
    """,
]

#: What ``record`` did: the outbox announces ``opened`` and ``reopened``, and ``resolved``.
TRANSITIONS = ("opened", "reopened", "repeat", "updated", "resolved", "unchanged")


class AmbiguousIdError(LookupError):
    """An id prefix matched more than one incident."""


@dataclass(frozen=True)
class Occurrence:
    """Which occurrence of an incident a record is about: a failure of one server load, read by one reader.

    ``reader`` names the specwatch process (one sink) that read it; ``rereadable`` says whether its input can
    be read again by another process (a log file, the journal: ``scan``, ``watch``) or not (a pipe's stdin,
    the output of the server ``run`` started). ``run`` and ``line`` are the incident's run number and first
    line. Whether a record is a *new* occurrence of a stored incident:

    - from the reader that recorded the last one: a new one when its run or first line differ (the
      dispatcher announces every server load of its stream once);
    - from another reader of a re-readable input: only a first line past every one counted so far (line
      numbers of a file are kept across restarts by the checkpoints), so reading the same lines again
      is the same occurrence; one that starts at a load of the restart loop last counted continues that
      loop (``Store.record`` counts its loads past the last one counted, as it does for the loop read again
      from its first line);
    - from another reader of an input that cannot be read again: always (a new pipe is a new server start).
    """

    reader: str = ""
    rereadable: bool = True
    run: int = 0
    line: int = 0
    #: The furthest line the record covers (its last load's, for a restart loop).
    last: int = 0

    @classmethod
    def of(cls, inc: Mapping[str, Any], reader: str = "", rereadable: bool = True) -> Occurrence:
        """The occurrence of an ``Incident.as_dict()``."""
        line = int(inc.get("first_line") or 0)
        return cls(reader, rereadable, int(inc.get("run") or 0), line, max(int(inc.get("last_line") or 0), line))

    def is_new(self, reader: str, run: int | None, line: int | None, max_line: int | None) -> bool:
        """Whether this is a new occurrence after the stored one (``reader``, ``run``, ``line``, ``max_line``)."""
        if line is None or max_line is None:
            return True  # a row from before occurrences were stored
        if self.reader and self.reader == reader:
            return (self.run, self.line) != (run, line)
        if self.rereadable:
            return self.line > max_line
        return True


@dataclass
class StoredIncident:
    """One row of the store, as the commands and the notifiers see it."""

    key: str
    kind: str
    severity: str
    title: str
    source: str
    host: str
    slots: list[int]
    evidence: list[dict[str, Any]]
    hint: str
    first_seen: float
    last_seen: float
    opened_at: float
    count: int
    generation: int
    status: str
    ack_note: str
    acked_at: float | None
    resolved_at: float | None
    resolution: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``specwatch status --json``, the notifier contract)."""
        return {
            "id": self.key, "kind": self.kind, "severity": self.severity, "title": self.title,
            "status": self.status, "source": self.source, "host": self.host, "slots": list(self.slots),
            "hint": self.hint, "evidence": list(self.evidence), "count": self.count,
            "first_seen": self.first_seen, "last_seen": self.last_seen, "opened_at": self.opened_at,
            "generation": self.generation, "ack_note": self.ack_note, "acked_at": self.acked_at,
            "resolved_at": self.resolved_at, "resolution": self.resolution, "details": dict(self.details),
        }


_COLUMNS = ("key, kind, severity, title, source, host, slots, evidence, hint, first_seen, last_seen, opened_at, "
            "count, generation, status, ack_note, acked_at, resolved_at, resolution, details")


def _row(r: tuple[Any, ...]) -> StoredIncident:
    (key, kind, severity, title, source, host, slots, evidence, hint, first_seen, last_seen, opened_at,
     count, generation, status, ack_note, acked_at, resolved_at, resolution, details) = r
    return StoredIncident(key, kind, severity, title, source, host, json.loads(slots), json.loads(evidence), hint,
                          first_seen, last_seen, opened_at, count, generation, status, ack_note, acked_at,
                          resolved_at, resolution, json.loads(details))


class Store:
    """Incidents in the shared SQLite database; every method is one short transaction."""

    def __init__(self, conn: sqlite3.Connection, host: str | None = None) -> None:
        self.conn = conn
        self.host = host or socket.gethostname()
        db.migrate(conn, COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, path: Path, host: str | None = None, timeout: float = db.BUSY_TIMEOUT) -> Store:
        """Open (creating and migrating) the store at ``path``; ``timeout``: how long a write waits for a lock.

        Raises :class:`watcher.db.StoreError` (naming the file) when it cannot be opened.
        """
        return db.opened(path, lambda conn: cls(conn, host), timeout)

    def close(self) -> None:
        """Release the connection."""
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` so concurrent writers serialise instead of failing mid-way."""
        with db.immediate(self.conn) as conn:
            yield conn

    def record(self, inc: Mapping[str, Any], change: str, now: float,
               occurrence: Occurrence | None = None,
               then: Callable[[sqlite3.Connection, str, StoredIncident], None] | None = None,
               ) -> tuple[str, StoredIncident | None]:
        """Apply one incident change (``Incident.as_dict()``, and the dispatcher's change) and say what it did.

        ``occurrence`` (default: from ``inc``, a re-readable input) decides whether an ``opened`` change is a new
        occurrence (see :class:`Occurrence`): only a new one reopens or counts; the same one read again is an
        update. ``then`` runs inside the same transaction with what was done and the row (the outbox queues the
        messages there, so an incident and its messages commit together or not at all).
        """
        key = str(inc["id"])
        occ = occurrence or Occurrence.of(inc)
        with self.transaction() as c:
            r = c.execute(f"SELECT {_COLUMNS} FROM incidents WHERE key = ?", (key,)).fetchone()  # noqa: S608
            old = _row(r) if r else None
            seen = c.execute("SELECT occ_reader, occ_run, occ_line, occ_max_line, occ_count, occ_last_line "
                             "FROM incidents WHERE key = ?", (key,)).fetchone()
            new = old is not None and occ.is_new(*seen[:4])
            times = max(int(inc.get("count") or 1), 1)  # server loads this one record stands for
            inside = old is not None and new and _inside(occ, seen)
            if inside:
                # A loop begun inside the one last counted: another process resumed there (the one that counted
                # it was killed before its checkpoint passed those loads) and reads them again. They are not new;
                # its loads after the last one counted are. Runs of one stream are numbered alike across restarts.
                new, times = False, times - (int(seen[1]) + int(seen[4] or 1) - occ.run)
            # The occurrence last counted, told again: only the loads it recurred since are new. Told by its
            # reader, or read again by another from a re-readable input, whose line numbers name it: a watch
            # killed before its checkpoint passed a counted load reads it again, and the restart loop it starts
            # may have gone on since (those loads are new, although the occurrence is not).
            same = old is not None and occ.line == seen[2] and (
                occ.run == seen[1] if occ.reader == seen[0] else occ.rereadable and not new)
            recurred = max(times - int(seen[4] or 1), 0) if same else max(times, 0) if inside else 0
            same = same or inside
            if change == "opened" and old is not None and not new:
                change = "updated"  # the same occurrence, read again
            fields = (inc["kind"], inc["severity"], inc["title"], inc["source"], self.host,
                      json.dumps(inc.get("slots", [])), json.dumps(inc.get("evidence", [])[:8]),
                      inc.get("hint", ""), json.dumps(_details(inc)))
            if (change == "resolved" or inc.get("status") == "resolved") and old is None:
                # It failed and recovered before it settled: the failure happened, so it is stored, and
                # history shows it opened, then resolved.
                c.execute(f"INSERT INTO incidents ({_COLUMNS}) VALUES "  # noqa: S608
                          "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'resolved', '', NULL, ?, ?, ?)",
                          (key, *fields[:8], now, now, now, times, now, inc.get("resolution", ""), fields[8]))
                c.execute("INSERT INTO incident_log (key, at, what, note) VALUES (?, ?, 'opened', '')", (key, now))
                what = "resolved"
            elif change == "resolved" or inc.get("status") == "resolved":
                if old is None or old.status == "resolved" or (not new and occ.line < (seen[2] or 0)
                                                               and occ.reader != seen[0]):
                    what = "unchanged"  # nothing to resolve, or the resolution of an older occurrence read again
                else:
                    c.execute("UPDATE incidents SET status = 'resolved', resolved_at = ?, resolution = ?, "
                              "last_seen = ? WHERE key = ?", (now, inc.get("resolution", ""), now, key))
                    what = "resolved"
            elif old is None:
                c.execute(f"INSERT INTO incidents ({_COLUMNS}) VALUES "  # noqa: S608
                          "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, 'open', '', NULL, NULL, '', ?)",
                          (key, *fields[:8], now, now, now, times, fields[8]))
                what = "opened"
            elif change == "updated" and old.status == "resolved" and occ.reader != seen[0]:
                what = "unchanged"  # another reader's replay of an occurrence that has since resolved
            elif old.status == "resolved" or (old.status == "acknowledged" and (change == "opened" or recurred)):
                # A server load that failed after the acknowledgement (a restart loop goes on) is the next
                # failure the ack must not silence: it opens the incident again, once; later loads count.
                add = times if change == "opened" or not same else recurred
                c.execute("UPDATE incidents SET kind = ?, severity = ?, title = ?, source = ?, host = ?, slots = ?, "
                          "evidence = ?, hint = ?, details = ?, last_seen = ?, opened_at = ?, count = count + ?, "
                          "generation = generation + 1, status = 'open', ack_note = '', acked_at = NULL, "
                          "resolved_at = NULL, resolution = '' WHERE key = ?", (*fields, now, now, add, key))
                what = "reopened"
            else:
                bump = times if change == "opened" else recurred
                c.execute("UPDATE incidents SET kind = ?, severity = ?, title = ?, source = ?, host = ?, slots = ?, "
                          "evidence = ?, hint = ?, details = ?, last_seen = ?, count = count + ? WHERE key = ?",
                          (*fields, now, bump, key))
                what = "repeat" if bump else "updated"
            if what in ("opened", "reopened", "repeat") or old is None:
                c.execute("UPDATE incidents SET occ_reader = ?, occ_run = ?, occ_line = ?, occ_count = ?, "
                          "occ_max_line = MAX(COALESCE(occ_max_line, ?), ?), "
                          "occ_last_line = MAX(COALESCE(occ_last_line, ?), ?) WHERE key = ?",
                          (occ.reader, occ.run, occ.line, max(int(inc.get("count") or 1), 1), occ.line, occ.line,
                           occ.last, occ.last, key))
            last = c.execute("SELECT id, what FROM incident_log WHERE key = ? ORDER BY id DESC LIMIT 1",
                             (key,)).fetchone()
            if what == "repeat" and last is not None and last[1] == "repeat":
                # A restart loop: one history row that keeps the count, not a row per restart.
                c.execute("UPDATE incident_log SET at = ?, note = (SELECT count || ' times' FROM incidents "
                          "WHERE key = ?) WHERE id = ?", (now, key, last[0]))
            elif what != "unchanged":
                note = inc.get("resolution", "") if what == "resolved" else ""
                if what == "repeat":
                    (count,) = c.execute("SELECT count FROM incidents WHERE key = ?", (key,)).fetchone()
                    note = f"{count} times"
                c.execute("INSERT INTO incident_log (key, at, what, note) VALUES (?, ?, ?, ?)", (key, now, what, note))
            r = c.execute(f"SELECT {_COLUMNS} FROM incidents WHERE key = ?", (key,)).fetchone()  # noqa: S608
            row = _row(r) if r else None
            if then is not None and row is not None:
                then(c, what, row)
        return what, row

    def lines_counted(self, source: str) -> int:
        """The furthest line of a load counted for ``source``'s incidents (0: none)."""
        r = self.conn.execute("SELECT MAX(MAX(occ_max_line, COALESCE(occ_last_line, 0))) FROM incidents "
                              "WHERE source = ?", (source,)).fetchone()
        return int(r[0] or 0) if r else 0

    def resolve_id(self, prefix: str) -> str | None:
        """The full key an id (or a unique prefix of one, as ``status`` prints them) names."""
        rows = self.conn.execute("SELECT key FROM incidents WHERE key LIKE ? ESCAPE '\\'",
                                 (prefix.replace("%", "\\%").replace("_", "\\_") + "%",)).fetchall()
        if len(rows) > 1:
            raise AmbiguousIdError(f"id {prefix} matches {len(rows)} incidents; give more characters")
        return rows[0][0] if rows else None

    def acknowledge(self, keys: list[str] | None, note: str, now: float,
                    then: Callable[[sqlite3.Connection, StoredIncident], None] | None = None) -> list[str]:
        """Acknowledge the open incidents ``keys`` (None: all open ones); returns the keys changed.

        ``then`` runs inside the same transaction for each acknowledged incident (the outbox queues the
        message that ends the alert there, so the status change and its message commit together or not at all).
        """
        with self.transaction() as c:
            if keys is None:
                keys = [r[0] for r in c.execute("SELECT key FROM incidents WHERE status = 'open'")]
            done = []
            for key in keys:
                cur = c.execute("UPDATE incidents SET status = 'acknowledged', ack_note = ?, acked_at = ? "
                                "WHERE key = ? AND status = 'open'", (note, now, key))
                if cur.rowcount:
                    done.append(key)
                    c.execute("INSERT INTO incident_log (key, at, what, note) VALUES (?, ?, 'acknowledged', ?)",
                              (key, now, note))
                    if then is not None:
                        r = c.execute(f"SELECT {_COLUMNS} FROM incidents WHERE key = ?", (key,)).fetchone()  # noqa: S608
                        then(c, _row(r))
        return done

    def get(self, key: str) -> StoredIncident | None:
        """One incident by its full key."""
        r = self.conn.execute(f"SELECT {_COLUMNS} FROM incidents WHERE key = ?", (key,)).fetchone()  # noqa: S608
        return _row(r) if r else None

    def open_incidents(self, include_acknowledged: bool = True) -> list[StoredIncident]:
        """Incidents not resolved (``status``), newest first."""
        states = ("open", "acknowledged") if include_acknowledged else ("open",)
        rows = self.conn.execute(f"SELECT {_COLUMNS} FROM incidents WHERE status IN "  # noqa: S608
                                 f"({','.join('?' * len(states))}) ORDER BY last_seen DESC", states).fetchall()
        return [_row(r) for r in rows]

    def history(self, limit: int = 50, since: float | None = None) -> list[tuple[float, str, str, str, str]]:
        """Recent transitions, newest first: (time, key, what, note, title)."""
        rows = self.conn.execute(
            "SELECT l.at, l.key, l.what, l.note, COALESCE(i.title, '') FROM incident_log l "
            "LEFT JOIN incidents i ON i.key = l.key WHERE l.at >= ? ORDER BY l.at DESC, l.id DESC LIMIT ?",
            (since if since is not None else 0.0, limit)).fetchall()
        return [(float(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]


def _details(inc: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("model", "draft_model", "device", "mib", "reason", "server_state", "confidence", "run")
    return {k: inc.get(k) for k in keep if inc.get(k) is not None}


def _inside(occ: Occurrence, seen: tuple[Any, ...]) -> bool:
    """Whether ``occ``, read by another process of a re-readable input, begins inside the loop last counted
    (``seen``: its reader, run, first line, furthest first line, count, furthest line): at a load already counted."""
    reader, run, line, _max, count, last = seen
    if not occ.rereadable or occ.reader == reader or line is None or run is None or last is None:
        return False
    return bool(line < occ.line <= last and run < occ.run <= run + int(count or 1) - 1)
