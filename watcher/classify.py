"""Records to events: strip known relays, then try only the patterns whose anchor occurs in the line; the
first match wins."""

from __future__ import annotations

import time
from typing import Any

from watcher.catalogue import Catalogue, Pattern
from watcher.events import Event, Record


class Classifier:
    """Matches records against a compiled catalogue."""

    def __init__(self, catalogue: Catalogue, timeout: float = 0.05) -> None:
        self.catalogue = catalogue
        self.timeout = timeout
        order = {p.id: i for i, p in enumerate(catalogue.patterns)}
        self._index = [(a, ps) for a, ps in catalogue.by_anchor().items()]
        self._order = order
        self._relay = catalogue.relay

    def unwrap(self, record: Record) -> Record:
        """The record with its relays' wrappers removed (itself when it had none)."""
        text, mark = self._relay.unwrap_marked(record.text)
        return record if text is record.text else Record(text, record.lineno, record.source, mark)

    def candidates(self, text: str) -> list[Pattern]:
        """Patterns worth trying on ``text``, in catalogue order."""
        found: dict[str, Pattern] = {}
        for anchor, patterns in self._index:
            if anchor in text:
                for p in patterns:
                    found.setdefault(p.id, p)
        return sorted(found.values(), key=lambda p: self._order[p.id])

    def classify(self, record: Record) -> Event | None:
        """The event of the first pattern matching ``record`` (unwrapped), if any."""
        record = self.unwrap(record)
        for p in self.candidates(record.text):
            fields = self._try(p, record)
            if fields is not None:
                if "cause" not in fields and fields.get("reason"):
                    # The pattern captured why without naming it: the causes table names it.
                    for k, v in (self.catalogue.cause_of(fields["reason"]) or {}).items():
                        fields.setdefault(k, v)
                if record.relayed_as:
                    fields.setdefault("relayed_as", record.relayed_as)
                return Event(p.event, p.id, record, fields)
        return None

    def matches(self, record: Record) -> list[Pattern]:
        """Every pattern matching ``record`` (for ``patterns test`` and the catalogue's own tests)."""
        rec = self.unwrap(record)
        return [p for p in self.candidates(rec.text) if self._try(p, rec) is not None]

    def _try(self, p: Pattern, record: Record) -> dict[str, Any] | None:
        slow = self.catalogue.slow
        if slow.disabled and p.id in slow.disabled:
            return None
        start = time.thread_time()
        try:
            return p.fields(record.text, self.timeout)
        except TimeoutError:
            # The timeout is wall-clock time: on a machine busy with the server, this thread may simply not
            # have run. Only a regex that really spent the time (CPU) counts against its pattern.
            if time.thread_time() - start >= self.timeout / 2:
                slow.timed_out(p, self.timeout, f"{record.source}:{record.lineno}")
            return None
