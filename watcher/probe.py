"""Ask a running llama-server whether it speculates: ``/props``, ``/slots`` and ``/metrics``.

The log says what happened at load; the HTTP endpoints say what the server is doing now. Shapes
recorded from llama.cpp b11549 are in samples/http/: ``/slots`` has ``"speculative": true|false`` per
slot and ``params["speculative.types"]``; ``/metrics`` (with ``--metrics``) has
``llamacpp:spec_decode_num_draft_tokens_total`` and ``..._num_accepted_tokens_total`` on builds that
export them. Builds without the counters are judged on the ``/slots`` flag alone.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from watcher._net import is_loopback_host
from watcher.config import flag_range
from watcher.dispatch import Extension
from watcher.errors import UsageError
from watcher.incidents import Incident

if TYPE_CHECKING:
    from watcher.config import Config
    from watcher.dispatch import Dispatcher
    from watcher.environment import Environment

#: Generated tokens after which "no drafted tokens" means speculation is not happening.
MIN_TOKENS = 32
TIMEOUT = 5.0


class ProbeError(Exception):
    """The URL is not allowed or the server did not answer usefully."""


def is_loopback(url: str) -> bool:
    """Only 127.0.0.0/8, ::1 and localhost count; anything else needs --allow-remote."""
    return is_loopback_host(urlsplit(url).hostname or "")


def check_url(url: str, allow_remote: bool) -> str:
    """The base URL without a trailing slash, or ProbeError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProbeError(f"not an http(s) URL: {url}")
    if not allow_remote and not is_loopback(url):
        raise ProbeError(f"{parts.hostname} is not a loopback address; pass --allow-remote to probe it")
    return url.rstrip("/")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, ``llamacpp:`` names only, prefix dropped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("llamacpp:"):
            continue
        name, _, value = line.partition(" ")
        try:
            out[name[len("llamacpp:"):].split("{", 1)[0]] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return out


@dataclass
class Snapshot:
    """What the endpoints said; ``None`` where an endpoint is disabled or missing."""

    props: dict[str, Any] | None = None
    slots: list[dict[str, Any]] | None = None
    metrics: dict[str, float] | None = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class Verdict:
    """The probe's conclusion."""

    status: str  # on | off | idle | unknown
    reason: str
    configured: bool
    drafted: float | None = None
    accepted: float | None = None
    generated: float | None = None
    speculative_slots: list[int] = field(default_factory=list)
    plain_slots: list[int] = field(default_factory=list)
    counters: bool = False

    @property
    def finding(self) -> bool:
        """Speculation is configured (or expected) and not happening."""
        return self.status in ("off", "idle")

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        rate = round(self.accepted / self.drafted, 4) if self.drafted and self.accepted is not None else None
        return {"status": self.status, "reason": self.reason, "configured": self.configured,
                "counters": self.counters, "generated": self.generated, "drafted": self.drafted,
                "accepted": self.accepted, "acceptance": rate, "speculative_slots": self.speculative_slots,
                "plain_slots": self.plain_slots}


def _get(url: str) -> tuple[int, str]:
    # urllib.request (with http.client, ssl and email) loads only when a probe really fetches.
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"Accept": "application/json, text/plain"})  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:  # noqa: S310 - check_url allows http(s) only
            return int(r.status), r.read(4 * 1024 * 1024).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(64 * 1024).decode("utf-8", "replace")


def fetch(base: str) -> Snapshot:
    """Read the three endpoints; one failing (disabled: 501, old build: 404) does not stop the others."""
    import json

    snap = Snapshot()
    for ep in ("props", "slots", "metrics"):
        try:
            status, body = _get(f"{base}/{ep}")
        except (OSError, ValueError) as exc:
            snap.errors[ep] = str(getattr(exc, "reason", exc))
            continue
        if status != 200:
            snap.errors[ep] = f"HTTP {status}"
            continue
        try:
            if ep == "metrics":
                snap.metrics = parse_metrics(body)
            elif ep == "slots":
                data = json.loads(body)
                snap.slots = data if isinstance(data, list) else None
            else:
                data = json.loads(body)
                snap.props = data if isinstance(data, dict) else None
        except json.JSONDecodeError:
            snap.errors[ep] = "not JSON"
    if len(snap.errors) == 3:
        raise ProbeError("no endpoint answered: " + "; ".join(f"/{k}: {v}" for k, v in snap.errors.items()))
    return snap


def _slot_types(slot: dict[str, Any]) -> str:
    params = slot.get("params") or {}
    return str(params.get("speculative.types", "")) if isinstance(params, dict) else ""


def judge(snap: Snapshot, expect: bool = False, min_tokens: int = MIN_TOKENS) -> Verdict:
    """Speculation configured but not happening? ``expect`` says the operator configured a draft."""
    slots = snap.slots or []
    spec_slots = [int(s.get("id", i)) for i, s in enumerate(slots) if s.get("speculative") is True]
    plain = [int(s.get("id", i)) for i, s in enumerate(slots) if s.get("speculative") is False]
    typed = any(_slot_types(s) not in ("", "none") for s in slots)
    configured = bool(spec_slots) or typed
    m = snap.metrics or {}
    counters = "spec_decode_num_draft_tokens_total" in m
    generated = m.get("tokens_predicted_total")
    drafted = m.get("spec_decode_num_draft_tokens_total")
    accepted = m.get("spec_decode_num_accepted_tokens_total")
    v = Verdict("unknown", "", configured, drafted, accepted, generated, spec_slots, plain, counters)
    if slots and not spec_slots and (expect or typed):
        v.status = "off"
        v.reason = (f"no slot has a speculator attached (/slots \"speculative\": false on slots "
                    f"{','.join(map(str, plain))})")
        return v
    if counters and configured:
        if generated is not None and generated >= min_tokens and not drafted:
            v.status = "idle"
            v.reason = f"{generated:.0f} tokens generated and 0 drafted (/metrics spec_decode counters)"
        elif drafted:
            v.status = "on"
            v.reason = f"{drafted:.0f} tokens drafted, {accepted or 0:.0f} accepted"
        else:
            v.reason = "speculator attached; not enough generation yet to judge"
        return v
    if configured:
        v.status = "on" if spec_slots else "unknown"
        v.reason = ("speculator attached on slots " + ",".join(map(str, spec_slots)) +
                    ("; this build exports no drafted-token counters (start it with --metrics, or it predates them)"
                     if not counters else ""))
        return v
    if expect and not slots:
        v.reason = "/slots unavailable (start the server with --slots); cannot tell"
        return v
    v.status = "not_configured" if slots else "unknown"
    v.reason = "no speculation configured" if slots else "/slots unavailable; cannot tell"
    return v


def incident(url: str, v: Verdict) -> Incident:
    """A finding as an incident, so the banner, the store and notifications handle it like log findings."""
    inc = Incident(kind="spec_disabled", severity="critical", source=f"probe {url}", run=1,
                   reason=f"{url}: {v.reason}", server_state="serving_without_speculation",
                   confidence="inferred",
                   hint="The server answers without speculating: check --spec-type (b9464+ needs draft-simple "
                        "with -md) and the load log for the draft's failure.")
    inc.slots = list(v.plain_slots)
    inc.extra["probe"] = v.as_dict()
    return inc


class Poller:
    """Polls one server in a daemon thread and hands each new finding to ``on_incident``.

    It never raises into the caller: connection errors are remembered and reported once.
    """

    def __init__(self, url: str, interval: float, on_incident: Callable[[Incident], None],
                 expect: bool = False, on_error: Callable[[str], None] | None = None) -> None:
        self.url = url
        self.interval = max(interval, 0.2)
        self.on_incident = on_incident
        self.expect = expect
        self.on_error = on_error
        self.current: Incident | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="specwatch-probe", daemon=True)
        self._warned = False

    def start(self) -> None:
        """Begin polling."""
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop polling (waits at most ``timeout`` for a request in flight)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def poll_once(self) -> Verdict | None:
        """One round: fetch, judge, open or resolve the incident."""
        try:
            v = judge(fetch(self.url), self.expect)
        except ProbeError as exc:
            if not self._warned and self.on_error is not None:
                self._warned = True
                self.on_error(f"probe {self.url}: {exc}")
            return None
        if v.finding and (self.current is None or self.current.status == "resolved"):
            self.current = incident(self.url, v)
            self.on_incident(self.current)
        elif v.status == "on" and self.current is not None and self.current.status == "open":
            self.current.status = "resolved"
            self.current.resolution = f"{self.url}: {v.reason}"
            self.on_incident(self.current)
        return v

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a probe bug must not take the watcher down
                if self.on_error is not None:
                    self.on_error(f"probe {self.url} stopped: {exc!r}")
                return
            self._stop.wait(self.interval)


# -- --probe URL on the commands that read logs -------------------------------------------------
def _options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("probe")
    g.add_argument("--probe", metavar="URL", help="also poll this llama-server's /props, /slots, /metrics")
    g.add_argument("--probe-interval", type=flag_range("--probe-interval"), default=30.0, metavar="SECONDS",
                   help="seconds between polls (default 30)")
    g.add_argument("--probe-allow-remote", action="store_true", help="allow a --probe host that is not loopback")
    g.add_argument("--probe-expect-spec", action="store_true",
                   help="slots without a speculator are a finding even if nothing says speculation is configured")


class ProbeSink:
    """Carries a poller; ``attach`` gives it the dispatcher its findings go through."""

    def __init__(self, url: str, interval: float, expect: bool, env: Environment) -> None:
        self.url, self.interval, self.expect, self.env = url, interval, expect, env
        self.poller: Poller | None = None

    def attach(self, disp: Dispatcher) -> None:
        """Start polling; findings go to ``disp.changed`` like the log's incidents."""
        if self.poller is None:
            self.poller = Poller(self.url, self.interval, disp.changed, self.expect, self._warn)
            self.poller.start()

    def _warn(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.env.stderr.write(f"specwatch: {text}\n")

    def incident(self, inc: Incident, change: str) -> None:
        """Log incidents need nothing from the probe."""

    def close(self) -> None:
        """Stop polling."""
        if self.poller is not None:
            self.poller.stop()


def _factory(args: argparse.Namespace, env: Environment, _conf: Config) -> ProbeSink | None:
    url = getattr(args, "probe", None)
    if not url:
        return None
    try:
        base = check_url(url, bool(getattr(args, "probe_allow_remote", False)))
    except ProbeError as exc:
        raise UsageError(f"--probe: {exc}") from exc
    return ProbeSink(base, float(getattr(args, "probe_interval", 30.0)),
                     bool(getattr(args, "probe_expect_spec", False)), env)


#: ``--probe`` and its sink, for every command that reads logs.
EXTENSION = Extension(_options, _factory)
