"""The first-party desktop notifier, registered with apprise as ``specwatch://`` (apprise schemes are
[a-z0-9] only, so no hyphen).

apprise's own desktop schemes cannot keep an alert up (``dbus://`` always asks for a 13 s expiry and needs OS
Python bindings). On Linux and the BSDs this plugin speaks the freedesktop Notifications protocol with jeepney
(pure Python, works from a ``pipx install``): critical urgency for critical incidents, ``expire_timeout = 0``
so the bubble stays until dismissed, one bubble per incident group updated in place through ``replaces_id``
(repeats and the resolved message replace it instead of stacking), and an **Acknowledge** action that
acknowledges the incidents in the store. Actions arrive as ``ActionInvoked`` signals on the connection that
sent the notification, so this process keeps one connection and a listener thread for its lifetime: the
button works while the specwatch process that showed the bubble runs (a pipe, ``watch`` or ``run``). The
bubble ids are also kept in the store (:mod:`watcher.notify.notes`) and the plugin asks for ``acknowledged``
messages: ``specwatch ack``, the button of any later process, or its resolution closes every bubble an incident
still has up, whichever process showed it. A grouped bubble lists every incident's title first.

On macOS and Windows it uses desktop-notifier (critical urgency, an Acknowledge button while the process runs);
how long the bubble stays is up to the OS notification centre there.

URL options: ``specwatch://?ack=no`` hides the button.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import apprise

from watcher.notify.contract import DEFAULT_MESSAGES, Delivery, current

BUS = "org.freedesktop.Notifications"
PATH = "/org/freedesktop/Notifications"
ACK_ACTION = "acknowledge"
_URGENCY = {"critical": 2, "warning": 1, "info": 0}


class FreedesktopClient:
    """One session-bus connection per process: sends, replaces in place, and hears the Acknowledge button."""

    def __init__(self) -> None:
        from jeepney import DBusAddress, MatchRule, new_method_call
        from jeepney.bus_messages import message_bus
        from jeepney.io.threading import DBusRouter, open_dbus_connection

        self.addr = DBusAddress(PATH, bus_name=BUS, interface=BUS)
        self.router = DBusRouter(open_dbus_connection(bus="SESSION"))
        self.lock = threading.Lock()
        #: notification id -> (incident ids, acknowledge callback)
        self.shown: dict[int, tuple[list[str], Callable[[Sequence[str], str], list[str]]]] = {}
        #: incident id -> notification id showing it, for replaces_id
        self.bubbles: dict[str, int] = {}
        rule = MatchRule(type="signal", interface=BUS, path=PATH)
        self.router.send_and_get_reply(new_method_call(message_bus, "AddMatch", "s", (rule.serialise(),)),
                                       timeout=5)
        self.signals = self.router.filter(rule, bufsize=64)
        #: The notification server's unique bus name (a restarted server reuses bubble ids).
        self.bus_owner = self.server()
        threading.Thread(target=self._listen, name="specwatch-desktop", daemon=True).start()

    def server(self) -> str:
        """The bus name of the notification server now running: a bubble id means something only to it."""
        from jeepney import new_method_call
        from jeepney.bus_messages import message_bus

        reply = self.router.send_and_get_reply(new_method_call(message_bus, "GetNameOwner", "s", (BUS,)), timeout=5)
        return str(reply.body[0])

    def close_bubbles(self, notes: list[str], keep: int = 0) -> None:
        """Close the bubbles named by ``notes`` (``server:id``, kept by whichever process showed them) that
        this notification server showed; ``keep`` is one about to be replaced in place."""
        if not notes:
            return
        here = self.server()
        for note in notes:
            owner, _, nid = note.rpartition(":")
            if owner == here and nid.isdigit() and int(nid) != keep:
                self._close(int(nid))
        with self.lock:
            for nid_s in (n.rpartition(":")[2] for n in notes):
                if nid_s.isdigit() and int(nid_s) != keep:
                    ids, _ = self.shown.pop(int(nid_s), ([], None))
                    for i in ids:
                        if self.bubbles.get(i) == int(nid_s):
                            del self.bubbles[i]

    def deliver(self, delivery: Delivery, title: str, body: str, with_ack: bool) -> None:
        """Acknowledged incidents: close every bubble of theirs, shown by any process. Others: show or update."""
        ended = [str(i["id"]) for i in delivery.items if i.get("message") == "acknowledged"]
        if ended:
            with self.lock:
                mine = [f"{self.bus_owner}:{self.bubbles[i]}" for i in ended if i in self.bubbles]
            self.close_bubbles(delivery.notes.take(ended) + mine if delivery.notes is not None else mine)
        if len(ended) < len(delivery.items) or not delivery.items:
            self.notify(delivery, title, body, with_ack)

    def notify(self, delivery: Delivery, title: str, body: str, with_ack: bool) -> int:
        """Show or update the bubble of this delivery's incidents; returns the server's notification id."""
        from jeepney import new_method_call

        ids = [str(i["id"]) for i in delivery.items]
        kind = delivery.kind
        with self.lock:
            replaces = next((self.bubbles[i] for i in ids if i in self.bubbles), 0)
        resolved = kind == "resolved"
        if resolved and delivery.notes is not None:
            # Bubbles of this incident that other (earlier) processes showed: this one says it is over.
            self.close_bubbles(delivery.notes.take(ids), keep=replaces)
        # One action: servers that list the default action beside the others would offer Acknowledge twice.
        actions = [] if resolved or not with_ack or not ids else [ACK_ACTION, "Acknowledge"]
        hints: dict[str, tuple[str, Any]] = {
            "urgency": ("y", 1 if resolved else _URGENCY.get(delivery.severity, 1)),
            "desktop-entry": ("s", "specwatch"),
            "category": ("s", "device.error" if not resolved else "device"),
        }
        # A resolved bubble may fade (the server's default); an open incident stays until a person acts.
        timeout = -1 if resolved else 0
        msg = new_method_call(self.addr, "Notify", "susssasa{sv}i",
                              ("specwatch", replaces, "dialog-error" if not resolved else "dialog-information",
                               title, _markup(body), actions, hints, timeout))
        reply = self.router.send_and_get_reply(msg, timeout=5)
        nid = int(reply.body[0])
        with self.lock:
            for i in ids:
                self.bubbles[i] = nid
            self.shown[nid] = (ids, delivery.acknowledge)
            if resolved:
                for i in ids:
                    self.bubbles.pop(i, None)
        if not resolved and delivery.notes is not None and ids:
            # Kept in the store, so a later process's acknowledgement can close it after this one is gone.
            try:
                delivery.notes.add(ids, f"{self.bus_owner}:{nid}")
            except sqlite3.Error as exc:
                # The bubble is up: the delivery succeeded (failing it would show a second bubble at the retry).
                delivery.warn(f"the bubble is shown, but its id could not be kept ({exc}): an acknowledgement "
                              "by another process will not close it")
        return nid

    def _listen(self) -> None:
        while True:
            try:
                sig = self.signals.queue.get()
            except Exception:  # noqa: BLE001 - the bus went away: buttons stop working, sending reports errors
                return
            if sig.header.fields.get(3) == "ActionInvoked":  # 3 = HeaderFields.member
                nid, action = sig.body
                with self.lock:
                    ids, ack = self.shown.get(int(nid), ([], None))
                if action == ACK_ACTION and ack is not None and ids:
                    # A locked DB must not kill the listener.
                    with contextlib.suppress(Exception):
                        ack(ids, "acknowledged from the desktop notification")
                    self._close(int(nid))

    def close(self) -> None:
        """Stop hearing the bus and close the connection (before the bus itself goes away)."""
        with contextlib.suppress(Exception):
            self.router.close()
            self.router.conn.close()

    def _close(self, nid: int) -> None:
        from jeepney import new_method_call

        with contextlib.suppress(Exception):  # already gone
            self.router.send(new_method_call(self.addr, "CloseNotification", "u", (nid,)))


_client: FreedesktopClient | None = None
_client_lock = threading.Lock()


def client() -> FreedesktopClient:
    """The process-wide freedesktop client (connects on first use)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = FreedesktopClient()
        return _client


def reset() -> None:
    """Close the process-wide client; the next notification connects again (to whatever bus is current)."""
    global _client
    with _client_lock:
        if _client is not None:
            _client.close()
        _client = None


def _markup(body: str) -> str:
    # Notification servers may render a subset of HTML in the body; escape so a log line is shown as text.
    return body.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _send_other(delivery: Delivery, title: str, body: str, with_ack: bool) -> bool:
    from desktop_notifier import Button, DesktopNotifierSync, Urgency

    ids = [str(i["id"]) for i in delivery.items]
    if delivery.items and all(i.get("message") == "acknowledged" for i in delivery.items):
        return True  # nothing to say: the notification centre keeps no bubble this process could close
    buttons = []
    if with_ack and ids and delivery.kind != "resolved":
        buttons.append(Button("Acknowledge", on_pressed=lambda: delivery.acknowledge(ids, "acknowledged from "
                                                                                           "the desktop notification")))
    urgency = Urgency.Critical if delivery.severity == "critical" else Urgency.Normal
    DesktopNotifierSync(app_name="specwatch").send(title=title, message=body, urgency=urgency, buttons=buttons)
    return True


def _notify(body: str, title: str, notify_type: str, meta: dict[str, Any], *args: Any, **kwargs: Any) -> bool:
    del notify_type, args, kwargs
    d = current() or Delivery(target_id="", title=title, body=body, severity="warning")
    with_ack = str(meta.get("qsd", {}).get("ack", "yes")).lower() not in ("no", "0", "false")
    if sys.platform in ("darwin", "win32"):
        return _send_other(d, title or d.title, body, with_ack)
    client().deliver(d, title or d.title, _titles_first(d, body), with_ack)
    return True


def _titles_first(d: Delivery, body: str) -> str:
    """A grouped bubble starts with every incident's title: notification servers cut a long body at the bottom."""
    if len(d.items) < 2:
        return body
    return "\n".join(f"• {i.get('title', '')}" for i in d.items) + "\n\n" + body


def register() -> None:
    """Make apprise know the specwatch:// scheme (idempotent)."""
    from apprise import manager_plugins

    plugins: Any = manager_plugins
    manager = plugins.NotificationManager()
    if "specwatch" not in manager:
        decorate: Any = apprise.decorators.notify
        decorate(on="specwatch", name="specwatch desktop (stays until dismissed)")(_notify)
        # Acknowledgements too: they close the bubbles the incident still has up, wherever they came from.
        manager["specwatch"].specwatch_messages = DEFAULT_MESSAGES | {"acknowledged"}
