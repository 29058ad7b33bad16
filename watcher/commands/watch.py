"""``specwatch watch PATH...``: follow log files, directories, globs and journald units as a service."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.commands._common import UsageError, add_analysis_options, build_context, wire
from watcher.config import flag_range
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from types import FrameType

    from watcher.checkpoints import Checkpoints
    from watcher.environment import Environment
    from watcher.incidents import Incident
    from watcher.pipeline import Analyzer
    from watcher.sources.tail import Spec

DEFAULT_INTERVAL = 1.0
DEFAULT_POLL_INTERVAL = 0.5


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``watch``."""
    p = sub.add_parser(
        "watch", help="follow log files, directories and journald units as a background service",
        description="Follow log files, directories (every *.log in them, also ones created later) and globs; "
                    "each file is its own stream. Resumes from checkpoints in the state database after a restart. "
                    "Stops cleanly on SIGTERM or Ctrl-C.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="log file, directory or quoted glob ('logs/**/*.log')")
    p.add_argument("--from-start", action="store_true",
                   help="read files seen for the first time from their start (default: from their end)")
    p.add_argument("--poll", action="store_true",
                   help="do not use native file events (inotify, FSEvents...); poll instead (network filesystems)")
    p.add_argument("--interval", type=flag_range("--interval"), metavar="SECONDS",
                   help=f"how often every file is checked anyway (default {DEFAULT_INTERVAL}, "
                        f"with --poll {DEFAULT_POLL_INTERVAL})")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="file names followed inside directories (repeatable; default '*.log')")
    p.add_argument("--ignore-older", type=flag_range("--ignore-older"), default=0.0, metavar="DAYS",
                   help="in directories and globs, do not hold open files unmodified for DAYS (default: 0 = all; "
                        "with --lmstudio 2)")
    p.add_argument("--lmstudio", action="store_true", help="follow LM Studio's server logs (see --lmstudio-dir)")
    p.add_argument("--lmstudio-dir", type=Path, metavar="DIR",
                   help="LM Studio's server-logs directory (default: found under ~/.lmstudio or ~/.cache/lm-studio)")
    p.add_argument("--journal", action="append", default=[], metavar="UNIT",
                   help="follow a systemd unit's journal through journalctl (repeatable)")
    add_analysis_options(p)
    p.set_defaults(handler=run)


def lmstudio_candidates(environ: Mapping[str, str], home: Path | None = None) -> list[Path]:
    """Where LM Studio keeps its server logs, most likely first, on Linux, macOS and Windows.

    LM Studio 0.3+ writes ``<home>/server-logs/<YYYY-MM>/<YYYY-MM-DD>.<N>.log`` where ``<home>`` is
    ``~/.lmstudio`` (``%USERPROFILE%\\.lmstudio`` on Windows), or wherever ``~/.lmstudio-home-pointer``
    says it was moved; older releases used ``~/.cache/lm-studio/server-logs``.
    """
    h = home or Path(environ.get("HOME") or environ.get("USERPROFILE") or Path.home())
    out: list[Path] = []
    pointer = h / ".lmstudio-home-pointer"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        target = pointer.read_text(encoding="utf-8").strip()
        if target:
            out.append(Path(target) / "server-logs")
    out += [h / ".lmstudio" / "server-logs", h / ".cache" / "lm-studio" / "server-logs"]
    return out


def find_lmstudio(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """The first LM Studio server-logs directory that exists."""
    cands = lmstudio_candidates(environ, home)
    for c in cands:
        if c.is_dir():
            return c
    raise UsageError("LM Studio's server-logs directory not found (looked in "
                     + ", ".join(str(c) for c in cands) + "); use --lmstudio-dir DIR")


def run(args: argparse.Namespace, env: Environment, stop: threading.Event | None = None,
        on_event: Callable[[object], None] | None = None) -> ExitStatus:
    """Follow until SIGTERM/SIGINT (or ``stop`` is set, for tests and embedding)."""
    from watcher import paths
    from watcher.checkpoints import Checkpoints
    from watcher.sources.journal import JournalFollower
    from watcher.sources.tail import Follower, run_loop, specs
    from watcher.store import Store

    targets = [str(p) for p in args.paths]
    ignore_days = args.ignore_older
    if args.lmstudio or args.lmstudio_dir:
        lm = args.lmstudio_dir or find_lmstudio(env.environ)
        if not Path(lm).is_dir():
            raise UsageError(f"--lmstudio-dir {lm}: not a directory")
        targets.append(str(lm))
        ignore_days = ignore_days or 2.0
    if not targets and not args.journal:
        raise UsageError("watch: give at least one PATH, --lmstudio or --journal UNIT")
    for t in targets:
        _refuse_special(t)
    ctx = build_context(args, env)
    wiring = wire(ctx, env)
    disp = wiring.dispatcher
    try:
        store = Checkpoints.open(paths.db_path(env.environ, getattr(args, "state_dir", None)))
    except Exception as exc:
        raise UsageError(f"cannot open the state database: {exc}") from exc
    last_change = [0.0]

    def changed(_inc: Incident) -> None:
        last_change[0] = time.monotonic()

    def ready() -> bool:
        # Checkpoints wait until every incident the processed lines raised is in the database: a checkpoint
        # written while one is still queued in memory would skip its lines after a kill -9.
        now = time.monotonic()
        disp.tick()
        return now - last_change[0] >= ctx.settle and disp.durable()

    def make(source: str) -> Analyzer:
        name = args.source or source.removeprefix("journal:")
        return wiring.analyzer(name, on_event=on_event, on_incident=changed)

    def say(path: str, msg: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            env.stderr.write(f"specwatch: {path}: {msg}\n")

    incidents: list[Store] = []

    def counted(path: str) -> int:
        # The furthest line already counted for this path's incidents: a file that lost track of the one before
        # it is numbered past it (opened on first use, on the checkpoints' connection and thread).
        if not incidents:
            incidents.append(Store(store.conn))
        return incidents[0].lines_counted(args.source or path)

    wake = threading.Event()
    stop = stop or threading.Event()
    followed = specs(targets, args.include or ["*.log"])
    for line in following(followed, args.journal, args.from_start, store):
        say("watching", line)
    follower = Follower(followed, make, checkpoints=store, counted=counted, from_start=args.from_start,
                        ignore_older=ignore_days * 86400, on_error=say, on_notice=say, ready=ready)
    journals = [JournalFollower(u, make, checkpoints=store, from_start=args.from_start, wake=wake, on_error=say,
                                ready=ready) for u in args.journal]
    interval = args.interval or (DEFAULT_POLL_INTERVAL if args.poll else DEFAULT_INTERVAL)
    signalled: list[int] = []
    restore = _install_signals(stop, wake, signalled)
    observer = None if args.poll or not targets else follower.observe(wake)
    status = ExitStatus.OK
    try:
        steps: list[Callable[[], object]] = [follower.step, *(j.step for j in journals), disp.tick]
        run_loop(steps, stop, wake, interval, busy=lambda: not ready())
    except KeyboardInterrupt:
        signalled.append(signal.SIGINT)
    finally:
        if observer is not None:
            observer.stop()
            observer.join(2)
        # Record everything processed first (closing the sinks drains the recorder), then write the final
        # checkpoints: they cover only what the store holds.
        disp.close()
        last_change[0] = float("-inf")
        for j in journals:
            j.close()
        follower.close()
        store.close()
        restore()
    if signalled and signalled[-1] == signal.SIGINT:
        status = ExitStatus.CTRL_C
    return status


def following(followed: list[Spec], units: list[str], from_start: bool, checkpoints: Checkpoints) -> list[str]:
    """What ``watch`` follows, one line per PATH or unit, said at start: a path that does not exist yet is
    named as such (a typo would otherwise look like a quiet server)."""
    where = "from the start" if from_start else "new lines"
    out = []
    for spec in followed:
        if spec.kind == "dir":
            n = len({os.path.realpath(f) for f in spec.files()})  # one file under several names is followed once
            out.append(f"{spec.path}/ ({', '.join(spec.include)}, {n} file{'s' if n != 1 else ''} now, {where})")
        elif spec.kind == "glob":
            n = len({os.path.realpath(f) for f in spec.files()})
            out.append(f"{spec.path} ({n} file{'s' if n != 1 else ''} now, {where})")
        elif os.path.lexists(spec.path):
            cp = checkpoints.get(f"file:{spec.path}")
            out.append(f"{spec.path} ({f'resuming after line {cp.lines}' if cp is not None else where})")
        else:
            out.append(f"{spec.path} (does not exist yet: read from its start once it appears)")
    out += [f"journal of {unit} ({where})" for unit in units]
    return out


def _refuse_special(path: str) -> None:
    """A FIFO, socket or device named as a log is a usage error: it cannot be followed like a file (opening a
    FIFO waits for a writer; reading it consumes what the server's own reader should get)."""
    try:
        mode = Path(path).expanduser().stat().st_mode
    except OSError:
        return  # absent (followed once it appears) or a glob
    what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None)
    if what is not None:
        raise UsageError(f"{path}: {what}, not a log file; watch follows files and directories "
                         f"(to analyse a stream, pipe it: specwatch < {path})")


def _install_signals(stop: threading.Event, wake: threading.Event, seen: list[int]) -> Callable[[], None]:
    """SIGTERM and SIGINT stop the loop; only the main thread may install handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)
        stop.set()
        wake.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    if hasattr(signal, "SIGHUP") and sys.platform != "win32":
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: wake.set())

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
