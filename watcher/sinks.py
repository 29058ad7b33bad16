"""The built-in sinks: the stderr banner and the JSON-lines event log; the writer specwatch's stderr goes through."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import select
import threading
import traceback
from collections.abc import Iterator
from typing import Any, TextIO

from watcher import report
from watcher.events import Event
from watcher.incidents import Incident


class TerminalWriter(io.TextIOBase):
    """specwatch's own messages to stderr, written by a thread of their own behind a bounded queue.

    A terminal paused with Ctrl-S (or a stderr pipe nobody reads) blocks every write to it. The banners,
    notices and retry lines written from the analysis, the copy or the notification threads must never
    wait for it: the store and the targets are more important than the banner, and the server's output
    most of all. ``write`` only queues; when more than ``limit`` characters are waiting, a message is
    dropped and counted, and the count is reported once the terminal takes output again.
    """

    def __init__(self, stream: TextIO, limit: int = 1024 * 1024) -> None:
        super().__init__()
        self.stream = stream
        self.limit = limit
        #: Messages dropped because the queue was full.
        self.dropped = 0
        self._unreported = 0
        self._queue: collections.deque[str] = collections.deque()
        self._queued = 0
        self._busy = False
        self._broken = False
        self._closing = False
        self._cond = threading.Condition()
        self._encoding = getattr(stream, "encoding", None) or getattr(getattr(stream, "inner", None), "encoding",
                                                                      None) or "utf-8"
        try:
            # Written with os.write on our own descriptor: a thread blocked inside the buffered sys.stderr
            # would hold its lock, and the interpreter's exit would then abort trying to flush it.
            self._fd: int | None = os.dup(stream.fileno())
        except (AttributeError, OSError, ValueError):
            self._fd = None
        self._thread = threading.Thread(target=self._run, name="specwatch-stderr", daemon=True)
        self._thread.start()

    def write(self, s: str) -> int:
        """Queue ``s`` and return at once; drop it (counted) when the queue is full."""
        if not s:
            return 0
        with self._cond:
            if self._closing:
                return len(s)
            if self._queued + len(s) > self.limit:
                self.dropped += 1
                self._unreported += 1
                return len(s)
            if self._unreported:
                self._report_drops()
            self._queue.append(s)
            self._queued += len(s)
            self._cond.notify_all()
        return len(s)

    @contextlib.contextmanager
    def thread_exceptions(self) -> Iterator[None]:
        """While inside, an exception no thread caught is written through this writer.

        Python's own hook writes the traceback straight to ``sys.stderr``: on a paused terminal the thread
        that failed would block there for good (holding whatever it holds). A hook installed before (a test
        runner's, which records the error to fail the test) is still called, so nothing is hidden.
        """
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is not SystemExit:  # as Python's own hook: a thread's SystemExit is silent
                name = args.thread.name if args.thread is not None else threading.get_ident()
                self.write(f"Exception in thread {name}:\n" + "".join(
                    traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))
            if previous is not threading.__excepthook__:
                previous(args)

        threading.excepthook = hook
        try:
            yield
        finally:
            if threading.excepthook is hook:
                threading.excepthook = previous

    def flush(self) -> None:
        """Nothing to do: the writer thread writes as soon as it can (see ``drain``)."""

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for everything queued to be written; False if it was not."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self) -> None:
        """Let the writer thread end once the queue is empty; later writes are dropped (call ``drain`` first)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        super().close()

    @property
    def running(self) -> bool:
        """Whether the writer thread is still there (it ends after ``close``, once the queue is empty)."""
        return self._thread.is_alive()

    def isatty(self) -> bool:
        """Whether the real stream is a terminal."""
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        """The real stream's descriptor."""
        return self.stream.fileno()

    def _report_drops(self) -> None:
        # Called with the lock held. Queued after what was waiting before the drops, so the count
        # appears where the messages went missing; it may exceed the limit, once.
        note = (f"specwatch: {self._unreported} message(s) to stderr dropped: it was not taking output "
                "(a paused terminal?)\n")
        self._unreported = 0
        self._queue.append(note)
        self._queued += len(note)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    break
                text = "".join(self._queue)
                self._queue.clear()
                self._busy = True
            self._emit(text)
            with self._cond:
                self._queued -= len(text)
                self._busy = False
                if self._unreported and not self._queue and not self._closing:
                    self._report_drops()
                self._cond.notify_all()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _emit(self, text: str) -> None:
        if self._broken:
            return
        try:
            if self._fd is None:
                self.stream.write(text)
                self.stream.flush()
                return
            view = memoryview(text.encode(self._encoding, "replace"))
            while view:
                try:
                    n = os.write(self._fd, view)
                except InterruptedError:
                    continue
                except BlockingIOError:
                    # A non-blocking stderr (set by another process sharing it): wait as a blocking one would.
                    select.select([], [self._fd], [])
                    continue
                view = view[n:]
        except (OSError, ValueError):
            # A closed stderr or a reader that left: specwatch's messages are extras, never a reason to fail.
            self._broken = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


def underlying(stream: TextIO) -> TextIO:
    """The real stream beneath a :class:`TerminalWriter` (``stream`` itself otherwise), for bytes that must be
    neither queued nor dropped: a supervised server's own stderr passes through whole, in order, at once."""
    return stream.stream if isinstance(stream, TerminalWriter) else stream


class BannerSink:
    """Prints a banner on stderr when an incident opens, a line when it changes or resolves.

    One cause is one banner: an incident that follows another already shown (the host reloaded without the
    draft that failed) is a line under it, and a failure that recurs at every restart is a line now and then
    ("still failing, N times": at 2, 5, 10, 20, 50... occurrences), not a banner per restart.
    """

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour
        self._shown: dict[str, str] = {}  # key -> id8 of incidents that got a banner
        self._counts: dict[int, int] = {}  # id(incident) -> the occurrence count last told

    def incident(self, inc: Incident, change: str) -> None:
        """Write the banner (opened, resolved) or a one-line update."""
        told = self._counts.get(id(inc))
        self._counts[id(inc)] = inc.count
        follows = str(inc.extra.get("follows") or "")
        if change == "opened" and follows in self._shown:
            text = f"specwatch: same cause as {self._shown[follows]} above: {inc.title}\n"
        elif change == "updated" and told is not None and inc.count != told:
            if report.milestone(inc.count) == report.milestone(told):
                return
            text = f"specwatch: still failing, {inc.count} times: {inc.title}\n"
        elif change == "updated":
            text = f"specwatch: updated: {inc.title}\n"
        else:
            text = report.banner(inc, self.colour)
        if change == "opened":
            self._shown[inc.key] = inc.key[:8]
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Nothing to release."""


class EventLogSink:
    """Every recognised event and incident change as one JSON object per line (structlog)."""

    def __init__(self, stream: TextIO, owns: bool = False) -> None:
        self.stream = stream
        self.owns = owns
        # Imported here: structlog (with the asyncio it pulls in) is a fifth of startup, and most runs
        # never ask for --events.
        import structlog

        self.log = structlog.wrap_logger(
            structlog.WriteLogger(stream),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(sort_keys=False),
            ],
        )

    def event(self, ev: Event) -> None:
        """One recognised log line."""
        fields: dict[str, Any] = {k: v for k, v in ev.fields.items() if k != "event"}
        self.log.msg("event", type=ev.type, pattern=ev.pattern, source=ev.record.source, line=ev.record.lineno,
                     fields=fields)

    def incident(self, inc: Incident, change: str) -> None:
        """One incident change."""
        self.log.msg("incident", change=change, **inc.as_dict())

    def close(self) -> None:
        """Flush, and close the file if we opened it."""
        try:
            self.stream.flush()
            if self.owns:
                self.stream.close()
        except (OSError, ValueError):
            pass
