"""Hands settled incident changes to the sinks (banner, event log, store, metrics, notifications), and wires
every analyzer to them in one place (:class:`Wiring`), whichever command reads the log.

A failure arrives as a burst of lines (one per slot, one per link of an allocation chain). The
dispatcher waits until an incident has been quiet for ``settle`` seconds before passing it on, so
the sinks see one incident naming four slots instead of four incidents.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from watcher.catalogue import Catalogue
    from watcher.config import Config
    from watcher.environment import Environment
    from watcher.events import Event
    from watcher.incidents import Incident
    from watcher.loads import History
    from watcher.loads import Settings as LedgerSettings
    from watcher.pipeline import Analyzer
    from watcher.state import Settings

T = TypeVar("T")


class Sink(Protocol):
    """Where incidents go. Every method must return quickly and must not raise."""

    def incident(self, inc: Incident, change: str) -> None:
        """``change`` is ``opened``, ``updated`` or ``resolved``."""

    def close(self) -> None:
        """Flush and release resources at exit."""


class DurableSink(Protocol):
    """A sink that writes incidents to durable storage behind a queue."""

    def pending(self) -> int:
        """Incident changes accepted but not yet durably written."""


class EventSink(Protocol):
    """A sink that also wants every recognised event."""

    def event(self, ev: Event) -> None:
        """One recognised line."""


@dataclass(frozen=True)
class Extension:
    """An optional part of every command that reads logs (metrics, notifications, the probe): the options it
    adds and the sink it builds from them (None when not asked for). The command layer lists them."""

    add_options: Callable[[argparse.ArgumentParser], None]
    build: Callable[[argparse.Namespace, Environment, Config], Sink | None]


class Dispatcher:
    """Collects incident changes and releases each once it has settled."""

    def __init__(self, sinks: Iterable[Sink], settle: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 on_error: Callable[[Sink, BaseException], None] | None = None) -> None:
        self.sinks = list(sinks)
        self.settle = settle
        self.clock = clock
        self.on_error = on_error
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Incident, float]] = {}
        self._sent: dict[int, tuple[str, tuple[object, ...]]] = {}
        self.all: dict[int, Incident] = {}

    def changed(self, inc: Incident) -> None:
        """An incident was opened or updated; wait for it to settle."""
        with self._lock:
            self._pending[id(inc)] = (inc, self.clock())
            self.all[id(inc)] = inc

    def event(self, ev: Event) -> None:
        """Pass a recognised line to the sinks that want it."""
        for s in self.sinks:
            fn = getattr(s, "event", None)
            if fn is not None:
                self._guard(s, fn, ev)

    def delivered(self, target: str, ok: bool) -> None:
        """One notification delivery attempt to ``target`` (a URL): for the sinks that count them."""
        for s in self.sinks:
            fn = getattr(s, "delivery", None)
            if fn is not None:
                self._guard(s, fn, target, ok)

    def load(self, rec: dict[str, Any]) -> None:
        """Pass a load record (watcher.loads) to the sinks that keep them."""
        for s in self.sinks:
            fn = getattr(s, "load", None)
            if fn is not None:
                self._guard(s, fn, rec)

    def history(self) -> History | None:
        """Earlier loads, from the first sink that keeps them (None until it has read them)."""
        for s in self.sinks:
            fn = getattr(s, "history", None)
            if fn is not None:
                try:
                    found = fn()
                except Exception:  # noqa: BLE001 - history is advice; a broken sink gives none
                    return None
                if found is not None:
                    return found  # type: ignore[no-any-return]
        return None

    def tick(self) -> None:
        """Release incidents that have been quiet long enough."""
        now = self.clock()
        with self._lock:
            ready = [inc for inc, t in self._pending.values() if now - t >= self.settle]
            for inc in ready:
                del self._pending[id(inc)]
        for inc in ready:
            self._release(inc)

    def durable(self) -> bool:
        """Whether every incident change released so far is durably written by the sinks that store them."""
        return all(pending() == 0 for s in self.sinks if (pending := getattr(s, "pending", None)) is not None)

    def flush(self) -> None:
        """Release everything now (end of input)."""
        with self._lock:
            ready = [inc for inc, _ in self._pending.values()]
            self._pending.clear()
        for inc in ready:
            self._release(inc)

    def close(self) -> None:
        """Flush, then close every sink."""
        self.flush()
        for s in self.sinks:
            self._guard(s, s.close)

    def _release(self, inc: Incident) -> None:
        sig = (inc.status, tuple(inc.slots), inc.attempts, inc.count, inc.server_state, inc.mib, inc.device)
        prev = self._sent.get(id(inc))
        if prev is not None and prev[1] == sig:
            return
        if prev is None:
            change = "resolved" if inc.status == "resolved" else "opened"
        else:
            change = "resolved" if inc.status == "resolved" and prev[0] != "resolved" else "updated"
        self._sent[id(inc)] = (inc.status, sig)
        for s in self.sinks:
            self._guard(s, s.incident, inc, change)

    def _guard(self, sink: Sink, fn: Callable[..., None], *args: object) -> None:
        # A broken sink (a full disk, a bug) must never take the watcher or the pipe down with it.
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            if self.on_error is not None:
                self.on_error(sink, exc)


class Wiring:
    """The dispatcher over a command's sinks, and the one place analyzers are made.

    Every analyzer built here sends its events and incidents through the dispatcher and is shown to each
    sink that wants to watch analyzers (``analyzer(a)``: the metrics endpoint); each sink that produces
    incidents or wants delivery outcomes gets the dispatcher (``attach(disp)``: the probe poller, the
    notification worker). A command that builds its analyzers here gets metrics, events and the store
    without knowing they exist.
    """

    def __init__(self, catalogue: Catalogue, settings: Settings, sinks: Iterable[Sink], settle: float = 1.0,
                 on_error: Callable[[Sink, BaseException], None] | None = None, *,
                 ledger: LedgerSettings | None = None) -> None:
        self.catalogue = catalogue
        self.settings = settings
        self.ledger = ledger
        self.dispatcher = Dispatcher(sinks, settle=settle, on_error=on_error)
        for sink in self.dispatcher.sinks:
            attach = getattr(sink, "attach", None)
            if attach is not None:
                attach(self.dispatcher)

    def analyzer(self, source: str, *, on_event: Callable[[Event], None] | None = None,
                 on_incident: Callable[[Incident], None] | None = None) -> Analyzer:
        """An analyzer of ``source`` wired to every sink. ``on_event``/``on_incident`` are called first, then
        the dispatcher is (a command's own hooks never replace the sinks')."""
        from watcher.pipeline import Analyzer

        disp = self.dispatcher
        # Load records go to the sinks that keep them (the store), and earlier loads come back from it.
        a = Analyzer(self.catalogue, source=source, settings=self.settings,
                     on_event=disp.event if on_event is None else _both(on_event, disp.event),
                     on_incident=disp.changed if on_incident is None else _both(on_incident, disp.changed),
                     on_load=disp.load, history=disp.history, ledger=self.ledger)
        for sink in disp.sinks:
            watch = getattr(sink, "analyzer", None)
            if watch is not None:
                disp._guard(sink, watch, a)
        return a


def _both(first: Callable[[T], None], then: Callable[[T], None]) -> Callable[[T], None]:
    def call(x: T) -> None:
        first(x)
        then(x)

    return call
