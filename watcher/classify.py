"""Records to events: strip known relays, then try only the patterns whose anchor occurs in the line; the
first match wins.

A *host marker* (a pattern whose event is ``host_record``) says which program wrote the log: a line only LM
Studio prints, a path under LM Studio's home. Its fields join the event of whichever pattern matched the line
first, so an engine line that carries such a path is both that line's event and the news of its host. Markers
are looked for in the line as written too: a relay's wrapper (ollama's "llama runner process has terminated:")
is often what names the host.
"""

from __future__ import annotations

from typing import Any

from watcher.catalogue import Catalogue, Pattern
from watcher.events import Event, Record

#: The event of the patterns that name the program writing the log.
HOST_MARKER = "host_record"

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
        text, mark, channel = self._relay.unwrap_all(record.text)
        return record if text is record.text else Record(text, record.lineno, record.source, mark, channel)

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
        raw, record = record, self.unwrap(record)
        candidates = self.candidates(record.text)
        for p in candidates:
            if p.tally_field:
                continue  # the framer tallies its lines in bulk; classified too, they would count twice
            fields = self._try(p, record)
            if fields is not None:
                if "cause" not in fields and fields.get("reason"):
                    # The pattern captured why without naming it: the causes table names it.
                    for k, v in (self.catalogue.cause_of(fields["reason"]) or {}).items():
                        fields.setdefault(k, v)
                if record.relayed_as:
                    fields.setdefault("relayed_as", record.relayed_as)
                if p.event != HOST_MARKER and "host" not in fields:
                    marked = self._marker(record, candidates) or (self._marker(raw) if raw is not record else None)
                    if marked is not None:
                        fields["host"] = marked[1]["host"]
                return Event(p.event, p.id, record, fields)
        marked = self._marker(raw) if raw is not record else None
        return Event(HOST_MARKER, marked[0].id, record, marked[1]) if marked is not None else None

    def _marker(self, record: Record,
                candidates: list[Pattern] | None = None) -> tuple[Pattern, dict[str, Any]] | None:
        """The host marker matching ``record`` and its fields, if one does (``candidates``: the record's own)."""
        for m in self.candidates(record.text) if candidates is None else candidates:
            if m.event == HOST_MARKER:
                fields = self._try(m, record)
                if fields and fields.get("host"):
                    return m, fields
        return None

    def matches(self, record: Record) -> list[Pattern]:
        """Every pattern matching ``record`` (for ``patterns test`` and the catalogue's own tests)."""
        rec = self.unwrap(record)
        return [p for p in self.candidates(rec.text) if self._try(p, rec) is not None]

    def _try(self, p: Pattern, record: Record) -> dict[str, Any] | None:
        slow = self.catalogue.slow
        if slow.disabled and p.id in slow.disabled:
            return None
        try:
            return p.fields(record.text, self.timeout)
        except TimeoutError:  # the regex really spent the time (a starved search is retried by timed.search)
            slow.timed_out(p, self.timeout, f"{record.source}:{record.lineno}")
            return None
