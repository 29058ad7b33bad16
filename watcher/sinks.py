"""The built-in sinks: the stderr banner and the JSON-lines event log."""

from __future__ import annotations

from typing import Any, TextIO

from watcher import report
from watcher.events import Event
from watcher.incidents import Incident


class BannerSink:
    """Prints a banner on stderr when an incident opens, a line when it changes or resolves."""

    def __init__(self, stream: TextIO, colour: bool) -> None:
        self.stream = stream
        self.colour = colour

    def incident(self, inc: Incident, change: str) -> None:
        """Write the banner (opened, resolved) or a one-line update."""
        text = f"specwatch: updated: {inc.title}\n" if change == "updated" else report.banner(inc, self.colour)
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
