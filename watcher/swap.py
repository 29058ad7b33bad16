"""Per-model state for llama-swap: attribute the events of one llama-swap stream to the model it started.

llama-swap relays its upstream servers' output raw, without a prefix, between its own ``[INFO] <id> ...``
lines (patterns/llama-swap.toml). So attribution is by sequence: the output of one upstream process is a
*section*, and each section's events go to the ``Stream`` of the model that section belongs to, so model
A's draft failure is never mixed with model B's slots, statistics or reloads.

A section begins with llama-swap naming the model it starts (``Executing start command``, debug level;
``Preloading model``; ``matrix: model=...``) or, when llama-swap says nothing first (its default info
level), with the upstream's own first line (``build_info``). A section opened that way is *anonymous*
until llama-swap's ``Health check passed`` (or a stop or exit line) names it; events are applied at
once regardless, so an alert is never held back waiting for a name. Ports tie the two together: the
start command's ``--port`` and the upstream's ``listening on`` line give a section its port, and a
health check only names the section listening on its port. A log without llama-swap lines is one
anonymous section on the default stream: exactly the single-server analysis.

``SwapStream`` is a ``Stream`` to everything outside (``runs``, ``incidents()``, ``run``, ``finish()``),
so the pipeline, reports and metrics need no change; it never uses the inherited state machinery for
itself, only the per-model streams it holds.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from watcher.events import Event
from watcher.incidents import Incident, basename
from watcher.state import Run, Settings, Stream, settled_by_speculation

#: Events the demux consumes; state never sees them (they would start runs in logs without a server).
SWAP_EVENTS = frozenset({"swap_start", "swap_ready", "swap_stop", "swap_exit", "listen_port"})
#: Sections kept for port look-ups: models that run side by side (llama-swap groups with swap: false).
_RECENT = 16
_PORT_ARG = re.compile(r"(?:^|\s)--port[=\s]+(\d+)")


@dataclass(eq=False)
class Section:
    """The output of one upstream process: whose it is (once known), its port, and where it stands."""

    stream: Stream
    model: str | None = None
    port: int | None = None
    started: bool = False  # the upstream printed its first line (build_info)
    open: bool = True  # llama-swap has not stopped it, nor seen it exit


class SwapStream(Stream):
    """A stream that keeps one ``Stream`` per llama-swap model, fed by sequence and port."""

    def __init__(self, source: str, settings: Settings | None = None,
                 on_change: Callable[[Incident], None] | None = None) -> None:
        super().__init__(source, settings, on_change)
        self._forward = on_change
        # Keyed by the stream itself: an id() would be reused by a later stream once a merged one is freed.
        self._names: dict[Stream, str] = {}
        #: The stream of lines before (or without) any llama-swap model: a plain server log lives here.
        self.default = self._new_stream()
        self.models: dict[str, Stream] = {}
        self.streams: list[Stream] = [self.default]
        self.current = Section(self.default)
        self._recent: list[Section] = [self.current]
        self._mirrored: set[int] = set()
        self._held: Event | None = None  # an option warning of the upstream about to start
        #: The section of the log's own process: a plain server, llama-swap, or a llama-server router.
        self._root = self.current
        #: A router's children by port, the newest section of each (a model reloaded keeps its port or not).
        self._children: dict[int, Section] = {}
        self._channel: str | None = None  # the first channel seen, before the router's children are known
        # ``runs`` (inherited attribute) is the union of every inner stream's runs, oldest first, so
        # reports, golden files and metrics read one list as they do for a plain stream.
        self.runs: list[Run] = []

    # -- the Stream interface -------------------------------------------------------------------
    @property
    def run(self) -> Run:
        """The current run of the current section (started on first use, as ``Stream.run``)."""
        stream = self.current.stream
        run = stream.run
        self._mirror(stream)
        return run

    @property
    def router_ports(self) -> list[int]:
        """The ports of a llama-server router's children this log showed, in the order they appeared."""
        return list(self._children)

    def continue_runs(self, seen: int) -> None:
        """Runs seen before a resume number the plain server's runs (llama-swap's models count their own)."""
        self.default.continue_runs(seen)

    @property
    def runs_seen(self) -> int:
        """The number of the plain server's latest run, counting those seen before a resume."""
        return self.default.runs_seen

    def apply(self, ev: Event) -> None:
        """Route one event: llama-swap's own lines move sections, everything else goes to the current one."""
        t = ev.type
        if t in SWAP_EVENTS:
            if ev.get("host") and self.host is None:
                # llama-swap's own line: every model's advice says where its flags are set.
                self.host = ev.get("host")
                for stream in self.streams:
                    stream._host_found(self.host)
            self._swap_event(ev)
            return
        channel = ev.record.channel
        if channel and not self._children:
            # Without the router's spawn lines (an excerpt), one channel alone is any relay's prefix and the
            # log is read by sequence; a second one shows children side by side: the lines so far were the first's.
            if self._channel is None:
                self._channel = channel
            elif channel != self._channel:
                self.current.port = self.current.port or int(self._channel)
                self._children[int(self._channel)] = self.current
        if self._children:
            # Router mode: a child's line carries its port, the router's own line none. Neither depends on
            # which process spoke last, so children loading side by side are never mixed.
            self._routed(ev, int(channel) if channel else None)
            return
        sec = self.current
        if t == "draft_gpu_ignored" and self.models and sec.started:
            # Printed while the next upstream parses its options, before its first line: held for it.
            self._held = ev
            return
        if t == "build_info":
            if self.models and (sec.started or not sec.open):
                # A second first line under llama-swap: it started another process without saying so (its
                # default info level). Without llama-swap lines a restart stays in one stream, as state expects.
                sec = self._open(None, None)
            sec.started = True
            if self._held is not None:
                sec.stream.apply(self._held)
                self._held = None
        sec.stream.apply(ev)
        self._mirror(sec.stream, ev.record.lineno)

    def _routed(self, ev: Event, port: int | None) -> None:
        """One line of a llama-server router's log: a child's (``port``) to that child's section, opened
        anonymous when the log shows no spawn line for it (an excerpt); the router's own to the log's first."""
        if port is None:
            sec = self._root
        else:
            found = self._children.get(port)
            sec = found if found is not None else self._open(None, port)
            self._children[port] = sec
        self.current = sec
        if ev.type == "build_info":
            sec.started = True
        sec.stream.apply(ev)
        self._mirror(sec.stream, ev.record.lineno)

    def conclude_no_statistics(self, run: Run, tasks: int, draft: str | None = None,
                               command_line: str | None = None, no_spec_type: bool = False) -> Incident:
        """As ``Stream.conclude_no_statistics``, by the model stream that holds ``run``."""
        owner = next((s for s in self.streams if any(r is run for r in s.runs)), self.current.stream)
        return owner.conclude_no_statistics(run, tasks, draft, command_line, no_spec_type)

    def quiet(self, seconds: float) -> None:
        """A silence of ``seconds`` for every model's stream."""
        for stream in self.streams:
            stream.quiet(seconds)
            self._mirror(stream)

    def finish(self) -> None:
        """End of input for every model's stream."""
        for stream in self.streams:
            stream.finish()
            self._mirror(stream)

    # -- llama-swap's lines -----------------------------------------------------------------------
    def _swap_event(self, ev: Event) -> None:
        t, model, port = ev.type, ev.get("swap_model"), ev.get("port")
        if t == "listen_port":
            if self.current.port is None:
                self.current.port = port
        elif t == "swap_start" and model and port is not None:
            # A llama-server router spawning a child: its lines will come prefixed with this port.
            self._children[port] = self._open(model, port)
            self.current = self._root
        elif t == "swap_start" and model:
            self._start(model, _port_of(ev.get("cmd")))
        elif t == "swap_ready" and model:
            sec = self._section_for_port(port)
            if sec is not None and sec.model in (None, model):
                self._name(sec, model)
                sec.port = sec.port or port
        elif t in ("swap_stop", "swap_exit") and model:
            self._end(model, ev)

    def _start(self, model: str, port: int | None) -> None:
        cur = self.current
        if cur.model == model and not cur.started and cur.open:
            cur.port = cur.port or port  # one start told twice (preload, then the start command)
            return
        if cur.model is None and not cur.started and not cur.stream.runs:
            # Nothing was attributed to the anonymous section yet: it simply becomes this model's.
            self._name(cur, model)
            cur.port = port
            return
        self._open(model, port)

    def _end(self, model: str, ev: Event) -> None:
        sec = next((s for s in [*reversed(self._recent), *self._children.values()] if s.model == model), None)
        if sec is None and self.current.model is None and self.current.started:
            # Old llama-swap names a model only when it stops it: the anonymous process is that one.
            sec = self.current
            self._name(sec, model)
        if sec is None:
            return
        sec.open = False
        if not sec.stream.runs:
            return
        run = sec.stream.runs[-1]
        if ev.type == "swap_exit":
            # The process died without llama-swap asking: state's own rule for an exited server marks the
            # run and its incidents exited and keeps the line as evidence.
            sec.stream.apply(dataclasses.replace(ev, type="load_exit"))
            self._mirror(sec.stream)
        elif run.phase in ("loading", "serving"):
            run.phase = "exited"

    # -- sections -----------------------------------------------------------------------------------
    def _open(self, model: str | None, port: int | None) -> Section:
        stream = self.models.get(model) if model else None
        if stream is None:
            stream = self._new_stream()
            self.streams.append(stream)
        sec = Section(stream, None, port)
        if model:
            self._name(sec, model)
        self.current = sec
        self._recent = [*self._recent[-(_RECENT - 1):], sec]
        return sec

    def _section_for_port(self, port: int | None) -> Section | None:
        """The section a health check on ``port`` is about: the anonymous current one unless it listens
        elsewhere, else the newest listening on that port (anonymous ones first)."""
        cur = self.current
        if cur.model is None and (cur.port is None or port is None or cur.port == port):
            return cur
        same = [s for s in reversed(self._recent) if port is not None and s.port == port]
        return next((s for s in same if s.model is None), same[0] if same else None)

    def _name(self, sec: Section, model: str) -> None:
        """Give an anonymous section its model; a model seen before keeps one stream with all its runs."""
        sec.model = model
        earlier = self.models.get(model)
        if earlier is not None and earlier is not sec.stream:
            self._merge(earlier, sec.stream)
            for other in self._recent:
                if other.stream is earlier:
                    other.stream = sec.stream
            self.streams.remove(earlier)
            del self._names[earlier]
        self.models[model] = sec.stream
        self._names[sec.stream] = model
        for run in sec.stream.runs:
            run.source = _label(self.source, model)
            for inc in run.incidents.values():
                inc.extra["swap_model"] = model

    def _merge(self, earlier: Stream, later: Stream) -> None:
        """Put a model's earlier runs before the runs of the section just named as that model.

        The later stream keeps going (its per-run counters belong to the process now running), so the
        earlier runs move into it, renumbered in order, as state numbers the reloads of one server.
        """
        old, new = earlier.runs, later.runs
        # An incident of an earlier run that a later one recurred keeps its run; it counts to the renumbered one.
        carried = {id(inc) for run in old for inc in run.incidents.values()}
        for n, run in enumerate(new, len(old) + 1):
            was, run.ordinal = run.ordinal, n
            for inc in run.incidents.values():
                if id(inc) not in carried:
                    inc.run = n
                elif inc.extra.get("last_run") == was:
                    inc.extra["last_run"] = n
        if old and new:
            # state's rule for a reload: speculation once asked for is expected of the next load too.
            new[0].spec_expected = new[0].spec_expected or old[-1].spec_requested or old[-1].spec_expected
        later.runs = [*old, *new]
        for run in new:
            if run.spec_confirmed:
                _resolve_earlier(old, run, self._forward)

    def _new_stream(self) -> Stream:
        stream = Stream(self.source, self.settings)
        stream.host = self.host
        stream.on_change = self._tagger(stream)
        stream.earlier_load = self._earlier_load(stream)
        return stream

    def _earlier_load(self, stream: Stream) -> Callable[[Run], Run | None]:
        def find(run: Run) -> Run | None:
            """The latest load of ``run``'s target and draft in another section: the one before it, when this
            section is a swap-in llama-swap has not named yet (its info level names it after the load)."""
            if (stream in self._names) or not (run.target_model or run.draft_model):
                return None
            same = [r for s in self.streams if s is not stream for r in s.runs
                    if basename(r.target_model) == basename(run.target_model)
                    and basename(r.draft_model) == basename(run.draft_model)]
            return max(same, key=lambda r: r.last_line, default=None)
        return find

    def _tagger(self, stream: Stream) -> Callable[[Incident], None]:
        def changed(inc: Incident) -> None:
            model = self._names.get(stream)
            if model is not None:
                inc.extra["swap_model"] = model
            port = next((p for p, sec in self._children.items() if sec.stream is stream), None)
            if port is not None:
                inc.extra["router_port"] = port  # a router's child: the port its lines are prefixed with
            if self._forward is not None:
                self._forward(inc)
        return changed

    def _mirror(self, stream: Stream, lineno: int = 0) -> None:
        # A call adds at most a run or two, always at the end of the inner list.
        fresh: list[Run] = []
        for run in reversed(stream.runs):
            if id(run) in self._mirrored:
                break
            fresh.append(run)
        for run in reversed(fresh):
            self._mirrored.add(id(run))
            model = self._names.get(stream)
            if model is not None:
                run.source = _label(self.source, model)
            if stream is not self.default and run.first_line == 1 and lineno:
                # Stream starts its first run at line 1 (a log's first server starts with the log); a model
                # started mid-log starts where its first event is.
                run.first_line = lineno
            self.runs.append(run)


def _resolve_earlier(old: list[Run], run: Run, on_change: Callable[[Incident], None] | None) -> None:
    """Speculation confirmed before the section had its name: close the model's earlier failures, as
    state does when a reload of the same server speculates again."""
    for older in old:
        for inc in older.incidents.values():
            if inc.status == "open" and settled_by_speculation(inc, run):
                inc.status = "resolved"
                inc.resolved_line = run.first_line
                inc.resolution = f"speculation works again in run {run.ordinal}"
                if on_change is not None:
                    on_change(inc)


def _port_of(cmd: str | None) -> int | None:
    m = _PORT_ARG.search(cmd or "")
    return int(m.group(1)) if m else None


def _label(source: str, model: str) -> str:
    """A run's source as reports show it: the log, then the model as llama-swap names it."""
    return f"{source} <{model}>"
