"""One source's analysis, end to end: bytes -> records -> events -> state -> incidents."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from watcher.catalogue import Catalogue
from watcher.classify import Classifier
from watcher.events import Event, Record, Tally
from watcher.framing import Framer, LineSelector
from watcher.incidents import Incident
from watcher.loads import History, LoadTracker
from watcher.loads import Settings as LedgerSettings
from watcher.state import Settings
from watcher.swap import SwapStream


@dataclass
class Counters:
    """What one analysis has seen, for summaries and metrics."""

    bytes: int = 0
    candidates: int = 0
    events: int = 0
    by_pattern: dict[str, int] = field(default_factory=dict)


class Analyzer:
    """Feed it chunks of one source; it keeps that source's state and reports changed incidents."""

    def __init__(
        self,
        catalogue: Catalogue,
        source: str = "-",
        *,
        settings: Settings | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_incident: Callable[[Incident], None] | None = None,
        classifier: Classifier | None = None,
        selector: LineSelector | None = None,
        on_load: Callable[[dict[str, Any]], None] | None = None,
        history: Callable[[], History | None] | None = None,
        ledger: LedgerSettings | None = None,
        host: str | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.classifier = classifier or Classifier(catalogue)
        self.framer = Framer(selector or LineSelector(catalogue.anchors), source=source, tallies=catalogue.tallies)
        self.stream = SwapStream(source, settings, on_change=on_incident)
        self.on_event = on_event
        self.counters = Counters()
        #: Load records and the incidents that need earlier loads (memory_overcommit, acceptance_regressed).
        self.loads = LoadTracker(self.stream, host or socket.gethostname(), emit=on_load, on_incident=on_incident,
                                 history=history, settings=ledger)

    @property
    def source(self) -> str:
        """The source name used in incidents."""
        return self.stream.source

    def feed(self, chunk: bytes) -> None:
        """Analyse a chunk; partial lines wait for the next one."""
        self.counters.bytes += len(chunk)
        self._records(self.framer.feed(chunk))

    def quiet(self, seconds: float) -> None:
        """No input for ``seconds``: conclusions that the end of input would draw, drawn now (the lines already
        complete only; a partial line waits for its end)."""
        self.stream.quiet(seconds)

    def finish(self) -> None:
        """End of input: the last partial line, then conclusions drawn from absence."""
        self._records(self.framer.flush())
        self.stream.finish()
        self.loads.finish()

    def _records(self, records: list[Record | Tally]) -> None:
        c = self.counters
        for rec in records:
            if isinstance(rec, Tally):
                c.events += len(rec.values)
                c.by_pattern[rec.pattern] = c.by_pattern.get(rec.pattern, 0) + len(rec.values)
                self.loads.tallied(rec)
                continue
            c.candidates += 1
            ev = self.classifier.classify(rec)
            if ev is None:
                continue
            c.events += 1
            c.by_pattern[ev.pattern] = c.by_pattern.get(ev.pattern, 0) + 1
            if self.on_event is not None:
                self.on_event(ev)
            self.stream.apply(ev)
            self.loads.applied(ev)

    @property
    def lines(self) -> int:
        """Complete lines read so far."""
        return self.framer.lines

    def incidents(self) -> list[Incident]:
        """All incidents of this source, in the order they were found within each kind of finding."""
        return [*self.stream.incidents(), *self.loads.incidents]
