"""The store-and-notify sink: records every incident change and queues its messages, without blocking.

``incident()`` only puts a snapshot on a queue; a recorder thread writes it to the store and the outbox and
wakes the delivery worker (started only when targets are configured). At exit the sink records what is
queued, gives delivery a short grace period, and leaves anything undelivered in the outbox for the next
specwatch process with targets (a pipe, ``watch``, ``run`` or ``specwatch notify flush``).

The notification worker reports each delivery attempt to the dispatcher the sink is attached to, for the
metrics endpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher import config as cfg
from watcher.dispatch import Extension
from watcher.errors import UsageError
from watcher.notify import DEFAULT_BACKOFF, DEFAULT_BACKOFF_MAX, DEFAULT_REPEAT, plugins
from watcher.notify import targets as tg

# The store, the outbox, the delivery worker and the load ledger (and sqlite3 under them) load when a sink is
# built, not with the command line that only lists this extension's options.
if TYPE_CHECKING:
    from watcher.dispatch import Dispatcher
    from watcher.environment import Environment
    from watcher.incidents import Incident
    from watcher.loads import History, LoadBook
    from watcher.loads import Settings as LedgerSettings
    from watcher.notify.outbox import Outbox
    from watcher.notify.worker import Settings
    from watcher.store import Store, StoredIncident

#: Commands whose input another process can read again (files, the journal): the same lines read again are
#: the same occurrence. Pipe mode and ``run`` read a stream once: each process reads new occurrences.
REREADABLE = frozenset({"scan", "watch"})
#: Seconds a pipe waits at EOF for queued messages to go out before exiting (the rest stay queued).
EXIT_GRACE = 5.0
#: Seconds the recorder waits for another process's write lock before it retries (each retry waits again).
RECORD_BUSY_TIMEOUT = 1.0
#: Seconds the analysis waits, once, for the recorder to read earlier loads (the pipe's output never waits):
#: the store opens in milliseconds; a locked one must not hold the warnings back for long.
HISTORY_WAIT = 2.0
#: First and longest pause between attempts to record while the database refuses writes.
RETRY_FIRST, RETRY_MAX = 0.25, 5.0
#: Waiting changes past which any later change of an incident already waiting replaces it (bounded memory).
BACKLOG = 1000
#: Seconds ``close`` waits for the recorder to store what is queued (a locked or full database).
CLOSE_WAIT = 10.0


class StoreSink:
    """Writes incident changes into the store and the outbox; owns the delivery worker.

    An incident change the database refuses (another process holds the write lock, the disk is full) is
    kept and retried until it is stored, saying so once while it waits and once when it is stored. While
    it waits, a later update of the same incident replaces its snapshot, and past :data:`BACKLOG` waiting
    changes any later change of an incident already waiting replaces that one (but never the change that
    first records it: an incident that opens and resolves meanwhile is stored opened, then resolved), so
    memory stays bounded at two waiting changes per incident (repeats counted in that time are lost; the
    incident, its opening and its last state are not).
    """

    def __init__(self, db_path: Path, targets: list[tg.Target], settings: Settings, env: Environment,  # noqa: PLR0917
                 exit_grace: float = EXIT_GRACE, rereadable: bool = False, open_now: bool = True,
                 opener: Callable[[], Store] | None = None, ledger: LedgerSettings | None = None) -> None:
        import uuid

        from watcher.loads import Settings as LedgerSettings
        from watcher.notify.worker import Worker
        from watcher.store import Store

        self.db_path = db_path
        #: This process as a reader of its input (see watcher.store.Occurrence): a pipe's stdin or a server's
        #: output cannot be read twice, so every occurrence a new one reads is new; ``scan`` and ``watch``
        #: read files that other processes may read again.
        self.reader = uuid.uuid4().hex
        self.rereadable = rereadable
        self.targets = targets
        self.env = env
        self.exit_grace = exit_grace
        self.ledger = ledger or LedgerSettings()
        #: Incident changes (dict, change, time) and load records (dict, "load", time), in arrival order.
        self.queue: queue.Queue[tuple[dict[str, Any], str, float] | None] = queue.Queue()
        #: Earlier loads (see watcher.loads.LoadTracker), read when the store is opened; None if they cannot be.
        self._history: History | None = None
        self._history_read = threading.Event()
        self._book: LoadBook | None = None
        self._loads_written = 0
        #: Changes taken from the queue and not yet stored, oldest first (the recorder thread's own); each entry
        #: is (record, change, time, how many queued items it stands for, merged ones included).
        self.backlog: deque[list[Any]] = deque()
        # Items queued, and of those committed to the database: ``watch`` checkpoints wait until they are equal.
        # One refused for good is never committed: the checkpoints stay before its lines, so a restart reads
        # them again.
        self._accepted = 0
        self._accepted_lock = threading.Lock()
        self._committed = 0  # the recorder thread's own
        #: Attempts the database refused (a lock, a full disk), for the notices and the tests.
        self.refused = 0
        self._closing = False
        self._open = opener or (lambda: Store.open(db_path, timeout=RECORD_BUSY_TIMEOUT))
        self.worker = Worker(db_path, targets, settings, env.clock, self._log) if targets else None
        # ``open_now``: a command whose output is the store's (``scan --notify``, ``watch``) fails now on a bad
        # state dir; otherwise (a pipe, ``run``) the recorder opens it beside the server's output, which never
        # waits for it, and says so if it cannot.
        self._store: Store | None = self._open() if open_now else None
        if self._store is not None:
            self._read_history(self._store)
        self.recorder = threading.Thread(target=self._record_loop, name="specwatch-store", daemon=True)
        self.recorder.start()
        if self.worker is not None:
            self.worker.start()

    def _log(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.env.stderr.write(text.rstrip() + "\n")

    def attach(self, disp: Dispatcher) -> None:
        """Report every delivery attempt through ``disp`` (counted by the metrics endpoint)."""
        if self.worker is not None:
            self.worker.on_result = lambda res: disp.delivered(res.target.url, res.ok)

    def incident(self, inc: Incident, change: str) -> None:
        """Queue a snapshot; the analysis thread never waits for the disk or the network."""
        with self._accepted_lock:
            self._accepted += 1
        self.queue.put((inc.as_dict(), change, self.env.clock()))

    def load(self, rec: dict[str, Any]) -> None:
        """Queue a load record (watcher.loads); the recorder thread writes it like an incident change."""
        with self._accepted_lock:
            self._accepted += 1
        self.queue.put((rec, "load", self.env.clock()))

    def pending(self) -> int:
        """Items queued and not yet committed to the database."""
        return self._accepted - self._committed

    def history(self) -> History | None:
        """Earlier loads from the store. Asked by the analysis thread (never the pipe's) when a warning needs
        them; until the recorder has opened the store it waits at most ``HISTORY_WAIT`` seconds, once."""
        self._history_read.wait(HISTORY_WAIT)
        return self._history

    def _read_history(self, store: Store) -> None:
        from watcher import db
        from watcher.loads import HISTORY_LOADS, History, LoadBook

        try:
            self._book = LoadBook(store.conn)
            self._history = History(self._book.records(HISTORY_LOADS))
        except Exception as exc:  # noqa: BLE001 - advice only: without history the warnings use this process's loads
            # A locked or full database is said once by the recorder, which keeps retrying the writes.
            if not db.transient(exc):
                self._log(f"specwatch: earlier loads not read (overcommit and regression warnings use this "
                          f"run's): {exc}")
        finally:
            self._history_read.set()

    def _record_loop(self) -> None:
        try:
            outbox = self._connect()
            if outbox is not None and self._store is not None and not self._history_read.is_set():
                self._read_history(self._store)
            self._history_read.set()  # from now on nobody waits for it, read or not
            if outbox is not None and self._book is not None:
                self._prune(self._book)
            if outbox is None:
                while not self._closing and self._take(self.queue.get()):
                    pass
                return
            self._drain(outbox)
        finally:
            if self._store is not None:
                self._store.close()

    def _connect(self) -> Outbox | None:
        """The outbox over the store, opened (and migrated) here when not yet; waits out a lock or a full disk;
        None (said once) when the store cannot be used at all (a garbage file, a directory in its place)."""
        from watcher import db
        from watcher.notify.outbox import Outbox

        delay, said = RETRY_FIRST, False
        while True:
            try:
                if self._store is None:
                    self._store = self._open()
                outbox = Outbox(self._store)
                if self.targets:
                    # apprise and the plugins load only for someone to notify: without targets the store alone
                    # is kept (apprise is a third of pipe mode's CPU on a 32 MiB log).
                    plugins.load()
                if self.worker is not None and outbox.announce_open(self.worker.filters("opened"),
                                                                    self.env.clock()):
                    # A target added (or fixed) since an incident opened hears of it now, once.
                    self.worker.wake()
            except Exception as exc:  # noqa: BLE001 - say so, and keep draining the queue so nothing piles up
                cause = exc.__cause__ if isinstance(exc, db.StoreError) and exc.__cause__ else exc
                # At the end of input too: ``close`` bounds the wait (and says what it could not record).
                if not db.transient(cause):
                    where = str(exc) if isinstance(exc, db.StoreError) else db.describe(self.db_path, exc)
                    self._log(f"specwatch: incidents are not recorded or notified: incident store {where}")
                    return None
                self.refused += 1
                if not said:
                    said = True
                    self._log(f"specwatch: incident store {db.describe(self.db_path, cause)}; keeping incidents "
                              "in memory and retrying")
                self._wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            if said:
                self._log("specwatch: incident store open again")
            return outbox

    def _drain(self, outbox: Outbox) -> None:
        from watcher import db

        delay, waiting = RETRY_FIRST, False
        while True:
            if not self.backlog and (self._closing or not self._take(self.queue.get())):
                return
            self._take_ready()
            try:
                self._record(outbox, *self.backlog[0][:3])
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the watcher
                if not db.transient(exc):
                    # Not something waiting cures (a bug, a constraint): report it and go on with the others. It
                    # stays uncommitted: ``watch`` keeps its checkpoints before it, and reads it again after a restart.
                    self._log(f"specwatch: cannot record incident: {exc}")
                    self.backlog.popleft()
                    continue
                self.refused += 1
                if not waiting:
                    waiting = True
                    self._log(f"specwatch: cannot record incidents yet ({exc}); keeping them and retrying")
                self._wait(delay)
                delay = min(RETRY_MAX, delay * 2)
                continue
            self._committed += self.backlog.popleft()[3]
            if waiting and not self.backlog:
                waiting, delay = False, RETRY_FIRST
                self._log("specwatch: incidents recorded again; none lost")

    def _take(self, item: tuple[dict[str, Any], str, float] | None) -> bool:
        """Add a queued change to the backlog (merging, see the class); False for the end of input."""
        if item is None:
            self._closing = True
            return False
        inc, change, now = item
        key = _backlog_key(inc, change)
        for i in range(len(self.backlog) - 1, -1, -1):
            waiting = self.backlog[i]
            if _backlog_key(waiting[0], waiting[1]) != key:
                continue
            if change == "load":
                if i > 0:
                    # a newer snapshot of the same load replaces the older
                    self.backlog[i] = [inc, change, now, waiting[3] + 1]
                    return True
                break
            if i == 0:
                break  # entry 0 is being written right now: never changed under the writer
            if change == "updated" and waiting[1] != "resolved":
                # an opening stays an opening, with the newer snapshot
                self.backlog[i] = [inc, waiting[1], now, waiting[3] + 1]
                return True
            if len(self.backlog) >= BACKLOG and (waiting[1] != "opened" or self._waits_before(i, key)):
                # Full: the newer change replaces the one waiting, as long as the incident's opening is still
                # stored before it (its history keeps the opening). A resolution followed by a failure again
                # is an update of it: kept as "resolved", the open incident was stored resolved.
                self.backlog[i] = [inc, "updated" if change == "updated" else change, now, waiting[3] + 1]
                return True
            break
        self.backlog.append([inc, change, now, 1])
        return True

    def _waits_before(self, i: int, key: tuple[str, Any]) -> bool:
        """Whether a change of the same incident (or load) waits before backlog entry ``i``."""
        return any(_backlog_key(w[0], w[1]) == key for w in itertools.islice(self.backlog, i))

    def _take_ready(self) -> None:
        """Move every change already queued into the backlog, without waiting."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if not self._take(item):
                return

    def _wait(self, delay: float) -> None:
        """Sleep before the next attempt, taking in (and merging) what the analysis queues meanwhile;
        at the end of input, the time left is ``close``'s to decide."""
        if self._closing:
            time.sleep(delay)
            return
        try:
            item = self.queue.get(timeout=delay)
        except queue.Empty:
            return
        if self._take(item):
            self._take_ready()

    def _record(self, outbox: Outbox, inc: Mapping[str, Any], change: str, now: float) -> None:
        from watcher.store import Occurrence

        if change == "load":
            self._record_load(outbox.store, inc, now)
            return
        def wanted(row: StoredIncident, kind: str) -> list[tuple[str, str]]:
            # The severity filter and the plugin's declared messages decide, for every kind alike.
            return [(t.id, t.label) for t in self.targets if t.accepts(row.severity) and plugins.wants(t.url, kind)]

        # One transaction: the incident, its messages and the cancelled ones commit together or not at all.
        _what, _row, added = outbox.record(inc, change, now, wanted, Occurrence.of(inc, self.reader, self.rereadable))
        if added and self.worker is not None:
            self.worker.wake()

    def _record_load(self, store: Store, rec: Mapping[str, Any], now: float) -> None:
        from watcher.loads import LoadBook

        if self._book is None:
            self._book = LoadBook(store.conn)
        with store.transaction():
            self._book.put(rec, now)
        self._loads_written += 1
        if self._loads_written % 100 == 0:
            self._prune(self._book)

    def _prune(self, book: LoadBook) -> None:
        """Old load records go ([ledger] keep_days, keep_loads); a database that refuses now prunes next time."""
        try:
            with book_transaction(book):
                book.prune(self.env.clock(), self.ledger.keep_days, self.ledger.keep_loads)
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: the records stay until next time
            self._log(f"specwatch: old load records not pruned yet: {exc}")

    def close(self) -> None:
        """Record what is queued (waiting up to ``CLOSE_WAIT`` seconds for a locked or full database), then
        give delivery ``exit_grace`` seconds."""
        self.queue.put(None)
        self.recorder.join(timeout=CLOSE_WAIT)
        if self.recorder.is_alive():
            left = len(self.backlog) + self.queue.qsize()
            self._log(f"specwatch: {left} incident changes could not be recorded: the incident store "
                      f"{self.db_path} still refuses writes")
        if self.worker is not None:
            self.worker.wake()
            self.worker.stop(drain=self.exit_grace)
            self._say_queued()

    def _say_queued(self) -> None:
        """Nobody is left to retry what is still queued: say how much, and how to send it."""
        from watcher.notify.outbox import Outbox
        from watcher.store import Store

        assert self.worker is not None
        try:
            store = Store.open(self.db_path)
            try:
                left = Outbox(store).pending(list(self.worker.by_id))
            finally:
                store.close()
        except Exception:  # noqa: BLE001 - a locked database: the rows are still there for notify flush
            return
        if not left:
            return
        shown = tg.labeller(self.targets, self.worker.redact)
        errors = {shown(label): err for _id, label, _inc, _kind, _n, _state, _due, err in left}
        why = "; ".join(f"{label}: {self.worker.redact(err).rstrip('.') or 'not tried yet'}"
                        for label, err in errors.items())
        n = len(left)
        self._log(f"specwatch: {n} notification{'s' if n != 1 else ''} still queued ({why}); send "
                  f"{'them' if n != 1 else 'it'} with: specwatch notify flush (with the same targets: --notify, "
                  "$SPECWATCH_NOTIFY or [notify] urls)")


def _backlog_key(item: Mapping[str, Any], change: str) -> tuple[str, Any]:
    """What two queued changes must share to be merged: an incident's id, or a load record's key."""
    return ("load", item.get("key")) if change == "load" else ("incident", item.get("id"))


@contextlib.contextmanager
def book_transaction(book: LoadBook) -> Iterator[None]:
    """One short write transaction (``BEGIN IMMEDIATE``: concurrent writers wait, they do not fail)."""
    from watcher import db  # lazily, like the store: sqlite3 loads only for a command that records

    with db.immediate(book.conn):
        yield


def ledger_settings(conf: cfg.Config) -> LedgerSettings:
    """Retention and thresholds of load records (``[ledger]``); a bad value is a usage error."""
    from watcher import loads

    try:
        return loads.settings_from(conf)
    except cfg.ConfigError as exc:
        raise UsageError(str(exc)) from exc


def settings_from(args: argparse.Namespace, conf: cfg.Config) -> Settings:
    """Repeat interval and backoff from flags and the config file."""
    from watcher.notify.worker import Settings

    repeat = getattr(args, "repeat", None)
    return Settings(
        repeat=float(repeat if repeat is not None else conf.get("notify", "repeat", DEFAULT_REPEAT)),
        backoff=float(conf.get("notify", "backoff", DEFAULT_BACKOFF)),
        backoff_max=float(conf.get("notify", "backoff_max", DEFAULT_BACKOFF_MAX)),
    )


def targets_from(args: argparse.Namespace, env: Environment, conf: cfg.Config) -> list[tg.Target]:
    """Every configured target; a bad apprise config file is a usage error."""
    configs = [*conf.get("notify", "config", []), *getattr(args, "notify_config", [])]
    flags = getattr(args, "notify", [])
    try:
        targets = tg.collect(flags, env.environ, conf.get("notify", "urls", []), configs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if targets:
        _check_understood(flags, env, conf)
    return targets


def _check_understood(flags: list[str], env: Environment, conf: cfg.Config) -> None:
    """A URL no plugin understands is a configuration error, named where it was written: it would otherwise
    be queued and retried forever. Only its scheme is shown: which parts of a URL nobody can parse are
    secrets is unknown. (apprise config files drop such URLs themselves, with a warning.)"""
    sources = [("--notify", e) for e in flags]
    sources += [("$SPECWATCH_NOTIFY", e) for e in env.environ.get("SPECWATCH_NOTIFY", "").split()]
    sources += [(f"{cfg.where(conf, 'notify', 'urls', str(e))}: key notify.urls", str(e))
                for e in conf.get("notify", "urls", [])]
    for place, entry in sources:
        url = tg.parse(entry).url
        if not entry.strip() or plugins.understood(url):
            continue
        scheme = url.partition("://")[0] if "://" in url else ""
        if scheme and not plugins.knows(scheme):
            why = f"{scheme}://...: no notification plugin knows the scheme '{scheme}'"
        elif scheme:
            why = f"{scheme}://...: the {scheme} plugin cannot parse this URL"
        else:
            why = "not a URL (expected SCHEME://...)"
        raise UsageError(f"{place}: {why} (schemes: https://github.com/caronc/apprise/wiki)")


def db_path(args: argparse.Namespace, env: Environment) -> Path:
    """The shared database, honouring ``--state-dir`` and ``$SPECWATCH_STATE_DIR``."""
    from watcher import paths

    return paths.db_path(env.environ, getattr(args, "state_dir", None))


def add_options(p: argparse.ArgumentParser) -> None:
    """``--notify``, ``--notify-config``, ``--state-dir``, ``--repeat`` (defaults suppressed, so a value given
    before the sub-command is not overwritten by the sub-command's parser)."""
    g = p.add_argument_group("alerts")
    g.add_argument("--notify", action="append", metavar="URL", default=argparse.SUPPRESS,
                   help="send alerts to this apprise URL, optionally 'critical,warning=URL' (repeatable; "
                        "also $SPECWATCH_NOTIFY and [notify] urls)")
    g.add_argument("--notify-config", action="append", metavar="FILE", default=argparse.SUPPRESS,
                   help="apprise configuration file with more targets (repeatable)")
    g.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where the incident store lives (default: $SPECWATCH_STATE_DIR or the user state dir)")
    g.add_argument("--repeat", type=cfg.flag_value("notify", "repeat"), metavar="SECONDS", default=argparse.SUPPRESS,
                   help=f"repeat open, unacknowledged alerts this often, 0 to never (default {DEFAULT_REPEAT:.0f})")


def build(args: argparse.Namespace, env: Environment, conf: cfg.Config) -> StoreSink | None:
    """The sink for an analysing command. ``scan`` reads old logs: it records only when asked to notify.

    ``scan --notify`` and ``watch`` open the store now and stop with one line (exit 2) when they cannot; a
    pipe and ``run`` never let the store delay or stop the server's output and banners: the recorder opens
    it beside them and says so if it cannot.
    """
    targets = targets_from(args, env, conf)
    command = getattr(args, "command", None)
    if command == "scan" and not getattr(args, "notify", None):
        return None
    from watcher import db  # the store (and sqlite3) load only for a command that records

    eager = command in REREADABLE
    try:
        path = db_path(args, env)
        # ``scan -`` reads stdin: a stream, read once, like pipe mode.
        rereadable = eager and "-" not in (getattr(args, "files", None) or [])
        return StoreSink(path, targets, settings_from(args, conf), env, rereadable=rereadable, open_now=eager,
                         ledger=ledger_settings(conf))
    except (OSError, db.StoreError) as exc:
        where = str(exc) if isinstance(exc, db.StoreError) else db.describe(Path(getattr(exc, "filename", "")), exc)
        if eager:
            raise UsageError(f"incident store {where}") from exc
        with contextlib.suppress(OSError, ValueError):
            env.stderr.write(f"specwatch: incidents are not recorded or notified: incident store {where}\n")
        return None


EXTENSION = Extension(add_options, build)
