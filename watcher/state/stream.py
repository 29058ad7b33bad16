"""One log source's state: which run each event belongs to, the handler that takes it, and the end of the input.

The handlers live with their concern (loading.py, memory.py, failures.py, serving.py, conclusions.py); this
module puts them together and holds the registry of which event each one takes.
"""

from __future__ import annotations

from collections.abc import Callable

from watcher import hints
from watcher.events import Event
from watcher.incidents import Incident
from watcher.state.loading import LoadingRules
from watcher.state.memory import MemoryRules
from watcher.state.model import Run, Settings
from watcher.state.serving import ServingRules

#: Events that happen once per slot while a server initialises; seeing one again for the same
#: slot means the server (or LM Studio) reloaded the model, so a new run begins.
_SLOT_INIT = {"slot_new", "spec_ctx_not_init", "spec_ctx_init_ok"}
_SPEC_ON = {"spec_ctx_init_ok", "draft_acceptance", "spec_statistics", "draft_step_accepted"}


class Stream(LoadingRules, MemoryRules, ServingRules):
    """State of one log source; feed it events, read its runs and incidents."""

    def __init__(self, source: str, settings: Settings | None = None,
                 on_change: Callable[[Incident], None] | None = None) -> None:
        super().__init__(source, settings, on_change)
        #: Runs an earlier process saw in this source before the line it resumed at (``watch`` after a
        #: restart): numbering continues from there, the run it resumed inside keeping its number.
        self.run_base = 0
        #: Lines printed before the run they belong to has begun (see ``apply``).
        self._pending_no_impls: Event | None = None
        self._pending_gpu_ignored: Event | None = None
        #: The program whose log this is, once a line says so (LM Studio's record headers): no run of its own.
        self.host: str | None = None

    @property
    def run(self) -> Run:
        """The current run, started on first use."""
        if not self.runs:
            self.runs.append(Run(max(self.run_base, 1), self.source, 1, host=self.host))
        return self.runs[-1]

    def continue_runs(self, seen: int) -> None:
        """An earlier process saw ``seen`` runs before the point this stream resumes at."""
        self.run_base = seen

    @property
    def runs_seen(self) -> int:
        """The number of the latest run, counting those seen before a resume."""
        return self.runs[-1].ordinal if self.runs else self.run_base

    def _host_found(self, host: str) -> None:
        """A line only ``host`` prints: this log is that program's, and advice already given says its words."""
        self.host = host
        for r in self.runs:
            if r.host is None:
                r.host = host
                for inc in r.incidents.values():
                    if inc.status == "open" and inc.hint:
                        inc.hint = hints.for_incident(inc, r)

    def _new_run(self, lineno: int, reason: str) -> Run:
        prev = self.runs[-1] if self.runs else None
        run = Run(prev.ordinal + 1 if prev is not None else self.run_base + 1, self.source, lineno, host=self.host)
        if prev is not None:
            if prev.phase == "loading" and not prev.incidents:
                prev.phase = "replaced"
            # A reload of the same server: LM Studio reloads without the draft after it failed.
            run.spec_expected = prev.spec_requested or prev.spec_expected
            if reason == "reload":
                run.target_model = prev.target_model
                run.inherited_model = True
        self.runs.append(run)
        self._last_acc = []
        return run

    def _started(self, run: Run) -> bool:
        return bool(run.target_model or run.slots or run.phase != "loading" or run.ledger.allocations)

    def apply(self, ev: Event) -> None:
        """Update state with one event."""
        t = ev.type
        # ``server`` is what user pattern files written before the ``host`` field set.
        host = ev.get("host") or (ev.get("server") if t == "host_record" else None)
        if host and host != self.host:
            self._host_found(host)
        if t == "host_record":
            return
        if t == "spec_no_impls":
            # Printed just before a slot's init lines: it belongs to the run that slot belongs to.
            self._pending_no_impls = ev
            return
        if not self.runs and self.run_base and t in ("build_info", "model_loading"):
            # Resumed just before a server start: that is the next run, not the rest of the last one.
            self.runs.append(Run(self.run_base + 1, self.source, ev.record.lineno, host=self.host))
        run = self.run
        if t == "draft_gpu_ignored" and self._started(run):
            # Printed while the options are parsed, before the build line: the next launch's.
            self._pending_gpu_ignored = ev
            return
        slot_id = ev.get("slot")
        if t in _SLOT_INIT and slot_id is not None:
            if (slot_id, t) in run._slot_events:
                run = self._new_run(ev.record.lineno, "reload")
            run._slot_events.add((slot_id, t))
        elif t in ("build_info", "model_loading") and self._started(run):
            run = self._new_run(ev.record.lineno, t)
        if self._pending_no_impls is not None:
            pending, self._pending_no_impls = self._pending_no_impls, None
            self._apply(run, pending)
        if self._pending_gpu_ignored is not None and not self._started(run):
            pending, self._pending_gpu_ignored = self._pending_gpu_ignored, None
            self._apply(run, pending)
        self._apply(run, ev)

    def _apply(self, run: Run, ev: Event) -> None:
        t, ln = ev.type, ev.record.lineno
        run.last_line = max(run.last_line, ln)
        if ev.get("min_build"):
            run.min_build = max(run.min_build or 0, ev.get("min_build"))
        handler = HANDLERS.get(t)
        if handler is not None:
            handler(self, run, ev)
        if t in _SPEC_ON and (t != "spec_statistics" or (ev.get("generated") or 0) > 0):
            self._confirm(run, ev)

    def quiet(self, seconds: float) -> None:
        """The source has been silent for ``seconds`` (a live pipe or file): an allocation failure (or a draft's
        loader error, or a vocabulary mismatch) that nothing reported is concluded now rather than at the end."""
        for run in self.runs:
            self._conclude_unreported(run, f"{seconds:.0f} s of silence")

    def finish(self) -> None:
        """End of stream: apply what was waiting and draw conclusions from what never came."""
        if self._pending_no_impls is not None:
            pending, self._pending_no_impls = self._pending_no_impls, None
            self._apply(self.run, pending)
        for run in self.runs:
            self._check_mtp_unavailable(run)
            self._conclude_unreported(run, "the log ends there")
            self._check_absence(run)
            self._check_draft_placement(run)


#: The handler of each event: ``Stream._on_<event>`` from whichever concern's class defines it, collected once.
#: Every event of watcher/events.py is either here or in IGNORED (tests/test_events.py holds both ways), so a
#: new event cannot go unhandled by mistake.
HANDLERS: dict[str, Callable[[Stream, Run, Event], None]] = {
    name[len("_on_"):]: getattr(Stream, name) for name in dir(Stream) if name.startswith("_on_")
}

#: Events the per-run state deliberately does not handle, and why.
IGNORED: dict[str, str] = {
    "swap_start": "llama-swap's demux (watcher/swap.py) consumes it to open a model's section",
    "swap_ready": "llama-swap's demux consumes it to name a section",
    "swap_stop": "llama-swap's demux consumes it to close a section",
    "swap_exit": "llama-swap's demux consumes it to close a section",
    "listen_port": "llama-swap's demux consumes it to tie a section to its port",
    "host_record": "Stream.apply takes it for the whole stream (which host wrote the log), not for one run",
    "projector_meta": "a vision/audio projector belongs to the target: claimed so that model_meta never takes "
                      "it for a second model (a draft)",
    "rs_size": "a recurrent state's size line: claimed so that kv_size never takes its cells (sequences) for the "
               "KV cache's tokens; its buffer is in the ledger as rs_buffer",
    **dict.fromkeys(("model_arch", "model_file_size", "device_memory", "task_release", "prompt_cache",
                     "server_exiting"),
                    "the memory ledger's LoadTracker (watcher/loads.py) reads it; incident rules do not use it"),
}
