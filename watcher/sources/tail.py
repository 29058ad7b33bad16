"""Follow log files, directories and globs: each file its own stream with its own analysis.

Correctness comes from a stat check on every step, as in fail2ban and mtail: read each open file to
EOF, then ask whether it was truncated (size below our offset, or its first bytes changed), replaced
(the path now names another inode: drain the old descriptor, then read the new file from byte 0) or
removed. watchdog's native observers only wake the loop early; their events are coalesced, dropped on
overflow and absent on network filesystems, so they are never trusted to say *what* changed.

Where to start: a file seen for the first time starts at EOF (``from_start`` reads its history); a file
that appears while following, or while specwatch was down under a root it already watched, is read
from byte 0; a file with a checkpoint resumes there if it is still the same file (same device, inode
and first bytes). If the file at a path was replaced while specwatch was down, the old one is looked
for by identity next to it (``app.log.1``) and drained from the checkpoint before the new one is read.

Line numbers are the path's, not one file's: a file read from its start after a rotation, a truncation or a
replacement is numbered on from the lines before it (see ``watcher.checkpoints``), so an occurrence in it is
never taken for one already counted.
"""

# ruff: noqa: PTH100, PTH111, PTH112, PTH116, PTH118, PTH120, PTH207
# (the loop stats every file on every step; plain str paths skip pathlib's objects)
from __future__ import annotations

import contextlib
import errno
import fnmatch
import glob
import hashlib
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watcher import db
from watcher.checkpoints import Checkpoint, Checkpoints, Identity
from watcher.pipeline import Analyzer

#: Bytes of a file's start hashed into its identity.
HEAD = 1024
CHUNK = 1024 * 1024
#: How long a file whose path vanished is still drained (a writer may not have reopened yet).
ROTATE_WAIT = 5.0
_GLOB_CHARS = frozenset("*?[")
#: Opening never waits (a FIFO without a writer); regular files read the same with it. Not on Windows.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
#: Seconds a pass waits for another process's write lock to record where a new file began numbering.
START_WAIT = 0.05


def count_lines(fd: int, end: int) -> int:
    """Newlines in the first ``end`` bytes of ``fd``, read with pread (the file offset stays where it is)."""
    n = pos = 0
    while pos < end:
        block = os.pread(fd, min(1 << 20, end - pos), pos)
        if not block:
            break
        n += block.count(b"\n")
        pos += len(block)
    return n


def _is_glob(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


@dataclass(frozen=True)
class Spec:
    """One PATH argument: a file, a directory (recursive) or a glob."""

    kind: str  # file | dir | glob
    path: str  # absolute
    include: tuple[str, ...] = ("*.log",)

    @property
    def key(self) -> str:
        """Checkpoint name recording that this root was watched before."""
        return f"root:{self.kind}:{self.path}"

    @property
    def watch_dir(self) -> tuple[str, bool]:
        """The directory an observer should watch for this spec, and whether recursively."""
        if self.kind == "dir":
            return self.path, True
        if self.kind == "file":
            return os.path.dirname(self.path), False
        fixed = []
        for part in Path(self.path).parts:
            if _is_glob(part):
                break
            fixed.append(part)
        return str(Path(*fixed)), True

    def files(self) -> list[str]:
        """Regular files this spec names right now."""
        if self.kind == "file":
            return [self.path]
        if self.kind == "glob":
            return sorted(p for p in glob.glob(self.path, recursive=True) if _regular(p))
        out: list[str] = []
        for root, dirs, names in os.walk(self.path):
            dirs.sort()
            out.extend(os.path.join(root, n) for n in sorted(names)
                       if any(fnmatch.fnmatch(n, pat) for pat in self.include))
        return [p for p in out if _regular(p)]


def specs(paths: Iterable[str | Path], include: Sequence[str] = ("*.log",)) -> list[Spec]:
    """Specs for command-line paths: existing directories are directories, wildcards are globs."""
    out = []
    for raw in paths:
        p = os.path.abspath(os.path.expanduser(str(raw)))
        if _is_glob(str(raw)):
            out.append(Spec("glob", p, tuple(include)))
        elif os.path.isdir(p):
            out.append(Spec("dir", p, tuple(include)))
        else:
            out.append(Spec("file", p, tuple(include)))
    return out


def _regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _head(fd: int, length: int) -> tuple[int, str]:
    data = os.pread(fd, min(HEAD, length), 0)
    return len(data), hashlib.sha256(data).hexdigest()[:32]


def identity(fd: int, st: os.stat_result) -> Identity:
    """Device, inode and the hash of the first bytes (up to ``HEAD``) of an open file."""
    n, h = _head(fd, st.st_size)
    return Identity(st.st_dev, st.st_ino, n, h)


def same_file(ident: Identity, fd: int, st: os.stat_result) -> bool:
    """Whether the open file is the one ``ident`` was taken from (same inode, same first bytes)."""
    if (st.st_dev, st.st_ino) != (ident.dev, ident.ino) or st.st_size < ident.head_len:
        return False
    return _head(fd, ident.head_len) == (ident.head_len, ident.head_hash)


@dataclass
class FileStream:
    """One followed path: its analyzer, the file now open under it and how far it was read."""

    path: str
    analyzer: Analyzer
    fd: int | None = None
    ident: Identity | None = None
    offset: int = 0  # bytes of the current file fed to the analyzer
    partial: int = 0  # of those, bytes after the last newline (not yet a complete line)
    size: int = -1  # size at the last check, to skip head checks on idle files
    gone_since: float | None = None
    saved: tuple[object, ...] = field(default=())
    #: The path's line count before the current file, when it was read from byte 0 (None: resumed, or
    #: started at its end, where its content alone decides the numbers).
    base: int | None = None
    saved_start: tuple[object, ...] = field(default=())

    def checkpoint(self) -> Checkpoint | None:
        """Where a restart must resume: the end of the last complete line fed."""
        if self.ident is None:
            return None
        return Checkpoint(f"file:{self.path}", self.ident, self.offset - self.partial, self.analyzer.lines,
                          runs=self.analyzer.stream.runs_seen)


class Follower:
    """Follows every file named by a set of specs; ``step()`` does one pass, ``run()`` loops."""

    def __init__(
        self,
        specs: Sequence[Spec],
        make_analyzer: Callable[[str], Analyzer],
        *,
        checkpoints: Checkpoints | None = None,
        counted: Callable[[str], int] | None = None,
        from_start: bool = False,
        ignore_older: float = 0.0,
        on_error: Callable[[str, str], None] | None = None,
        on_notice: Callable[[str, str], None] | None = None,
        ready: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.specs = list(specs)
        self.make_analyzer = make_analyzer
        self.checkpoints = checkpoints
        #: The furthest line of a path whose occurrences were already counted (the incident store); a file
        #: at a path that lost track of its predecessor is numbered past it.
        self.counted = counted
        self.from_start = from_start
        self.ignore_older = ignore_older
        self.on_error = on_error
        self.on_notice = on_notice
        self.ready = ready
        self.clock = clock
        self.streams: dict[str, FileStream] = {}
        self.dormant: set[str] = set()  # too old to follow now; they have a checkpoint at EOF
        self._errors: dict[str, str] = {}
        self._first = True
        self._known_roots: set[str] = set()
        self._saved_roots = False
        self.counters = {"rotations": 0, "truncations": 0, "opens": 0, "bytes": 0}

    # -- one pass ---------------------------------------------------------------------------------

    def step(self) -> int:
        """Find files, read each to EOF, handle rotation and truncation, write checkpoints."""
        before = self.counters["bytes"]
        if self._first:
            self._known_roots = {s.key for s in self.specs
                                 if self.checkpoints is not None and self.checkpoints.get(s.key)}
        now = self.clock()
        wanted = self._one_path_per_file()
        for path, spec in wanted.items():
            if path in self.streams:
                continue
            if self.ignore_older and spec.kind != "file" and self._too_old(path, now):
                if path not in self.dormant:
                    self._mark_dormant(path)
                continue
            self._adopt(path, spec)
        for s in list(self.streams.values()):
            self._follow(s, now)
        self._first = False
        self._save_starts()
        self.commit()
        return self.counters["bytes"] - before

    def _one_path_per_file(self) -> dict[str, Spec]:
        """Every path to follow, one per real file: a symlink beside a log, or a symlink loop under a glob
        (``a/loop/loop/...``), would otherwise follow one file under many names and report each failure again."""
        best: dict[str, tuple[tuple[bool, bool, int, str], Spec]] = {}
        for spec in self.specs:
            for p in spec.files():
                # The name already followed stays; otherwise the file's own name, else the shortest: a restart
                # picks the same one, so its checkpoint is found.
                real = os.path.realpath(p)
                rank = (p not in self.streams, p != real, p.count(os.sep), p)
                if real not in best or rank < best[real][0]:
                    best[real] = (rank, spec)
        return {rank[3]: spec for rank, spec in best.values()}

    def commit(self) -> None:
        """Write the checkpoints of streams that moved, once everything they raised was delivered."""
        if self.checkpoints is None or (self.ready is not None and not self.ready()):
            return
        out = []
        for s in self.streams.values():
            cp = s.checkpoint()
            if cp is None:
                continue
            sig = (cp.identity, cp.offset, cp.lines)
            if sig != s.saved:
                out.append(cp)
                s.saved = sig
        if not self._saved_roots:
            out.extend(Checkpoint(spec.key, Identity(0, 0, 0, ""), 0, 0) for spec in self.specs)
            self._saved_roots = True
        self.checkpoints.save(out)

    def _save_starts(self) -> None:
        """Record at once where each file read from its start began numbering (before its incidents can be
        recorded: they are released after this pass), and again while its identity still grows."""
        if self.checkpoints is None:
            return
        out = [s for s in self.streams.values() if s.base is not None and (s.ident, s.base) != s.saved_start]
        rows = [(f"file:{s.path}", s.ident, s.base) for s in out if s.ident is not None and s.base is not None]
        try:
            # A short wait: another process holding the write lock must not stall following.
            self.checkpoints.save_file_starts(rows, wait=START_WAIT)
        except sqlite3.OperationalError as exc:
            if not db.transient(exc):
                raise
            return  # kept, and written by a later pass (a restart before that may count these lines twice)
        for s in out:
            s.saved_start = (s.ident, s.base)

    def close(self) -> None:
        """Write final checkpoints and close every file."""
        self.commit()
        for s in self.streams.values():
            self._close_fd(s)

    # -- discovery --------------------------------------------------------------------------------

    def _too_old(self, path: str, now: float) -> bool:
        try:
            return os.stat(path).st_mtime < now - self.ignore_older
        except OSError:
            return False

    def _mark_dormant(self, path: str) -> None:
        """An old file: not held open, but given a checkpoint so that a later write resumes, not replays."""
        self.dormant.add(path)
        if self.checkpoints is None or self.checkpoints.get(f"file:{path}") is not None:
            return
        try:
            fd = os.open(path, os.O_RDONLY | _NONBLOCK)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            # Counted once, so a later write is numbered as a scan of the whole file would number it.
            lines = count_lines(fd, st.st_size)
            self.checkpoints.save([Checkpoint(f"file:{path}", identity(fd, st), st.st_size, lines)])
        finally:
            os.close(fd)

    def _adopt(self, path: str, spec: Spec) -> None:
        """Start following ``path``: resume, replay what was missed while down, or start at EOF."""
        self.dormant.discard(path)
        s = FileStream(path, self.make_analyzer(path))
        if not self._open(s):
            if not os.path.lexists(path):
                # Named but not there yet: follow it from byte 0 once it appears.
                self.streams[path] = s
            return
        self.streams[path] = s
        assert s.fd is not None
        st = os.fstat(s.fd)
        cp = self.checkpoints.get(f"file:{path}") if self.checkpoints is not None else None
        if cp is None and self._first and spec.key not in self._known_roots and not self.from_start:
            # Seen for the first time: start at its end. The history is skipped, not its line count: evidence
            # keeps the line numbers scan would give.
            start = st.st_size
            s.analyzer.framer.lines = count_lines(s.fd, start)
            s.base = 0
        else:
            start = self._place(s, st, cp)
        os.lseek(s.fd, start, os.SEEK_SET)
        s.offset = start
        s.ident = identity(s.fd, st)

    def _place(self, s: FileStream, st: os.stat_result, cp: Checkpoint | None, resume: bool = True) -> int:
        """Where to read the file just opened for ``s`` from, and what to number its lines from.

        Two records say where a previous process got to: the checkpoint (which trails the incident store) and
        the file start (the file it was reading and the line count before that file, written at once, its
        identity kept up to date as the file's first KiB fills). The checkpoint is resumed only if it is of
        this very file. A file the previous process started is read from its start and numbered as it did:
        its lines are the same occurrences. Any other file at a path read before is new to everyone: the rest
        of the checkpointed file is read if it is found next to it, and the new one is numbered past the
        checkpoint, that file start and every line the store counted for the path (the previous process may
        have counted lines after its checkpoint that are gone now, with a copy-truncate). A path never seen
        before is read from its start with the numbers ``scan`` gives.
        """
        assert s.fd is not None
        started = self.checkpoints.file_start(f"file:{s.path}") if self.checkpoints is not None else None
        mine = started is not None and same_file(started[0], s.fd, st)
        here = cp is not None and same_file(cp.identity, s.fd, st)
        # The checkpoint is of this very file when no file start is kept (written before they were), or when it
        # is past this file's start or at its very start; otherwise it is of an older file that a short identity
        # cannot tell apart (a copy-truncate of a file checkpointed while empty).
        if resume and cp is not None and here and (started is None or (mine and (
                cp.lines > started[1] or (cp.lines == started[1] and cp.offset == 0)))):
            if cp.offset <= st.st_size:
                s.analyzer.framer.lines = cp.lines
                s.analyzer.stream.continue_runs(cp.runs)
                s.base = cp.lines - count_lines(s.fd, cp.offset) if started is None else started[1]
                return cp.offset
            mine = False  # shrunk under the same first bytes: rewritten, a new file
        if cp is not None and not here:
            self._drain_replaced(s, cp)
        if cp is None and started is None:
            s.base = 0
        elif mine and started is not None:
            s.base = started[1]
        else:
            s.base = max(s.analyzer.lines, cp.lines if cp else 0, started[1] if started else 0, self._counted(s))
        s.analyzer.framer.lines = s.base
        if cp is not None:
            s.analyzer.stream.continue_runs(cp.runs)  # run numbers go on too (after any drained ones)
        return 0

    def _counted(self, s: FileStream) -> int:
        return self.counted(s.path) if self.counted is not None else 0

    def _drain_replaced(self, s: FileStream, cp: Checkpoint) -> None:
        """The file at this path was replaced while specwatch was down: read the rest of the old one."""
        found = self._find_by_inode(os.path.dirname(s.path), cp.identity)
        if found is None:
            self._notice(s.path, "replaced while specwatch was stopped; reading the new file from its start")
            return
        old, fd, same = found
        try:
            # Same inode but other first bytes: it was truncated and rewritten before it was moved.
            os.lseek(fd, cp.offset if same else 0, os.SEEK_SET)
            s.analyzer.framer.lines = cp.lines
            s.analyzer.stream.continue_runs(cp.runs)
            n, partial = self._pump(fd, s.analyzer)
            if partial:
                s.analyzer.feed(b"\n")
            self._notice(s.path, f"replaced while specwatch was stopped; read the rest of {old} ({n} bytes)")
        except OSError as exc:
            self._error(old, exc)
        finally:
            os.close(fd)
        self.counters["rotations"] += 1

    def _find_by_inode(self, directory: str, ident: Identity) -> tuple[str, int, bool] | None:
        """An unfollowed file next to the path with the old inode: (path, open fd, same first bytes)."""
        followed = set(self.streams)
        with contextlib.suppress(OSError), os.scandir(directory) as it:
            for entry in it:
                if entry.path in followed or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) != (ident.dev, ident.ino):
                    continue
                try:
                    fd = os.open(entry.path, os.O_RDONLY)
                except OSError as exc:
                    self._error(entry.path, exc)
                    return None
                return entry.path, fd, same_file(ident, fd, os.fstat(fd))
        return None

    # -- following --------------------------------------------------------------------------------

    def _follow(self, s: FileStream, now: float) -> None:
        if s.fd is None:
            if os.path.lexists(s.path) and self._open(s):
                assert s.fd is not None
                self._notice(s.path, "appeared; reading it from its start")
                st = os.fstat(s.fd)
                if s.ident is None:  # the first file this process sees at the path
                    cp = self.checkpoints.get(f"file:{s.path}") if self.checkpoints is not None else None
                    self._place(s, st, cp, resume=False)  # it was absent: not the checkpointed file
                else:  # it had a file: this one is new, numbered on
                    s.base = s.analyzer.lines
                s.ident = identity(s.fd, st)
                s.offset = s.partial = 0
                s.gone_since = None
                self._read(s)
            return
        fst = os.fstat(s.fd)
        if fst.st_size != s.size:
            if fst.st_size < s.offset or (s.ident is not None and not same_file(s.ident, s.fd, fst)):
                self._restart_file(s, "truncated (copy-truncate?); reading it again from its start")
                fst = os.fstat(s.fd)
            self._read(s)
            s.size = fst.st_size
            if s.ident is not None and s.ident.head_len < HEAD:
                s.ident = identity(s.fd, fst)
        try:
            st = os.stat(s.path)
        except FileNotFoundError:
            if s.gone_since is None:
                s.gone_since = now
            elif now - s.gone_since >= ROTATE_WAIT:
                self._read(s)
                self._end_partial(s)
                self._close_fd(s)
            return
        except OSError as exc:
            self._error(s.path, exc)
            return
        s.gone_since = None
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            self._read(s)  # drain what the writer put in the old file before it moved on
            self._end_partial(s)
            self._close_fd(s)
            self.counters["rotations"] += 1
            if self._open(s):
                assert s.fd is not None
                self._notice(s.path, "rotated; following the new file from its start")
                s.base = s.analyzer.lines
                s.ident = identity(s.fd, os.fstat(s.fd))
                s.offset = s.partial = 0
                s.size = -1
                self._read(s)

    def _restart_file(self, s: FileStream, why: str) -> None:
        assert s.fd is not None
        self._end_partial(s)
        os.lseek(s.fd, 0, os.SEEK_SET)
        s.offset = s.partial = 0
        s.base = s.analyzer.lines  # the rewritten file is numbered on, not from 1
        s.ident = identity(s.fd, os.fstat(s.fd))
        self.counters["truncations"] += 1
        self._notice(s.path, why)

    def _read(self, s: FileStream) -> None:
        if s.fd is None:
            return
        try:
            n, partial = self._pump(s.fd, s.analyzer, s.partial)
        except OSError as exc:
            self._error(s.path, exc)
            return
        s.offset += n
        s.partial = partial

    def _pump(self, fd: int, analyzer: Analyzer, partial: int = 0) -> tuple[int, int]:
        """Feed the analyzer to EOF; returns bytes read and bytes after the last newline."""
        total = 0
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return total, partial
            analyzer.feed(chunk)
            total += len(chunk)
            self.counters["bytes"] += len(chunk)
            nl = chunk.rfind(b"\n")
            partial = partial + len(chunk) if nl < 0 else len(chunk) - nl - 1

    def _end_partial(self, s: FileStream) -> None:
        """A file ended without a final newline: its last line is complete now."""
        if s.partial:
            s.analyzer.feed(b"\n")
            s.partial = 0

    def _open(self, s: FileStream) -> bool:
        try:
            # Non-blocking: opening a FIFO with no writer would otherwise block here for ever, deaf to SIGTERM.
            fd = os.open(s.path, os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            return False
        except OSError as exc:
            self._error(s.path, exc)
            return False
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            self._error(s.path, OSError(errno.EISDIR, "not a regular file"))
            return False
        self._errors.pop(s.path, None)
        s.fd = fd
        self.counters["opens"] += 1
        return True

    def _close_fd(self, s: FileStream) -> None:
        if s.fd is not None:
            with contextlib.suppress(OSError):
                os.close(s.fd)
            s.fd = None

    def _error(self, path: str, exc: OSError) -> None:
        msg = exc.strerror or str(exc)
        if self._errors.get(path) == msg:
            return  # said once; the other files go on
        self._errors[path] = msg
        if self.on_error is not None:
            self.on_error(path, msg)

    def _notice(self, path: str, what: str) -> None:
        if self.on_notice is not None:
            self.on_notice(path, what)

    # -- wake-ups ---------------------------------------------------------------------------------

    def observe(self, wake: threading.Event) -> Any:
        """Start a native watchdog observer on the parent directories; it only sets ``wake``."""
        from watchdog import events as ev
        from watchdog.observers import Observer

        class _Wake(ev.FileSystemEventHandler):
            def on_any_event(self, _event: ev.FileSystemEvent) -> None:
                wake.set()

        wanted: dict[str, bool] = {}
        for spec in self.specs:
            d, rec = spec.watch_dir
            while d and not os.path.isdir(d) and os.path.dirname(d) != d:
                d, rec = os.path.dirname(d), False  # watch the nearest existing ancestor until it exists
            wanted[d] = wanted.get(d, False) or rec
        observer = Observer()
        kinds: list[type[ev.FileSystemEvent]] = [
            ev.FileCreatedEvent, ev.FileModifiedEvent, ev.FileMovedEvent, ev.FileDeletedEvent,
            ev.FileClosedEvent, ev.DirCreatedEvent, ev.DirMovedEvent, ev.DirDeletedEvent]
        for d, rec in sorted(wanted.items()):
            with contextlib.suppress(OSError):
                observer.schedule(_Wake(), d, recursive=rec, event_filter=kinds)
        observer.daemon = True
        observer.start()
        return observer


def run_loop(steps: Sequence[Callable[[], object]], stop: threading.Event, wake: threading.Event,
             interval: float, busy: Callable[[], bool] | None = None) -> None:
    """Call every step, then sleep until woken, stopped or ``interval`` passes (shorter while ``busy``)."""
    while not stop.is_set():
        wake.clear()
        for fn in steps:
            fn()
        timeout = interval if busy is None or not busy() else min(interval, 0.2)
        wake.wait(timeout)
