"""Pipe mode: copy stdin to stdout byte for byte, and analyse a copy on the side.

The copy comes first and never waits for the analysis: the analysis runs in its own thread behind a
bounded backlog. If specwatch's analysis ever falls that far behind, it skips input (and says so)
rather than slow the server's output. If stdout goes away (``| head``), reading and watching go on,
so the server upstream never receives SIGPIPE because of specwatch.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import stat
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from watcher.pipeline import Analyzer

# A read returns what is there (a pipe holds 64 KiB), so a large size costs no latency on a live server.
CHUNK = 1024 * 1024
# Bounds memory: with an 8 MiB backlog, peak RSS stays near 52 MiB whatever the input size.
MAX_BACKLOG = 8 * 1024 * 1024
# Queued chunks are joined up to this size before analysis: one prefilter pass over a large buffer is
# far cheaper than many over small ones, and a live server's trickle still goes through one by one.
BATCH = 2 * 1024 * 1024
#: Seconds without progress after which a waiting copy stops waiting for the analysis.
STALL = 5.0


class Passthrough:
    """Writes to the real stdout until it fails, then discards, so the copy (and the reading) goes on.

    A non-blocking stdout (another process sharing the pipe or terminal can set O_NONBLOCK) is waited
    on, as a blocking one would be. Any other failure (the reader left, a full disk, an I/O error)
    ends the output but never the reading: the server upstream must not get SIGPIPE because of us.
    """

    def __init__(self, out: BinaryIO, on_break: Callable[[OSError], None] | None = None) -> None:
        self.out = out
        self.on_break = on_break
        self.broken = False
        #: The last byte written (b"" before any): whether the output ends in the middle of a line.
        self.last = b""
        try:
            self.fd: int | None = out.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None

    def write(self, data: bytes) -> None:
        """Write all of ``data`` (handling short writes), or nothing once stdout has failed."""
        if self.broken:
            return
        try:
            if self.fd is None:
                self.out.write(data)
                self.out.flush()
            else:
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(self.fd, view)
                    except BlockingIOError:
                        select.select([], [self.fd], [])
                        continue
                    view = view[n:]
        except (OSError, ValueError) as exc:
            self._break(exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc)))
            return
        if data:
            self.last = data[-1:]  # only what really went out decides where the summary starts

    @property
    def mid_line(self) -> bool:
        """Whether what went out ends inside a line (a summary written now must start a new one)."""
        return self.last not in (b"", b"\n")

    def _break(self, exc: OSError) -> None:
        self.broken = True
        if self.on_break is not None and exc.errno not in (errno.EPIPE, errno.EBADF):
            # A reader that left (EPIPE) is normal (``| head``); anything else deserves a word.
            self.on_break(exc)
        if self.fd is not None:
            # Point the fd at /dev/null so nothing at interpreter exit tries the dead stream again.
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, self.fd)
                os.close(devnull)


def is_regular_file(stream: BinaryIO) -> bool:
    """True when ``stream`` reads a regular file, which has no writer that waiting could stall."""
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (AttributeError, OSError, ValueError):
        return False


def reader(stream: BinaryIO) -> Callable[[], bytes]:
    """A function returning the next available bytes without waiting for a full buffer."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is not None:
        def read_fd() -> bytes:
            while True:
                try:
                    return os.read(fd, CHUNK)
                except InterruptedError:
                    continue
                except BlockingIOError:
                    # Someone made stdin non-blocking: wait for data as a blocking read would.
                    select.select([fd], [], [])
                except OSError:
                    # stdin itself failed (EIO from a hung-up terminal...): that is the end of the input.
                    return b""
        return read_fd
    read1 = getattr(stream, "read1", None)
    if read1 is not None:
        return lambda: bytes(read1(CHUNK))
    return lambda: stream.read(CHUNK)


#: Seconds of silence after which a live source's open allocation failure is concluded: llama.cpp prints the
#: next line of a failure chain (or its retry) within milliseconds, so a pause this long means nothing follows.
QUIET = 10.0


class SideAnalysis:
    """Runs an analyzer in a thread fed through a bounded backlog; ``tick`` runs on idle.

    ``say`` gets the one-line notices for the person watching: the first skip, and an analysis that died.
    """

    def __init__(self, analyzer: Analyzer, tick: Callable[[], None], say: Callable[[str], object],
                 idle: float = 0.25, quiet: float = QUIET) -> None:
        self.analyzer = analyzer
        self.tick = tick
        self.say = say
        self.idle = idle
        self.quiet = quiet
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._backlog = 0
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._stalled = False
        self.skipped = 0
        self.failed = False
        self._thread = threading.Thread(target=self._run, name="specwatch-analysis", daemon=True)
        self._thread.start()

    def put(self, chunk: bytes, wait: bool = False) -> None:
        """Queue a chunk; if the analysis is too far behind, wait for it (``wait``) or skip the chunk."""
        if self.failed:
            return
        with self._lock:
            if wait and not self._stalled:
                # Waiting is for a busy analysis, not a stuck one (say a sink blocked on a full stderr
                # pipe): once it has made no progress for STALL seconds, skipping resumes until it moves.
                backlog, deadline = self._backlog, time.monotonic() + STALL
                while self._backlog and self._backlog + len(chunk) > MAX_BACKLOG and not self.failed:
                    if self._backlog != backlog:
                        backlog, deadline = self._backlog, time.monotonic() + STALL
                    elif time.monotonic() >= deadline:
                        self._stalled = True
                        break
                    self._drained.wait(self.idle)
            if self._backlog + len(chunk) > MAX_BACKLOG:
                self.skipped += len(chunk)
                skipped = True
            else:
                self._backlog += len(chunk)
                skipped = False
        if skipped:
            if self.skipped == len(chunk):  # the first skip: once is enough to know
                self.say("specwatch: analysis fell behind; skipping input (output is unaffected)\n")
            return
        self._q.put(chunk)

    def close(self, timeout: float | None = None) -> bool:
        """Finish the backlog, then the analysis; False if it was still running after ``timeout``."""
        self._q.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        last, told = time.monotonic(), True
        try:
            while True:
                try:
                    chunk = self._q.get(timeout=self.idle)
                except queue.Empty:
                    if not told and time.monotonic() - last >= self.quiet:
                        # The server has said nothing for a while after its last line: what that line left
                        # open (an allocation failure nothing reported) is concluded, as at the end of input.
                        self.analyzer.quiet(self.quiet)
                        told = True
                    self.tick()
                    continue
                last, told = time.monotonic(), False
                done = chunk is None
                batch = [chunk] if chunk is not None else []
                size = len(chunk) if chunk is not None else 0
                while not done and size < BATCH:
                    try:
                        more = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        done = True
                    else:
                        batch.append(more)
                        size += len(more)
                if batch:
                    data = batch[0] if len(batch) == 1 else b"".join(batch)
                    self.analyzer.feed(data)
                    with self._lock:
                        self._backlog -= size
                        self._stalled = False
                        self._drained.notify_all()
                if done:
                    self.analyzer.finish()
                    return
                self.tick()
        except Exception as exc:  # noqa: BLE001 - the pipe must survive any analysis bug
            with self._lock:
                self.failed = True
                self._drained.notify_all()
            self.say(f"specwatch: analysis stopped by an internal error ({exc!r}); output is unaffected\n")


def pump(read: Callable[[], bytes], out: Passthrough, side: SideAnalysis | None, wait: bool = False) -> int:
    """Copy until EOF; returns the number of bytes copied. ``wait``: see SideAnalysis.put."""
    total = 0
    while True:
        chunk = read()
        if not chunk:
            return total
        total += len(chunk)
        out.write(chunk)
        if side is not None:
            side.put(chunk, wait)
