"""How a first-party apprise plugin (the desktop notifier, the Alertmanager target) receives structured data.

Every message goes through apprise, so there is one dispatcher for every target; apprise hands a plugin only
``title`` and ``body``. The worker therefore sets :data:`CURRENT` around each ``Apprise.notify`` call to a
:class:`Delivery` describing exactly what the message is about. apprise runs plugins either in the calling
thread or in its thread pool through ``contextvars.copy_context().run``, so a plugin reads it with
:func:`current` from inside its ``send``/decorated function::

    from watcher.notify.contract import current

    @apprise.decorators.notify(on="my-scheme")
    def send(body, title, notify_type, meta, *args, **kwargs):
        d = current()
        if d is None:            # called outside specwatch (apprise CLI): plain title/body only
            ...
        for item in d.items:     # one per incident in this (possibly grouped) message
            item["message"]      # "opened" | "repeat" | "resolved" | "acknowledged" | "test"
            item["id"], item["kind"], item["severity"], item["status"], item["title"], item["hint"],
            item["host"], item["source"], item["slots"], item["evidence"] (list of {"line", "text"}),
            item["count"], item["first_seen"], item["last_seen"] (Unix seconds), item["generation"],
            item["message_id"]   # stable id of this (incident, generation, message, repeat): dedupe on it
        d.acknowledge(["<id>", ...], "note")   # acknowledge in the store (e.g. from a button); returns ids changed
        d.notes.add(["<id>"], "x")             # remember something per incident for this target, across processes
        d.notes.take(["<id>"])                 # ... and get it back once (the desktop's bubble ids, to close them)
        return True              # delivered; False or an exception -> the outbox retries with backoff

Fields are those of ``StoredIncident.as_dict()`` plus ``message``, ``repeat`` and ``message_id``. Evidence is
already capped (a few matched log lines, never prompt or completion text) and ``title``/``body`` are already
redacted and length-capped; a plugin must apply ``d.redact`` to anything else it emits (errors, logs). A
plugin must be idempotent per ``(d.target_id, item["message_id"])``: the outbox delivers at least once (a
sender killed, or a database that refuses the write, between the target's reply and the commit that marks the
row sent: the row is sent again).

Which messages a target gets is the plugin's declaration, the same for every target: an apprise plugin class
may set ``specwatch_messages`` (a frozenset of message kinds); without it (every third-party apprise plugin)
a target gets :data:`DEFAULT_MESSAGES`, i.e. a person hears that an incident opened, is still open, and
resolved, but not that a colleague acknowledged it (noise in a channel). A plugin that keeps state on the
other side, such as Alertmanager's firing alert, adds ``"acknowledged"`` so an acknowledgement can end it::

    class NotifyMine(NotifyBase):
        specwatch_messages = DEFAULT_MESSAGES | {"acknowledged"}

Resolved and acknowledged messages only go to targets that were sent (or are still to be sent) the
``opened`` message of the same generation, and follow the severity filter as that one did.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

#: What a target receives when its plugin declares nothing.
DEFAULT_MESSAGES = frozenset({"opened", "repeat", "resolved"})
#: Every kind of message the outbox holds.
MESSAGES = frozenset({"opened", "repeat", "resolved", "acknowledged"})


class Notes(Protocol):
    """What a plugin remembers per incident for its target, across processes (see watcher.notify.notes)."""

    def add(self, incidents: Sequence[str], note: str) -> None:
        """Remember ``note`` for each incident."""

    def take(self, incidents: Sequence[str]) -> list[str]:
        """The notes of these incidents, forgotten as they are returned."""


def _no_ack(keys: Sequence[str], note: str) -> list[str]:  # noqa: ARG001 - same signature as the real one
    return []


def _same(text: str) -> str:
    return text


def _ignore(text: str) -> None:
    del text


@dataclass(frozen=True)
class Delivery:
    """One message being delivered to one target."""

    target_id: str
    title: str
    body: str
    severity: str
    items: tuple[dict[str, Any], ...] = ()
    acknowledge: Callable[[Sequence[str], str], list[str]] = field(default=_no_ack)
    redact: Callable[[str], str] = field(default=_same)
    #: None outside specwatch's worker.
    notes: Notes | None = None
    #: Told of a problem that does not make the delivery fail (the message was shown, but its note could not
    #: be kept): the worker writes it with its retry lines.
    warn: Callable[[str], None] = field(default=_ignore)

    @property
    def kind(self) -> str:
        """``opened``, ``repeat``, ``resolved``, ``acknowledged`` or ``test`` when all items agree, else ``mixed``."""
        kinds = {str(i.get("message")) for i in self.items}
        return kinds.pop() if len(kinds) == 1 else ("test" if not kinds else "mixed")


CURRENT: ContextVar[Delivery | None] = ContextVar("specwatch_delivery", default=None)


def current() -> Delivery | None:
    """The delivery in progress, or None when apprise is called outside specwatch's worker."""
    return CURRENT.get()
