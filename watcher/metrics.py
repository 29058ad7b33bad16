"""Prometheus metrics over HTTP (``--metrics-listen``): incidents, speculation state, lines, deliveries.

Nothing is counted on the pipe's hot path. Speculation state, acceptance and line counts are read
from the live analyzers when Prometheus scrapes (a custom collector); incident counters move only
when the dispatcher hands over a settled change; the "unmatched relevant line" check runs only on
the few lines the prefilter already selected (see ``_CountingClassifier``).

Label values are bounded on purpose, so a year of restarts does not grow the series count:
``source`` is a short stable name (no directories, no dates or long numbers), ``server`` is the
target model's file name, ``slot`` a slot number, ``target`` a notification target without its
secrets.
"""

from __future__ import annotations

import argparse
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from watcher import __version__
from watcher._net import is_loopback_host
from watcher.dispatch import Extension
from watcher.errors import UsageError
from watcher.incidents import KINDS, SEVERITIES, Incident
from watcher.labels import device_label, server_label, source_label, target_label
from watcher.relevance import NOISE, RELEVANT

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from watcher import config as cfg
    from watcher.classify import Classifier
    from watcher.environment import Environment
    from watcher.events import Event, Record
    from watcher.pipeline import Analyzer
    from watcher.state import Run

DEFAULT_HOST = "127.0.0.1"
#: Every word of ``watcher.relevance.RELEVANT`` in lower case: containing one is necessary for a RELEVANT match.
_RELEVANT_WORDS = ("draft", "specul", "mtp", "alloc", "out of memory", "oom", "vocab", "failed", "cannot",
                   "unable", "error")



# -- listen address ---------------------------------------------------------------------------------
def parse_listen(value: str, allow_remote: bool = False) -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT``, ``:PORT`` or ``PORT``; a non-loopback host needs ``allow_remote``."""
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_s)
    except ValueError:
        raise UsageError(f"--metrics-listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9808") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"--metrics-listen {value!r}: port out of range")
    if not allow_remote and not is_loopback_host(host):
        raise UsageError(f"--metrics-listen {value!r}: {host} is not a loopback address; metrics "
                         f"reveal model names and failures, so add --metrics-allow-remote to serve them to the network")
    return host, port


# -- what is counted --------------------------------------------------------------------------------
class _CountingClassifier:
    """Wraps an analyzer's classifier to count prefiltered lines that look relevant but match nothing.

    The prefilter only lets through lines holding a catalogue anchor, so this counts exactly those:
    a line that carries a known word (``draft``, ``failed to``, ``speculative`` ...) and the RELEVANT
    vocabulary of ``specwatch patterns test``, yet no pattern. New wording around a known anchor is
    the usual way a llama.cpp release breaks a pattern; lines with no anchor at all are never looked
    at in pipe mode (that is the prefilter's whole point) - ``specwatch patterns test FILE`` finds them.
    """

    def __init__(self, inner: Classifier, counts: _SourceCounts) -> None:
        self.inner = inner
        self.counts = counts

    def classify(self, record: Record) -> Event | None:
        """Classify as before; count the relevant-looking misses."""
        ev = self.inner.classify(record)
        if ev is None:
            # Most prefiltered lines are ordinary slot/task lines. Substring tests for RELEVANT's words on the
            # lowered text reject them several times faster than its case-insensitive alternation would.
            low = record.text.lower()
            if any(w in low for w in _RELEVANT_WORDS) and RELEVANT.search(record.text) \
                    and not NOISE.search(record.text):
                self.counts.unmatched += 1
        return ev

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class _SourceCounts:
    """Counters of one source name that survive its analyzer being replaced (file rotation, restart)."""

    unmatched: int = 0
    lines_before: int = 0
    drafted_before: dict[str, int] = field(default_factory=dict)
    accepted_before: dict[str, int] = field(default_factory=dict)


class Metrics:
    """The registry, the live analyzers, and the counters the sinks and deliveries move."""

    def __init__(self) -> None:
        # prometheus_client (and the http.server it uses) loads only when metrics are asked for: it would
        # otherwise add a tenth to every start.
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._analyzers: dict[str, Analyzer] = {}
        self._counts: dict[str, _SourceCounts] = {}
        self._incidents: dict[int, tuple[str, str, str]] = {}  # id(inc) -> kind, severity, status
        self._opened: dict[str, int] = dict.fromkeys(KINDS, 0)
        #: Occurrences by kind: an incident counts once per failure it stands for (a restart loop of 200 loads
        #: is one incident opened and 200 occurrences), from the ``count`` each change of it carries.
        self._occurred: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._counted: dict[int, int] = {}  # id(inc) -> the count already added to _occurred
        self._deliveries: dict[tuple[str, str], int] = {}
        self.registry.register(cast(Any, _Collector(self)))

    def register(self, analyzer: Analyzer, name: str | None = None) -> str:
        """Export ``analyzer``'s state under a source label; a new analyzer of the same name continues it."""
        label = source_label(name or analyzer.source)
        with self._lock:
            counts = self._counts.setdefault(label, _SourceCounts())
            old = self._analyzers.get(label)
            if old is not None and old is not analyzer:
                counts.lines_before += old.lines
                for server, (drafted, accepted) in _tokens(old).items():
                    counts.drafted_before[server] = counts.drafted_before.get(server, 0) + drafted
                    counts.accepted_before[server] = counts.accepted_before.get(server, 0) + accepted
            self._analyzers[label] = analyzer
        if not isinstance(analyzer.classifier, _CountingClassifier):
            analyzer.classifier = cast("Classifier", _CountingClassifier(analyzer.classifier, counts))
        return label

    def incident(self, inc: Incident, change: str) -> None:
        """Sink: count openings, track what is open."""
        with self._lock:
            if change == "opened":
                self._opened[inc.kind] = self._opened.get(inc.kind, 0) + 1
            self._incidents[id(inc)] = (inc.kind, inc.severity, inc.status)
            # The dispatcher may release several recurrences in one change: add what the count grew by.
            grown = inc.count - self._counted.get(id(inc), 0)
            if grown > 0:
                self._occurred[inc.kind] = self._occurred.get(inc.kind, 0) + grown
                self._counted[id(inc)] = inc.count

    def delivery(self, target: str, ok: bool) -> None:
        """One delivery attempt to a notification target (the URL is reduced by ``target_label``)."""
        key = (target_label(target), "ok" if ok else "failed")
        with self._lock:
            self._deliveries[key] = self._deliveries.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """Every metric family, read from the live state (called by the scrape thread)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from watcher.loads import footprint

        with self._lock:
            analyzers = dict(self._analyzers)
            counts = {k: (v.unmatched, v.lines_before, dict(v.drafted_before), dict(v.accepted_before))
                      for k, v in self._counts.items()}
            incidents = list(self._incidents.values())
            opened = dict(self._opened)
            occurred = dict(self._occurred)
            deliveries = dict(self._deliveries)

        info = GaugeMetricFamily("specwatch_build_info", "specwatch version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        open_now = GaugeMetricFamily("specwatch_incidents_open", "Incidents open now, by kind and severity",
                                     labels=["kind", "severity"])
        n_open: dict[tuple[str, str], int] = {(k, s): 0 for k in KINDS for s in SEVERITIES}
        for kind, severity, status in incidents:
            if status == "open":
                n_open[(kind, severity)] = n_open.get((kind, severity), 0) + 1
        for (kind, severity), n in sorted(n_open.items()):
            open_now.add_metric([kind, severity], n)
        yield open_now

        total = CounterMetricFamily("specwatch_incidents", "Incidents opened since start, by kind",
                                    labels=["kind"])
        for kind, n in sorted(opened.items()):
            total.add_metric([kind], n)
        yield total

        occurrences = CounterMetricFamily(
            "specwatch_incident_occurrences",
            "Failures seen, by kind: an incident's first occurrence and each recurrence (a restart that fails "
            "the same way, the same weak draft loaded again) counted into it", labels=["kind"])
        for kind, n in sorted(occurred.items()):
            occurrences.add_metric([kind], n)
        yield occurrences

        lines = CounterMetricFamily("specwatch_lines", "Log lines read", labels=["source"])
        unmatched = CounterMetricFamily(
            "specwatch_unmatched_relevant_lines",
            "Prefiltered lines that look like trouble (RELEVANT words, not NOISE) but match no pattern",
            labels=["source"])
        requested = GaugeMetricFamily("specwatch_speculation_requested",
                                      "1 when the server's latest load asked for speculation (a draft, an "
                                      "MTP head, a speculative type, or a previous load that speculated)",
                                      labels=["source", "server"])
        active = GaugeMetricFamily("specwatch_speculation_active",
                                   "1 when the slot decodes speculatively, 0 when it does not or is unknown",
                                   labels=["source", "server", "slot"])
        ratio = GaugeMetricFamily("specwatch_draft_acceptance_ratio",
                                  "Accepted / drafted tokens of the server's latest load",
                                  labels=["source", "server"])
        drafted = CounterMetricFamily("specwatch_draft_tokens_drafted", "Draft tokens proposed",
                                      labels=["source", "server"])
        accepted = CounterMetricFamily("specwatch_draft_tokens_accepted", "Draft tokens accepted",
                                       labels=["source", "server"])
        for label, analyzer in sorted(analyzers.items()):
            n_unmatched, lines_before, drafted_before, accepted_before = counts.get(label, (0, 0, {}, {}))
            lines.add_metric([label], lines_before + analyzer.lines)
            unmatched.add_metric([label], n_unmatched)
            for server, run in _latest_runs(analyzer).items():
                requested.add_metric([label, server], 1 if run.spec_requested or run.spec_expected else 0)
                for slot, on in _slot_states(run):
                    active.add_metric([label, server, slot], on)
                if run.drafted:
                    ratio.add_metric([label, server], run.accepted / run.drafted)
            tokens = _tokens(analyzer)
            for server in sorted(set(tokens) | set(drafted_before)):
                d, a = tokens.get(server, (0, 0))
                drafted.add_metric([label, server], d + drafted_before.get(server, 0))
                accepted.add_metric([label, server], a + accepted_before.get(server, 0))
        yield from (lines, unmatched, requested, active, ratio, drafted, accepted)

        memory = GaugeMetricFamily("specwatch_model_memory_mib",
                                   "MiB the server's latest load allocated (llama.cpp's buffer lines), by device, "
                                   "role (target, draft) and kind (weights, kv, rs: recurrent state, compute)",
                                   labels=["source", "server", "device", "role", "kind"])
        pair = GaugeMetricFamily("specwatch_pair_acceptance_ratio",
                                 "Accepted / drafted tokens of a (target, draft) pair over every load of the source",
                                 labels=["source", "server", "draft"])
        for label, analyzer in sorted(analyzers.items()):
            for server, run in _latest_runs(analyzer).items():
                for row in footprint(run):
                    for kind in ("weights", "kv", "rs", "compute"):
                        memory.add_metric([label, server, device_label(row["device"]), row["role"], kind],
                                          row[f"{kind}_mib"])
            for (server, draft), (d, a) in sorted(_pairs(analyzer).items()):
                pair.add_metric([label, server, draft], a / d)
        yield from (memory, pair)

        sent = CounterMetricFamily("specwatch_notifications",
                                   "Notification delivery attempts, by target and outcome",
                                   labels=["target", "outcome"])
        for (target, outcome), n in sorted(deliveries.items()):
            sent.add_metric([target, outcome], n)
        yield sent


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.collect()


def _runs(analyzer: Analyzer) -> list[Run]:
    # The analysis thread may append a run while we scrape; a copy of a list is atomic under the GIL.
    return list(analyzer.stream.runs)


def _latest_runs(analyzer: Analyzer) -> dict[str, Run]:
    """The newest run of each server (target model) of a source."""
    latest: dict[str, Run] = {}
    for run in _runs(analyzer):
        latest[server_label(run.target_model)] = run
    return latest


def _slot_states(run: Run) -> list[tuple[str, int]]:
    """(slot, 1/0) for each slot; a run whose slots are unknown reports one ``all`` series."""
    speculating = run.speculation == "on"
    for _ in range(3):
        try:
            slots = sorted(run.slots.values(), key=lambda s: s.id)
            break
        except RuntimeError:  # the dict grew under us; try again
            continue
    else:
        slots = []
    if not slots:
        return [("all", 1 if speculating else 0)]
    out = []
    for s in slots:
        on = s.speculative == "on" or (s.speculative == "unknown" and speculating)
        out.append((str(s.id), 1 if on else 0))
    return out


def _tokens(analyzer: Analyzer) -> dict[str, tuple[int, int]]:
    """Drafted and accepted tokens per server, summed over the source's runs."""
    out: dict[str, tuple[int, int]] = {}
    for run in _runs(analyzer):
        if run.drafted or run.accepted:
            d, a = out.get(server_label(run.target_model), (0, 0))
            out[server_label(run.target_model)] = (d + run.drafted, a + run.accepted)
    return out


def _pairs(analyzer: Analyzer) -> dict[tuple[str, str], tuple[int, int]]:
    """Drafted and accepted tokens per (target, draft) pair, summed over the source's runs."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for run in _runs(analyzer):
        if run.drafted and run.draft_model:
            key = (server_label(run.target_model), server_label(run.draft_model))
            d, a = out.get(key, (0, 0))
            out[key] = (d + run.drafted, a + run.accepted)
    return out


# -- the sink ------------------------------------------------------------------------------------
class MetricsSink:
    """The dispatcher's view of the metrics: counts incidents; ``close`` stops the HTTP server."""

    def __init__(self, metrics: Metrics, server: Any = None, thread: threading.Thread | None = None) -> None:
        self.metrics = metrics
        self.server = server
        self.thread = thread

    @property
    def address(self) -> tuple[str, int] | None:
        """Where the endpoint listens (the real port when 0 was asked for)."""
        if self.server is None:
            return None
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def incident(self, inc: Incident, change: str) -> None:
        """Count the change."""
        self.metrics.incident(inc, change)

    def analyzer(self, analyzer: Analyzer) -> None:
        """Export a new analyzer's live state (every analyzer a command builds comes here)."""
        self.metrics.register(analyzer)

    def delivery(self, target: str, ok: bool) -> None:
        """Count one notification delivery attempt."""
        self.metrics.delivery(target, ok)

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            # The serve loop notices a shutdown only on its next poll, half a second away; a connection
            # wakes it at once, so specwatch (and a supervised server's exit status) is not held up.
            stopper = threading.Thread(target=self.server.shutdown, daemon=True)
            stopper.start()
            if self.address is not None:
                import socket

                with contextlib.suppress(OSError):
                    socket.create_connection(self.address, timeout=0.5).close()
            stopper.join()
            self.server.server_close()
            self.server = None


def start(host: str, port: int) -> MetricsSink:
    """Serve a fresh registry on ``host:port``."""
    from prometheus_client import start_http_server

    metrics = Metrics()
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsSink(metrics, server, thread)


def add_options(p: argparse.ArgumentParser) -> None:
    """``--metrics-listen`` and ``--metrics-allow-remote`` on every analysing command."""
    g = p.add_argument_group("metrics")
    g.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (loopback only unless "
                        "--metrics-allow-remote; port 0 picks a free port)")
    g.add_argument("--metrics-allow-remote", action="store_true",
                   help="allow a --metrics-listen address other than loopback")


def sink_from_args(args: argparse.Namespace, env: Environment, conf: cfg.Config) -> MetricsSink | None:
    """Start the endpoint when asked for; a busy port is a warning, not a reason to stop watching."""
    listen = getattr(args, "metrics_listen", None) or conf.get("metrics", "listen")
    if not listen:
        return None
    allow = bool(getattr(args, "metrics_allow_remote", False) or conf.get("metrics", "allow_remote", False))
    host, port = parse_listen(listen, allow)
    try:
        sink = start(host, port)
    except OSError as exc:
        env.stderr.write(f"specwatch: metrics disabled: cannot listen on {listen}: {exc.strerror or exc}\n")
        return None
    where = sink.address
    if where is not None:
        shown = f"[{where[0]}]" if ":" in where[0] else where[0]
        env.stderr.write(f"specwatch: metrics on http://{shown}:{where[1]}/metrics\n")
    return sink


EXTENSION = Extension(add_options, sink_from_args)
