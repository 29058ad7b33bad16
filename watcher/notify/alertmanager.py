"""``alertmanager://HOST:PORT`` (``alertmanagers://`` for TLS): incidents as Prometheus Alertmanager alerts.

An apprise plugin, so it is one more target of the same dispatcher and outbox as every other. It reads
the structured incidents of the message from :func:`watcher.notify.contract.current` and posts them to
Alertmanager's v2 API (``POST /api/v2/alerts``). Alertmanager identifies an alert by its label set, so
the labels are stable and bounded (``alertname``, ``kind``, ``severity``, ``instance``, ``source``,
``model``, ``draft_model``): re-posting the same open incident (the outbox's repeats) refreshes one alert,
never adds another. A firing alert carries ``endsAt = now + ttl`` (``?ttl=SECONDS``, default 6 hours):
Alertmanager keeps it firing at least that long after the last post, so set the notification repeat
interval below it. A resolved or acknowledged incident is posted with ``endsAt`` = when that happened,
and Alertmanager resolves the alert: the plugin declares that it wants ``acknowledged`` messages (see
:mod:`watcher.notify.contract`), so ``specwatch ack`` and the desktop button queue one in the outbox, in
the same transaction as the status change. Posting is idempotent, which is what the outbox's
at-least-once delivery needs.

URL: ``alertmanager://[user:password@]host[:port][/path-prefix][?ttl=21600&instance=NAME&verify=no]``
(default port 9093; basic auth for an Alertmanager behind a proxy; ``instance`` overrides the host name).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

import requests
from apprise import manager_plugins
from apprise.plugins import base as apprise_base

from watcher.incidents import basename
from watcher.labels import source_label
from watcher.notify.contract import DEFAULT_MESSAGES, current

DEFAULT_PORT = 9093
DEFAULT_TTL = 6 * 3600
TEST_TTL = 300
ANNOTATION_MAX = 2000
#: apprise's base class is untyped inside; seen as Any so the plugin can follow its conventions.
NotifyBase: Any = apprise_base.NotifyBase


def alertname(kind: str) -> str:
    """``draft_context_failed`` -> ``SpecwatchDraftContextFailed``."""
    return "Specwatch" + "".join(w.capitalize() for w in kind.split("_"))


def rfc3339(t: float) -> str:
    """Alertmanager's time format."""
    stamp = datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def alerts_payload(incidents: Iterable[dict[str, Any]], status: str | None = None, now: float | None = None,
                   ttl: float = DEFAULT_TTL, instance: str | None = None) -> list[dict[str, Any]]:
    """The v2 alerts for incidents in the contract's shape (``StoredIncident.as_dict()`` plus ``message``).

    ``status`` (``firing``, ``resolved`` or ``acknowledged``) overrides each incident's own state, which is
    otherwise read from ``message``, ``status`` and ``acked_at``.
    """
    now = time.time() if now is None else now
    out = []
    for it in incidents:
        details = it.get("details") or {}
        ended = _end_time(it, status, now)
        labels = {
            "alertname": alertname(str(it.get("kind", "incident"))),
            "kind": str(it.get("kind", "")),
            "severity": str(it.get("severity", "warning")),
            "instance": instance or str(it.get("host") or "unknown"),
            "source": source_label(str(it.get("source") or "-")),
            "model": basename(details.get("model") or it.get("model")) or "none",
            "draft_model": basename(details.get("draft_model") or it.get("draft_model")) or "none",
        }
        evidence = "\n".join(f"{e.get('line', '')}: {e.get('text', '')}" for e in it.get("evidence") or [])
        annotations = {
            "title": str(it.get("title", "")),
            "summary": str(it.get("title", "")),
            "description": str(details.get("reason") or it.get("resolution") or ""),
            "hint": str(it.get("hint", "")),
            "evidence": evidence,
            "specwatch_id": str(it.get("id", "")),
            "count": str(it.get("count", 1)),
        }
        if it.get("ack_note"):
            annotations["ack_note"] = str(it["ack_note"])
        start = float(it.get("opened_at") or it.get("first_seen") or now)
        alert: dict[str, Any] = {
            "labels": labels,
            "annotations": {k: v[:ANNOTATION_MAX] for k, v in annotations.items() if v},
            "startsAt": rfc3339(min(start, now)),
            "endsAt": rfc3339(max(ended, start) if ended is not None else now + ttl),
        }
        out.append(alert)
    return out


def _end_time(it: dict[str, Any], status: str | None, now: float) -> float | None:
    """When the alert ended, or None while it fires."""
    if status == "firing":
        return None
    if status == "resolved" or it.get("message") == "resolved" or it.get("status") == "resolved":
        return float(it.get("resolved_at") or now)
    if (status == "acknowledged" or it.get("message") == "acknowledged" or it.get("status") == "acknowledged"
            or it.get("acked_at")):
        return float(it.get("acked_at") or now)
    return None


def probe_payload(title: str, body: str, instance: str, now: float) -> list[dict[str, Any]]:
    """A message without incidents (a test, the apprise CLI) becomes a short-lived alert."""
    return [{
        "labels": {"alertname": "SpecwatchTest", "kind": "test", "severity": "info", "instance": instance},
        "annotations": {"title": title[:ANNOTATION_MAX], "summary": title[:ANNOTATION_MAX],
                        "description": body[:ANNOTATION_MAX]},
        "startsAt": rfc3339(now),
        "endsAt": rfc3339(now + TEST_TTL),
    }]


class AlertmanagerError(Exception):
    """Alertmanager refused or could not be reached; the outbox retries."""


def post(base_url: str, alerts: Sequence[dict[str, Any]], timeout: float | tuple[float, float] = 10.0,
         verify: bool = True, auth: tuple[str, str] | None = None) -> None:
    """``POST {base_url}/api/v2/alerts``; raises AlertmanagerError unless Alertmanager accepted them."""
    try:
        r = requests.post(base_url.rstrip("/") + "/api/v2/alerts", data=json.dumps(list(alerts)),
                          headers={"Content-Type": "application/json"}, timeout=timeout, verify=verify,
                          auth=auth)
    except requests.RequestException as exc:
        raise AlertmanagerError(f"cannot reach Alertmanager: {type(exc).__name__}") from exc
    if r.status_code != 200:
        raise AlertmanagerError(f"Alertmanager answered HTTP {r.status_code}: {r.text[:200]}")


class NotifyAlertmanager(NotifyBase):  # type: ignore[misc]
    """Posts specwatch incidents to Prometheus Alertmanager."""

    service_name = "Prometheus Alertmanager"
    service_url = "https://prometheus.io/docs/alerting/latest/alertmanager/"
    protocol = "alertmanager"
    secure_protocol = "alertmanagers"
    setup_url = "https://github.com/prometheus/alertmanager"
    request_rate_per_sec = 0
    #: An acknowledgement ends the firing alert (see watcher.notify.contract).
    specwatch_messages = DEFAULT_MESSAGES | {"acknowledged"}
    templates = (
        "{schema}://{host}",
        "{schema}://{host}:{port}",
        "{schema}://{user}:{password}@{host}",
        "{schema}://{user}:{password}@{host}:{port}",
    )

    def __init__(self, ttl: float | None = None, instance: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ttl = float(ttl) if ttl else float(DEFAULT_TTL)
        self.instance = instance or None
        fullpath = kwargs.get("fullpath")
        self.fullpath = fullpath if isinstance(fullpath, str) else ""

    @property
    def base_url(self) -> str:
        """``http(s)://host:port[/prefix]``."""
        scheme = "https" if self.secure else "http"
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"{scheme}://{host}:{self.port or DEFAULT_PORT}{self.fullpath.rstrip('/')}"

    def send(self, body: str, title: str = "", *args: Any, **kwargs: Any) -> bool:  # noqa: ARG002
        """Post the incidents of the current delivery (or a short test alert)."""
        now = time.time()
        d = current()
        if d is not None and d.items:
            alerts = alerts_payload(d.items, now=now, ttl=self.ttl, instance=self.instance)
        else:
            alerts = probe_payload(title or "specwatch", body, self.instance or socket.gethostname(), now)
        auth = (str(self.user), str(self.password)) if self.user and self.password else None
        try:
            # apprise's request_timeout is a (connect, read) pair, which requests takes as it is.
            post(self.base_url, alerts, timeout=self.request_timeout, verify=bool(self.verify_certificate),
                 auth=auth)
        except AlertmanagerError as exc:
            msg = str(exc) if d is None else d.redact(str(exc))
            self.logger.warning("Alertmanager delivery failed: %s", msg)
            return False
        return True

    @property
    def url_identifier(self) -> tuple[Any, ...]:
        """What makes two alertmanager URLs the same target."""
        return (self.secure_protocol if self.secure else self.protocol, self.user, self.password, self.host,
                self.port or DEFAULT_PORT, self.fullpath.rstrip("/"))

    def url(self, privacy: bool = False, *args: Any, **kwargs: Any) -> str:
        """The URL back, with the password masked when ``privacy``."""
        params: dict[str, Any] = {"ttl": int(self.ttl)}
        if self.instance:
            params["instance"] = self.instance
        params.update(self.url_parameters(*args, privacy=privacy, **kwargs))
        auth = ""
        if self.user and self.password:
            auth = f"{self.quote(self.user, safe='')}:{self.pprint(self.password, privacy, mode='secret', safe='')}@"
        schema = self.secure_protocol if self.secure else self.protocol
        return (f"{schema}://{auth}{self.host}:{self.port or DEFAULT_PORT}{self.fullpath or '/'}"
                f"?{self.urlencode(params)}")

    @staticmethod
    def parse_url(url: str) -> dict[str, Any] | None:
        """apprise's URL parts plus ``ttl`` and ``instance``."""
        results: dict[str, Any] | None = NotifyBase.parse_url(url)
        if not results:
            return results
        qsd = results.get("qsd", {})
        if qsd.get("ttl"):
            try:
                results["ttl"] = float(qsd["ttl"])
            except ValueError:
                return None
        if qsd.get("instance"):
            results["instance"] = NotifyBase.unquote(qsd["instance"])
        return results


def register() -> None:
    """Make apprise know the alertmanager:// and alertmanagers:// schemes (idempotent)."""
    plugins: Any = manager_plugins
    mgr = plugins.NotificationManager()
    if "alertmanager" not in mgr:
        mgr.add(NotifyAlertmanager)
