"""The built-in sinks: the stderr banner and the JSON-lines event log."""

from __future__ import annotations

from typing import Any, TextIO

from watcher import report
from watcher.events import Event
from watcher.incidents import Incident


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
