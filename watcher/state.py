"""Per-stream state: server runs, their slots and memory, and the incidents their events add up to.

A *stream* is one log source (a pipe, a file, a child's output). It holds a sequence of *runs*: one
load of a target model, possibly with a draft, and the slots that serve it. Events update the
current run; state changes open or update incidents. The rules follow llama.cpp's behaviour by era
(see patterns/README.md): which lines mean speculation is off, which mean it failed, and which
error lines are normal (the memory-fitting probe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from watcher import hints
from watcher.events import Event
from watcher.incidents import Evidence, Incident, basename
from watcher.ledger import Failure, Ledger, device_name

#: Events that happen once per slot while a server initialises; seeing one again for the same
#: slot means the server (or LM Studio) reloaded the model, so a new run begins.
_SLOT_INIT = {"slot_new", "spec_ctx_not_init", "spec_ctx_init_ok"}
_SPEC_ON = {"spec_ctx_init_ok", "draft_acceptance", "spec_statistics", "draft_step_accepted"}
#: From this build on, a draft given with -md is loaded but not used unless --spec-type names a draft type
#: (b9109-b9463 enabled it with a warning, older builds always did): research catalogue, section 5.
SPEC_TYPE_REQUIRED_SINCE = 9464
#: Failures of the draft that make a host (LM Studio) reload the target without it.
_DRAFT_FAILURES = ("draft_load_failed", "draft_context_failed", "draft_incompatible")


@dataclass
class Slot:
    """One server slot (``--parallel`` of them)."""

    id: int
    n_ctx: int | None = None
    speculative: str = "unknown"  # on | off | unknown
    tasks: int = 0
    drafted: int = 0
    accepted: int = 0

    def as_dict(self) -> dict[str, object]:
        """JSON form."""
        rate = round(self.accepted / self.drafted, 4) if self.drafted else None
        return {"id": self.id, "n_ctx": self.n_ctx, "speculative": self.speculative, "tasks": self.tasks,
                "drafted": self.drafted, "accepted": self.accepted, "acceptance": rate}


@dataclass
class Run:
    """One load of a target model (and its draft) on one stream."""

    ordinal: int
    source: str
    first_line: int
    build: int | None = None
    #: The newest "first build with this wording" among the run's lines: dates a log whose build line is
    #: missing or reads b0-unknown (see the ``min_build`` a pattern sets).
    min_build: int | None = None
    #: The program whose log this is, when a line says so (``lmstudio``); hints speak in its settings.
    host: str | None = None
    target_model: str | None = None
    draft_model: str | None = None
    spec_requested: bool = False  # a draft was loaded or a speculative implementation was set up
    spec_expected: bool = False  # a previous run of this stream speculated with this target
    spec_confirmed: bool = False
    spec_mode: str | None = None
    role: str = "target"  # whose memory lines these are
    phase: str = "loading"  # loading | serving | exited
    in_fit_probe: bool = False
    n_slots: int | None = None
    n_ctx_slot: int | None = None
    slots: dict[int, Slot] = field(default_factory=dict)
    ledger: Ledger = field(default_factory=Ledger)
    tasks_done: int = 0
    tasks_with_tokens: int = 0
    acceptance_lines: int = 0
    drafted: int = 0
    accepted: int = 0
    no_impls: bool = False
    impl_added: bool = False  # the log named the speculative implementation(s) set up
    no_impls_event: Event | None = None
    draft_event: Event | None = None
    inherited_model: bool = False
    recent_errors: list[Event] = field(default_factory=list)
    #: The architecture of a draft head (Gemma4Assistant, EAGLE3, DFlash) that llama.cpp said needs the
    #: target's context ("X requires ctx_other to be set"): the process holds such a head.
    draft_head: str | None = None
    #: The last "failed to initialize the context" reason (or ctx_other note): the exception that the
    #: next "failed to create context with model" line reports.
    last_ctx_init: Event | None = None
    mtp_unavailable: Event | None = None
    fit_unmeasured: Event | None = None
    gpu_ignored: Event | None = None
    #: Recoverable allocation retries and memory warnings: context for a later memory incident.
    memory_notes: list[Event] = field(default_factory=list)
    #: Per-step acceptance counted into drafted/accepted (until a per-task summary line replaces it).
    step_counts: bool = False
    #: How many of ``ledger.failures`` an incident (or a retry) already accounts for; the rest are allocation
    #: failures nothing has reported yet (an excerpt that ends there, or a server that goes on serving).
    failures_reported: int = 0
    #: The target's own context exists: slots are being set up. A context or allocation failure after this,
    #: while loading with a draft configured, is the draft's (its contexts are created per slot, after).
    target_ctx_ready: bool = False
    #: A vocabulary mismatch no failure line has reported yet (the 2023 example exits right after it).
    vocab_pending: Event | None = None
    #: The loader's error for a model known to be the draft, not yet reported by a failure line.
    draft_loader_error: Event | None = None
    incidents: dict[str, Incident] = field(default_factory=dict)
    _slot_events: set[tuple[int, str]] = field(default_factory=set)
    last_line: int = 0

    def slot(self, sid: int) -> Slot:
        """The slot with this id, created on first mention."""
        if sid not in self.slots:
            self.slots[sid] = Slot(sid)
        return self.slots[sid]

    @property
    def speculation(self) -> str:
        """on, off, failed, not_configured or unknown: the run's speculation status in one word."""
        if any(i.kind not in ("low_acceptance", "draft_on_cpu") and i.status == "open"
               for i in self.incidents.values()):
            return "failed" if self.spec_requested else "off"
        if self.spec_confirmed:
            return "on"
        if not self.spec_requested and not self.spec_expected and not self.draft_model:
            return "not_configured"
        return "unknown"

    def as_dict(self) -> dict[str, object]:
        """JSON form for ``scan --json``."""
        return {
            "run": self.ordinal,
            "source": self.source,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "build": self.build,
            "model": self.target_model,
            "draft_model": self.draft_model,
            "speculation": self.speculation,
            "spec_mode": self.spec_mode,
            "state": self.phase,
            "n_slots": self.n_slots or (len(self.slots) or None),
            "slots": [s.as_dict() for s in sorted(self.slots.values(), key=lambda s: s.id)],
            "tasks": self.tasks_done,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance": round(self.accepted / self.drafted, 4) if self.drafted else None,
            "memory": self.ledger.table(),
        }


@dataclass
class Settings:
    """Thresholds of the state rules (configurable; defaults explained in the README)."""

    #: Completed tasks without any draft statistics before "speculation is not happening" is inferred.
    absent_stats_tasks: int = 3
    #: Acceptance below this over ``acceptance_window`` drafted tokens raises ``low_acceptance``.
    #: 0.30: good drafts accept 0.64-0.70 and matched EAGLE3/DFlash heads 0.98 in the samples; the draft
    #: reported as poor in llama.cpp PR 12603 accepts 0.23, a mismatched one 0 (docs/run.md).
    low_acceptance: float = 0.30
    acceptance_window: int = 512
    #: Before the window is full, a low rate is conclusive once even the optimistic end of its 95% interval
    #: (Wilson, one-sided) is under ``low_acceptance``, and at least this many tokens were drafted.
    acceptance_min_tokens: int = 32


def acceptance_upper_bound(accepted: float, drafted: float, z: float = 1.645) -> float:
    """The upper end of the one-sided 95% Wilson interval of an acceptance rate.

    Wilson's interval stays honest at 0 accepted and for small counts, where the plain ratio's normal
    interval collapses to a point; drafted tokens come in runs, so the bound is used only beside a
    minimum count, never alone.
    """
    if drafted <= 0:
        return 1.0
    p = accepted / drafted
    z2 = z * z
    centre = p + z2 / (2 * drafted)
    spread = z * math.sqrt((p * (1 - p) + z2 / (4 * drafted)) / drafted)
    return min(1.0, (centre + spread) / (1 + z2 / drafted))


class Stream:
    """State of one log source; feed it events, read its runs and incidents."""

    def __init__(self, source: str, settings: Settings | None = None,
                 on_change: Callable[[Incident], None] | None = None) -> None:
        self.source = source
        self.settings = settings or Settings()
        self.runs: list[Run] = []
        #: Runs an earlier process saw in this source before the line it resumed at (``watch`` after a
        #: restart): numbering continues from there, the run it resumed inside keeping its number.
        self.run_base = 0
        self.on_change = on_change
        self._pending_no_impls: Event | None = None
        self._pending_gpu_ignored: Event | None = None
        #: The program whose log this is, once a line says so (LM Studio's record headers): no run of its own.
        self.host: str | None = None
        #: Where the load before a run's first one is, when another stream holds it (llama-swap names a model
        #: only after its process loaded, so a swap-in starts a stream of its own): see ``_recurrence``.
        self.earlier_load: Callable[[Run], Run | None] | None = None
        self._last_acc: list[tuple[int, int]] = []  # (drafted, accepted) per task, newest last

    # -- runs -----------------------------------------------------------------------------------
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

    # -- events ---------------------------------------------------------------------------------
    def apply(self, ev: Event) -> None:
        """Update state with one event."""
        t = ev.type
        if t == "host_record":
            self.host = ev.get("server") or self.host
            for r in self.runs:
                r.host = r.host or self.host
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

    # -- handlers: load and identity -----------------------------------------------------------
    def _on_build_info(self, run: Run, ev: Event) -> None:
        run.build = ev.get("build")

    def _on_model_loading(self, run: Run, ev: Event) -> None:
        run.role = "target"
        run.target_model = ev.get("model") or run.target_model
        run.inherited_model = False

    def _on_model_meta(self, run: Run, ev: Event) -> None:
        path = ev.get("model")
        if run.role != "draft" and path and _same_file(path, run.draft_model):
            # The draft named by the command line or the host's options is the model now loading.
            run.role = "draft"
        elif (run.role != "draft" and path and run.target_model and not run.inherited_model
              and not _same_file(path, run.target_model) and run.phase == "loading" and not run.draft_model):
            # A second model loaded by the same process before it serves: llama.cpp loads the target first and
            # then the draft (server before b4164's log line, llama-speculative and -simple of 2023 to now).
            run.role = "draft"
            run.draft_model = path
            run.spec_requested = True
            run.spec_mode = run.spec_mode or "draft"
        if run.role == "draft":
            run.draft_model = run.draft_model or path
            run.spec_requested = True
        elif not run.target_model or run.inherited_model:
            run.target_model, run.inherited_model = path, False

    def _on_draft_loading(self, run: Run, ev: Event) -> None:
        run.in_fit_probe = False  # fitting probes the draft's memory, it never loads it for real
        run.role = "draft"
        run.draft_model = ev.get("model") or run.draft_model
        run.spec_requested = True
        run.spec_mode = run.spec_mode or "draft"
        run.draft_event = ev
        self._resolve(run, "spec_disabled", ev, "a draft model is loading after all", cause="spec_type_without_draft")

    def _on_launch_args(self, run: Run, ev: Event) -> None:
        # A command line or option dump: it names the draft before (or instead of) any draft line.
        draft = ev.get("draft_model")
        if draft:
            run.draft_model = run.draft_model or draft
        impl = ev.get("impl")
        if impl:
            run.spec_mode = run.spec_mode or impl
        if impl and not draft and not run.draft_model:
            # A draft speculative type with no draft model: llama.cpp drops it, on some builds without a word.
            inc = self._incident(run, "spec_disabled", ev, severity="warning", cause="spec_type_without_draft",
                                 reason=f"--spec-type {impl} needs a draft model (-md), and none is given")
            inc.confidence = "inferred"
            inc.extra["inferred_from"] = f"the command line (line {ev.record.lineno}) names no draft model"

    def _on_mtp_ctx_create(self, run: Run, ev: Event) -> None:
        run.role = "draft"
        run.spec_requested = True
        run.spec_mode = "mtp"
        run.draft_model = run.draft_model or (f"MTP head of {ev.get('model')}" if ev.get("model") else "MTP head")

    def _on_spec_setup(self, run: Run, ev: Event) -> None:
        # The speculative set-up is under way: what is allocated next while loading is the draft's.
        if run.phase == "loading":
            run.role = "draft"
            run.spec_requested = True

    def _on_spec_impl_added(self, run: Run, ev: Event) -> None:
        run.spec_requested = True
        run.impl_added = True
        run.spec_mode = ev.get("impl") or run.spec_mode

    def _on_fit_start(self, run: Run, ev: Event) -> None:
        run.in_fit_probe = True

    def _on_fit_done(self, run: Run, ev: Event) -> None:
        run.in_fit_probe = False

    def _on_warmup(self, run: Run, ev: Event) -> None:
        # A real context is being warmed up: fitting is over even where its end line is not printed.
        run.in_fit_probe = False

    def _on_fit_probe_note(self, run: Run, ev: Event) -> None:
        # "X requires ctx_other to be set": X is a draft head that runs on its target's context. The fit
        # probe creates it alone and expects this; it is a real failure only when the caller's
        # "failed to create context with model" follows (see _on_context_failed).
        run.draft_head = _head_arch(ev) or run.draft_head
        run.last_ctx_init = ev
        if ev.get("relayed_as") == "exit_cause" and ev.get("cause") == "needs_target_ctx":
            # The host reports the process terminated because of it (ollama): not a probe, the real context.
            self._draft_head_failed(run, ev, None)

    def _on_fit_extra_unmeasured(self, run: Run, ev: Event) -> None:
        # -fit sized the target without the draft: context for a draft OOM that may follow.
        run.fit_unmeasured = ev
        run.draft_head = _head_arch(ev) or run.draft_head

    def _on_fit_spec_estimate(self, run: Run, ev: Event) -> None:
        if ev.get("mib") is not None:
            run.ledger.estimated["draft"] = ev.get("mib")

    def _on_alloc_retry(self, run: Run, ev: Event) -> None:
        # Recoverable (llama.cpp retries with less); only worth showing beside a failure that follows. The
        # allocation failures just before it are the ones being retried: nothing is left to conclude from them.
        run.memory_notes = [*run.memory_notes[-3:], ev]
        if ev.type == "alloc_retry":
            run.failures_reported = len(run.ledger.failures)

    _on_alloc_warning = _on_alloc_retry

    def _on_draft_gpu_ignored(self, run: Run, ev: Event) -> None:
        # Judged once the load is over: a build that loads its GPU backends late prints this and still
        # offloads, so the log's own placement lines have the last word (_check_draft_placement).
        run.gpu_ignored = ev

    def _on_model_loaded(self, run: Run, ev: Event) -> None:
        run.phase = "serving"
        run.in_fit_probe = False
        self._conclude_unreported(run, f"the server went on to serve (line {ev.record.lineno})")
        self._finalise_load(run)

    def _on_load_exit(self, run: Run, ev: Event) -> None:
        run.phase = "exited"
        for inc in run.incidents.values():
            inc.server_state = "exited"
            if inc.count == 1:
                inc.add_evidence(ev.record.lineno, ev.record.text)
            self._changed(inc)

    # -- handlers: memory -------------------------------------------------------------------------
    def _on_device_free(self, run: Run, ev: Event) -> None:
        dev = device_name(ev.get("device"))
        if ev.get("free_mib") is not None:
            run.ledger.free.setdefault(dev, ev.get("free_mib"))

    def _on_buffer_size(self, run: Run, ev: Event) -> None:
        if run.in_fit_probe:
            return
        run.ledger.add(run.role, ev.get("kind", "model"), device_name(ev.get("buffer")), ev.get("mib", 0.0),
                       ev.record.lineno)

    def _on_kv_size(self, run: Run, ev: Event) -> None:
        if ev.get("cells") is not None:
            run.ledger.kv_cells[run.role] = ev.get("cells")

    def _on_offloaded(self, run: Run, ev: Event) -> None:
        run.ledger.offload[run.role] = (ev.get("layers", 0), ev.get("total_layers", 0))

    def _on_alloc_failed(self, run: Run, ev: Event) -> None:
        if run.in_fit_probe:
            return  # the fitting probe tries sizes that may not fit; llama.cpp calls that normal
        dev = device_name(ev.get("buffer"), ev.get("device_index"), ev.get("device") or "CUDA")
        mib = ev.get("mib")
        if mib is None and ev.get("bytes") is not None:
            mib = ev.get("bytes") / (1024 * 1024)
        if mib is None and ev.get("mb") is not None:
            mib = ev.get("mb") * 1e6 / (1024 * 1024)
        prev = run.ledger.failures[-1] if run.ledger.failures else None
        role = self._failing_role(run)
        # One allocation fails through a chain (backend -> allocator -> context); keep it once.
        if prev and prev.role == role and ln_close(prev.lineno, ev.record.lineno) and (
            prev.mib is None or mib is None or abs(prev.mib - mib) < 1
        ):
            if prev.device == "?" or (prev.device.startswith(("CUDA", "ROCm")) and dev != "?"):
                prev.device = dev if dev != "?" else prev.device
            prev.mib = prev.mib or mib
            if ev.get("kind") == "model":
                prev.what = "model"
            if ev.get("reason"):
                run.recent_errors.append(ev)  # a chain line that says why is worth showing
            return
        run.ledger.failures.append(Failure(role, dev, mib, ev.get("kind", "unknown"), ev.record.lineno))
        run.recent_errors.append(ev)

    def _on_alloc_error(self, run: Run, ev: Event) -> None:
        if not run.in_fit_probe:
            run.recent_errors.append(ev)

    def _on_mtp_unavailable(self, run: Run, ev: Event) -> None:
        if run.in_fit_probe:
            return
        run.mtp_unavailable = ev
        run.spec_requested = True
        run.spec_mode = "mtp"
        run.role = "draft"
        run.recent_errors.append(ev)

    def _on_vocab_mismatch(self, run: Run, ev: Event) -> None:
        run.recent_errors.append(ev)
        if ev.get("cause") == "vocab":
            run.vocab_pending = ev

    def _on_spec_no_draft(self, run: Run, ev: Event) -> None:
        # A draft implementation with no draft context: a draft --spec-type and no draft model.
        run.spec_requested = True
        inc = self._incident(run, "spec_disabled", ev, cause="spec_type_without_draft",
                             reason="a draft speculative type is enabled but no draft model is loaded (no -md)")
        if run.phase != "exited":
            inc.server_state = "serving_without_speculation"

    def _on_model_file_error(self, run: Run, ev: Event) -> None:
        if run.in_fit_probe:
            return
        if ev.get("role") == "draft" and run.role != "draft":
            # The file is of a draft-only architecture (DFlash, DSpark, EAGLE-3, an MTP/assistant head): whatever
            # loads it is loading a draft, even where no draft line came before.
            run.role = "draft"
            run.spec_requested = True
            run.spec_mode = run.spec_mode or "draft"
        run.recent_errors.append(ev)
        if run.role == "draft":
            run.draft_loader_error = ev

    # -- handlers: slots --------------------------------------------------------------------------
    def _on_slots_init(self, run: Run, ev: Event) -> None:
        run.target_ctx_ready = True
        run.in_fit_probe = False
        run.n_slots = ev.get("n_slots", run.n_slots)
        run.n_ctx_slot = ev.get("n_ctx", run.n_ctx_slot)
        run.role = "target"
        if run.n_slots:
            for sid in range(run.n_slots):
                s = run.slot(sid)
                s.n_ctx = s.n_ctx or run.n_ctx_slot

    def _on_slot_new(self, run: Run, ev: Event) -> None:
        run.target_ctx_ready = True
        run.role = "target"
        if ev.get("slot") is not None:
            run.slot(ev.get("slot")).n_ctx = ev.get("n_ctx")

    def _on_spec_ctx_not_init(self, run: Run, ev: Event) -> None:
        self._check_mtp_unavailable(run)
        sid = ev.get("slot")
        if sid is not None:
            run.slot(sid).speculative = "off"
        failed = [i for i in run.incidents.values() if i.kind in ("draft_context_failed", "draft_load_failed",
                                                                   "draft_incompatible", "spec_disabled")]
        for inc in failed:
            inc.add_slot(sid)
            if len(inc.slots) <= 1:
                inc.add_evidence(ev.record.lineno, ev.record.text)
            if inc.server_state == "unknown":
                # The server goes on creating slots without a draft: it will serve, only slower.
                inc.server_state = "serving_without_speculation"
            inc.hint = hints.for_incident(inc, run)  # its advice counts the slots that failed
            self._changed(inc)
        if not failed and (run.spec_requested or run.spec_expected):
            reload = run.no_impls and not run.spec_requested
            reason = ("reloaded without its draft (no speculative implementation configured)" if reload
                      else "speculative decoding context not initialized")
            if run.no_impls_event is not None:
                self._incident(run, "spec_disabled", run.no_impls_event, reason=reason)
            inc = self._incident(run, "spec_disabled", ev, reason=reason)
            inc.server_state = "serving_without_speculation"
            inc.add_slot(sid)
            cause = self._failure_before(run) if reload else None
            if cause is not None and "follows" not in inc.extra:
                # One story: the draft failed, then the host reloaded the target without it. The second incident
                # is that failure's consequence; sinks show it with its cause, not as a second alarm.
                inc.extra["follows"] = cause.key
                inc.hint = hints.for_incident(inc, run)

    def _on_spec_no_impls(self, run: Run, ev: Event) -> None:
        run.no_impls = True
        run.no_impls_event = run.no_impls_event or ev
        if run.spec_requested and run.draft_model:
            # b9464+: -md without --spec-type draft-simple loads the draft and never uses it.
            self._incident(run, "spec_disabled", ev, cause="no_spec_type",
                           reason=f"draft {basename(run.draft_model)} is loaded but no speculative type is enabled")

    def _on_spec_ctx_init_ok(self, run: Run, ev: Event) -> None:
        if ev.get("slot") is not None:
            run.slot(ev.get("slot")).speculative = "on"

    # -- handlers: failures ---------------------------------------------------------------------
    def _on_draft_context_failed(self, run: Run, ev: Event) -> None:
        moved = self._reassign_unnamed_ctx_failure(run, ev)
        kind = "draft_context_failed"
        inc = self._incident(run, kind, ev, reason=ev.get("reason") or "failed to create draft context")
        for e in moved:
            inc.add_evidence(e.lineno, e.text)
        self._attach_errors(run, inc)

    def _on_mtp_ctx_failed(self, run: Run, ev: Event) -> None:
        if run.mtp_unavailable is not None:
            self._mtp_without_layers(run, ev)
        else:
            self._on_draft_context_failed(run, ev)

    def _reassign_unnamed_ctx_failure(self, run: Run, ev: Event) -> list[Evidence]:
        """libllama's context failure names no model; when the caller's next line says it was the draft's (and
        the log showed no draft load before it), the target incident it opened was the draft's failure."""
        main = run.incidents.get("main_model_oom")
        ln = ev.record.lineno
        if main is None or main.status != "open" or not main.extra.get("unnamed_context") \
                or not ln_close(main.last_line, ln):
            return []
        main.status = "resolved"
        main.resolved_line = ln
        main.resolution = f"the context that failed was the draft's (line {ln})"
        for f in run.ledger.failures:
            if f.role == "target" and ln_close(f.lineno, ln):
                f.role = "draft"
        self._changed(main)
        return list(main.evidence)

    def _mtp_without_layers(self, run: Run, ev: Event) -> None:
        target = basename(run.target_model) or "the target model"
        inc = self._incident(run, "draft_context_failed", ev,
                             reason=f"MTP speculation was requested, but {target} has no MTP layers")
        inc.extra["cause"] = "no_mtp_layers"
        self._attach_errors(run, inc)

    def _draft_head_failed(self, run: Run, ev: Event, cause: Event | None) -> None:
        """A draft head's own context failed for want of its target's: it was loaded as a model alone."""
        ln = ev.record.lineno
        inc = run.incidents.get("draft_context_failed")
        if inc is not None and inc.extra.get("cause") == "draft_head_alone" and ln_close(inc.last_line, ln):
            # The same failure reported again up the call chain (common_init, then the server's load_model).
            inc.add_evidence(ln, ev.record.text)
            self._changed(inc)
            return
        path = ev.get("model")
        arch = run.draft_head or _head_arch(ev) or "draft head"
        run.draft_model = run.draft_model or path
        run.spec_requested = True  # a draft head only exists to speculate with
        as_main = bool(run.target_model) and basename(run.target_model) == basename(path)
        reason = (f"{basename(path) or basename(run.draft_model) or 'the draft'} is a {arch} draft head: it needs "
                  f"its target model's context and was "
                  f"created without one" + (" (it was loaded as the main model)" if as_main else ""))
        inc = self._incident(run, "draft_context_failed", ev, reason=reason)
        inc.extra["cause"] = "draft_head_alone"
        inc.extra["draft_head"] = arch
        # common_init_* failing makes the server's (or the CLI's) model load fail: the process exits.
        inc.server_state = "exited"
        if cause is not None:
            inc.add_evidence(cause.record.lineno, cause.record.text)
            inc.first_line = min(inc.first_line, cause.record.lineno)
        self._attach_errors(run, inc)

    def _on_draft_load_failed(self, run: Run, ev: Event) -> None:
        run.draft_model = run.draft_model or ev.get("model")
        run.spec_requested = True  # a draft was asked for, whether or not its loading line was seen
        inc = run.incidents.get("draft_load_failed")
        if inc is not None and ln_close(inc.last_line, ev.record.lineno):
            # The same failure reported again up the call chain (speculative init, then the server's load_model).
            inc.add_evidence(ev.record.lineno, ev.record.text)
            self._changed(inc)
            return
        reason, cause, arch = _load_reason(run, ev)
        inc = self._incident(run, "draft_load_failed", ev, reason=reason)
        if cause:
            inc.extra["cause"] = cause
        if arch:
            inc.extra["arch"] = arch
        self._attach_errors(run, inc)

    def _on_model_load_failed(self, run: Run, ev: Event) -> None:
        head = run.incidents.get("draft_context_failed")
        if head is not None and head.extra.get("cause") == "draft_head_alone" \
                and ln_close(head.last_line, ev.record.lineno):
            head.add_evidence(ev.record.lineno, ev.record.text)  # the host's summary of that same failure
            self._changed(head)
            return
        model = ev.get("model")
        is_draft = run.role == "draft" or (model and run.draft_model and basename(model) == basename(run.draft_model))
        if is_draft:
            self._on_draft_load_failed(run, ev)
        elif any(f.role == "target" for f in run.ledger.failures):
            inc = self._incident(run, "main_model_oom", ev, reason="target model did not fit")
            self._attach_errors(run, inc, role="target")

    def _on_context_failed(self, run: Run, ev: Event) -> None:
        named = ev.get("model") is not None
        if named:
            # "failed to create context with model '...'" comes from common_init_* or the server's
            # load_model, never from the fit probe (which throws "failed to create llama_context from
            # model" into a fit warning): whatever fitting did, this is the real context.
            run.in_fit_probe = False
        if run.in_fit_probe:
            return
        cause = run.last_ctx_init
        if not named:
            run.last_ctx_init = ev
        elif ev.get("cause") == "needs_target_ctx" or (
            cause is not None and cause.type == "fit_probe_note"
            and 0 <= ev.record.lineno - cause.record.lineno <= _CHAIN_GAP
        ):
            # llama_init_from_model logs its exception and returns; its caller logs this line next. A
            # "requires ctx_other" exception right before it is that context's cause, not a fit probe.
            self._draft_head_failed(run, ev, cause)
            return
        path = ev.get("model")
        if (path and _same_file(path, run.draft_model) and not _same_file(path, run.target_model)) or (
                not path and self._failing_role(run) == "draft"):
            self._on_draft_context_failed(run, ev)
        elif path and _same_file(path, run.target_model):
            if any(f.role == "target" for f in run.ledger.failures):
                inc = self._incident(run, "main_model_oom", ev, reason="target context did not fit")
                self._attach_errors(run, inc, role="target")
        elif run.role == "draft":
            self._on_draft_context_failed(run, ev)
        elif any(f.role == "target" for f in run.ledger.failures):
            inc = self._incident(run, "main_model_oom", ev, reason="target context did not fit")
            if not named and inc.attempts == 1:
                inc.extra["unnamed_context"] = True
            elif named:
                inc.extra.pop("unnamed_context", None)
            self._attach_errors(run, inc, role="target")

    def _on_spec_init_failed(self, run: Run, ev: Event) -> None:
        reason = ev.get("reason") or ""
        cause = ev.get("cause")
        if cause == "spec_type_without_draft":
            kind = "spec_disabled"
            reason = f"a draft speculative type is enabled but no draft model is configured ({reason})"
        elif cause in _INCOMPATIBLE:
            kind = "draft_incompatible"
        else:
            kind = "spec_disabled"
        inc = self._incident(run, kind, ev, reason=reason or "failed to initialize speculative decoding")
        self._attach_errors(run, inc)
        if run.phase != "exited":
            inc.server_state = "serving_without_speculation"

    def _on_draft_incompatible(self, run: Run, ev: Event) -> None:
        run.draft_model = run.draft_model or ev.get("draft_model")
        run.target_model = run.target_model or ev.get("target_model")
        inc = self._incident(run, "draft_incompatible", ev, reason=ev.get("reason") or "vocabulary mismatch")
        self._attach_errors(run, inc)

    def _on_draft_translate(self, run: Run, ev: Event) -> None:
        run.spec_requested = True
        inc = self._incident(run, "draft_incompatible", ev, severity="warning",
                             reason="tokens are translated between the vocabularies; expect acceptance near zero")
        inc.server_state = "serving"
        self._attach_errors(run, inc)

    def _on_spec_unsupported(self, run: Run, ev: Event) -> None:
        self._incident(run, "spec_unsupported", ev, reason=ev.get("reason") or ev.record.text.strip())

    def _on_spec_crash(self, run: Run, ev: Event) -> None:
        # llama.cpp aborted inside speculative decoding: the log simply ends after this line.
        reason = f"llama.cpp aborted in speculative decoding: {ev.get('reason') or 'assertion failed'}"
        kind = "spec_runtime_error" if run.phase == "serving" else "draft_incompatible"
        inc = self._incident(run, kind, ev, reason=reason)
        if kind == "draft_incompatible":
            # Setting up the speculative type checks the draft's structure (target layers of a DFlash or
            # EAGLE-3 head): an abort there is a draft of the wrong kind for the type.
            inc.extra.setdefault("cause", "draft_kind_mismatch")
            inc.hint = hints.for_incident(inc, run)
        inc.server_state = "exited"
        run.phase = "exited"

    def _on_spec_runtime_error(self, run: Run, ev: Event) -> None:
        self._incident(run, "spec_runtime_error", ev, severity="warning", reason="failed to process speculative batch")

    def _on_host_draft_ignored(self, run: Run, ev: Event) -> None:
        # LM Studio: the request asked for draft tokens but no draft is loaded.
        run.spec_expected = True
        self._incident(run, "spec_disabled", ev, reason="a draft was requested but no draft model is loaded")

    def _on_host_draft_failed(self, run: Run, ev: Event) -> None:
        # koboldcpp's own line names no cause: llama.cpp's "error loading model: ..." just before it does.
        loader = next((e for e in reversed(run.recent_errors) if e.type == "model_file_error" and e.get("reason")),
                      None)
        reason = ev.get("reason") or (f"error loading model: {loader.get('reason')}" if loader
                                      else "the host failed to load the draft")
        cause = ev.get("cause") or (loader.get("cause") if loader else None)
        # MLX engine (through LM Studio): SpeculativeDecodingNotSupportedError for batched models, and
        # ValueError "Draft model is not compatible with main model" for a vocabulary-size mismatch.
        kind = ("spec_unsupported" if cause in ("unsupported", "unsupported_batched")
                else "draft_incompatible" if cause in _INCOMPATIBLE else "draft_load_failed")
        run.spec_requested = True
        run.draft_model = run.draft_model or ev.get("model")
        inc = self._incident(run, kind, ev, reason=reason)
        inc.server_state = "serving_without_speculation"
        self._attach_errors(run, inc)

    # -- handlers: serving ----------------------------------------------------------------------
    def _on_task_timing(self, run: Run, ev: Event) -> None:
        self._conclude_unreported(run, f"the server went on serving (line {ev.record.lineno})")
        if run.phase == "loading":
            run.phase = "serving"
            self._finalise_load(run)
        self._check_absence(run)
        run.tasks_done += 1
        if ev.get("slot") is not None:
            run.slot(ev.get("slot")).tasks += 1

    def _on_eval_time(self, run: Run, ev: Event) -> None:
        if (ev.get("tokens") or 0) >= 8:
            run.tasks_with_tokens += 1
        if run.phase == "serving":
            self._check_absence(run)

    def _on_draft_acceptance(self, run: Run, ev: Event) -> None:
        run.acceptance_lines += 1
        if run.step_counts:
            # Per-step lines came first in this run and already counted these tokens. Switching to the
            # summaries now would make the exported token counters go down (a reset to Prometheus).
            if ev.get("slot") is not None:
                run.slot(ev.get("slot")).speculative = "on"
            return
        self._count_acceptance(run, ev)

    def _on_draft_step_accepted(self, run: Run, ev: Event) -> None:
        # One verification step (debug / LLAMA_TRACE logs; builds before b4984 print no per-task summary,
        # only these). Whichever kind of line comes first in a run is the one counted.
        if run.acceptance_lines and not run.step_counts:
            return
        run.step_counts = True
        self._count_acceptance(run, ev)

    def _count_acceptance(self, run: Run, ev: Event) -> None:
        gen, acc = ev.get("generated", 0), ev.get("accepted", 0)
        run.drafted += gen
        run.accepted += acc
        sid = ev.get("slot")
        if sid is not None:
            s = run.slot(sid)
            s.drafted += gen
            s.accepted += acc
            s.speculative = "on"
        self._last_acc.append((gen, acc))
        self._check_acceptance(run, ev)

    def _on_spec_statistics(self, run: Run, ev: Event) -> None:
        run.spec_mode = run.spec_mode or ev.get("impl")

    # -- conclusions ----------------------------------------------------------------------------
    def _resolve(self, run: Run, kind: str, ev: Event, why: str, cause: str) -> None:
        """Resolve this run's open ``kind`` incident of this cause: a later line showed it was not so."""
        inc = run.incidents.get(kind)
        if inc is None or inc.status != "open" or inc.extra.get("cause") != cause:
            return
        inc.status = "resolved"
        inc.resolved_line = ev.record.lineno
        inc.resolution = f"{why} (line {ev.record.lineno})"
        self._changed(inc)

    def _confirm(self, run: Run, ev: Event) -> None:
        if run.spec_confirmed:
            return
        run.spec_confirmed = True
        run.spec_requested = True
        # Speculation works again on this stream: earlier failures with this target are resolved.
        for older in self.runs:
            if older is run:
                continue
            for inc in older.incidents.values():
                same_model = not inc.model or not run.target_model or basename(inc.model) == basename(run.target_model)
                if inc.status == "open" and same_model and inc.kind != "main_model_oom":
                    inc.status = "resolved"
                    inc.resolved_line = ev.record.lineno
                    inc.resolution = f"speculation works again in run {run.ordinal} (line {ev.record.lineno})"
                    self._changed(inc)
        for inc in run.incidents.values():
            if inc.confidence == "inferred" and inc.status == "open" and inc.kind != "main_model_oom":
                inc.status = "resolved"
                inc.resolved_line = ev.record.lineno
                inc.resolution = "draft statistics appeared after all"
                self._changed(inc)

    def _finalise_load(self, run: Run) -> None:
        self._check_mtp_unavailable(run)
        for inc in run.incidents.values():
            if inc.server_state == "unknown" and inc.kind != "main_model_oom":
                inc.server_state = "serving_without_speculation"
                if not inc.slots:
                    for sid in sorted(run.slots):
                        inc.add_slot(sid)
                self._changed(inc)
        self._check_draft_placement(run)

    def _check_absence(self, run: Run) -> None:
        need = self.settings.absent_stats_tasks
        if not (run.spec_requested and not run.spec_confirmed and run.acceptance_lines == 0):
            return
        if run.incidents or run.phase == "exited":
            return
        done = run.tasks_done
        # With generated-token counts (b9230+ logs) two real generations are enough evidence;
        # without them a third task guards against tasks too short to draft anything.
        if run.tasks_with_tokens:
            if run.tasks_with_tokens < max(need - 1, 1):
                return
        elif done < need:
            return
        self.conclude_no_statistics(run, done)

    def conclude_no_statistics(self, run: Run, tasks: int, draft: str | None = None,
                               command_line: str | None = None, no_spec_type: bool = False) -> Incident:
        """Speculation was asked for and ``tasks`` tasks printed no draft statistics: say why, if it is known.

        The log's own era (b9464+ from its build line or wording) or the command line (``run``: a draft and no
        --spec-type) make the cause certain; the incident is then critical with the fix, whoever read the log.
        """
        era = run.build or run.min_build or 0
        if run.draft_model and era >= SPEC_TYPE_REQUIRED_SINCE and not run.impl_added:
            no_spec_type = True
        name = basename(run.draft_model or draft) or "configured"
        if no_spec_type:
            reason = (f"draft {name} is loaded but no speculative type is enabled ({tasks} completed task(s) "
                      "printed no draft statistics)")
        else:
            what = f"the command line asks for speculation ({command_line})" if command_line else f"draft {name} loaded"
            reason = f"{what}, but {tasks} completed task(s) printed no draft statistics"
        severe = no_spec_type or command_line is not None
        inc = Incident(kind="spec_disabled", severity="critical" if severe else "warning", source=self.source,
                       run=run.ordinal, model=run.target_model, draft_model=run.draft_model or draft, reason=reason,
                       server_state="serving_without_speculation", confidence="inferred")
        if no_spec_type:
            inc.extra["cause"] = "no_spec_type"
        if command_line:
            inc.extra["command_line"] = command_line
        inc.first_line = run.first_line
        inc.last_line = run.last_line
        for sid in sorted(run.slots):
            inc.add_slot(sid)
        inc.hint = hints.for_incident(inc, run)
        prev = None if "spec_disabled" in run.incidents else self._recurrence(run, "spec_disabled")
        if prev is not None and prev.extra.get("cause") == inc.extra.get("cause"):
            prev.count += 1  # the same silent failure after a restart: counted, not raised again
            prev.extra["last_run"] = run.ordinal
            inc = prev
        # Kept in the run so summaries see it, and resolved by the state if statistics appear after all.
        run.incidents.setdefault("spec_disabled", inc)
        inc = run.incidents["spec_disabled"]
        self._changed(inc)
        return inc

    def _check_acceptance(self, run: Run, ev: Event) -> None:
        window = self.settings.acceptance_window
        gen = acc = 0
        for g, a in reversed(self._last_acc):
            gen += g
            acc += a
            if gen >= window:
                break
        rate = acc / gen if gen else 0.0
        # A draft that is nearly always wrong is clear after a few tasks (0 of 60 cannot be a 30% draft's
        # luck); a mediocre one near the threshold needs the window, as a good draft's short task can dip.
        # Tokens of one draft round are not independent (a round stops at its first rejected token), so
        # they count as a quarter of a sample each: 0 of 33 is conclusive, 3 of the first 32 is not.
        clear_miss = (gen >= self.settings.acceptance_min_tokens
                      and acceptance_upper_bound(acc / 4, gen / 4) < self.settings.low_acceptance)
        if gen < window and not clear_miss:
            return
        inc = run.incidents.get("low_acceptance")
        if rate < self.settings.low_acceptance:
            if inc is None:
                inc = self._incident(run, "low_acceptance", ev, severity="warning",
                                     reason=f"{rate:.0%} of the last {gen} drafted tokens accepted "
                                            f"(threshold {self.settings.low_acceptance:.0%})")
                inc.server_state = "serving"
                inc.extra["acceptance"] = round(rate, 4)
            inc.add_slot(ev.get("slot"))
        elif inc is not None and inc.status == "open":
            inc.status = "resolved"
            inc.resolved_line = ev.record.lineno
            inc.resolution = f"acceptance recovered to {rate:.0%}"
            self._changed(inc)

    def _check_mtp_unavailable(self, run: Run) -> None:
        """MTP was refused for want of MTP layers and no context failure said so: say it here."""
        if run.mtp_unavailable is None or run.spec_confirmed or "draft_context_failed" in run.incidents:
            return
        self._mtp_without_layers(run, run.mtp_unavailable)

    def _check_draft_placement(self, run: Run) -> None:
        t, d = run.ledger.offload.get("target"), run.ledger.offload.get("draft")
        # Only a draft that was loaded and not already lost to a worse failure is worth the warning.
        moot = run.draft_model is None or any(i.severity == "critical" for i in run.incidents.values())
        if run.gpu_ignored is not None and "draft_on_cpu" not in run.incidents and not moot and not _on_gpu(run):
            inc = self._incident(run, "draft_on_cpu", run.gpu_ignored, severity="warning",
                                 reason="no usable GPU found: --gpu-layers-draft was ignored")
            inc.extra["cause"] = "no_gpu"
            inc.hint = hints.for_incident(inc, run)
            inc.server_state = "serving" if run.phase == "serving" else inc.server_state
        if not t or not d or "draft_on_cpu" in run.incidents:
            return
        if t[0] > 0 and d[0] == 0 and d[1] > 0:
            inc = self._incident(run, "draft_on_cpu", None, severity="warning",
                                 reason=f"target offloaded {t[0]}/{t[1]} layers, draft 0/{d[1]}")
            inc.server_state = "serving"

    def _failing_role(self, run: Run) -> str:
        """Whose allocation or context this is, from the sequence: once the target's context exists (slots
        are being set up) and a draft is configured, what is still being created while loading is the draft's
        (per-slot draft contexts: b4164-b7199 in the server's init, b7864-b9108 in common_speculative_init)."""
        if run.role == "target" and run.target_ctx_ready and run.phase == "loading" and (
                run.draft_model or run.spec_requested):
            return "draft"
        return run.role

    def _conclude_unreported(self, run: Run, after: str) -> None:
        """Allocation failures that no failure line reported, followed by ``after`` (the end of the log, or
        serving): the model or context they belonged to did not get its memory. Inferred, and said so."""
        loader, run.draft_loader_error = run.draft_loader_error, None
        if loader is not None and "draft_load_failed" not in run.incidents:
            # llama.cpp's loader threw for the draft and the excerpt (or the process) ends before its caller said so.
            self._on_draft_load_failed(run, loader)
            inc = run.incidents["draft_load_failed"]
            inc.confidence = "inferred"
            inc.extra["inferred_from"] = (f"the loader's error for the draft at line {loader.record.lineno}, then "
                                          f"{after}; no load failure line followed")
            self._changed(inc)
        vocab, run.vocab_pending = run.vocab_pending, None
        if vocab is not None and not run.incidents:
            # The draft's vocabulary cannot serve this target, and nothing said what became of it.
            inc = self._incident(run, "draft_incompatible", vocab,
                                 reason=vocab.get("reason") or "vocabulary mismatch")
            inc.confidence = "inferred"
            inc.extra["cause"] = "vocab"
            inc.extra["inferred_from"] = (f"vocabulary mismatch at line {vocab.record.lineno}, then {after}; "
                                          "no failure or translation line followed")
            self._attach_errors(run, inc)
        pending = run.ledger.failures[run.failures_reported:]
        if not pending or run.in_fit_probe:
            return
        f = pending[-1]
        if f.role == "draft":
            kind = "draft_load_failed" if f.what == "model" else "draft_context_failed"
        else:
            kind = "main_model_oom"
        if kind in run.incidents:
            # Already reported (or resolved as someone else's) for this run: the same failure told again.
            run.failures_reported = len(run.ledger.failures)
            return
        where = f" on {f.device}" if f.device != "?" else ""
        what = "weights" if f.what == "model" else "memory"
        owner = "the draft" if f.role == "draft" else "the target"
        inc = self._incident(run, kind, None, reason=f"out of memory: {owner}'s {what} could not be allocated{where}")
        inc.confidence = "inferred"
        inc.extra["cause"] = "memory"
        inc.extra["inferred_from"] = f"allocation failure at line {f.lineno}, then {after}; no failure line followed"
        if run.phase == "serving":
            inc.server_state = "serving" if kind == "main_model_oom" else "serving_without_speculation"
        inc.first_line = inc.first_line or f.lineno
        self._attach_errors(run, inc, role=f.role)
        self._changed(inc)

    # -- incident helpers -----------------------------------------------------------------------
    def _incident(self, run: Run, kind: str, ev: Event | None, reason: str = "", *,
                  severity: str = "critical", cause: str | None = None) -> Incident:
        inc = run.incidents.get(kind)
        recurred = False
        if inc is None:
            inc = self._recurrence(run, kind, reason, ev.get("cause") if ev is not None else None)
            recurred = inc is not None
        if inc is None:
            inc = Incident(kind=kind, severity=severity, source=self.source, run=run.ordinal,
                           model=run.target_model, draft_model=run.draft_model, reason=reason)
            if run.phase == "serving" and kind not in ("low_acceptance", "draft_on_cpu", "spec_runtime_error"):
                inc.server_state = "serving_without_speculation"
            elif run.phase == "exited":
                inc.server_state = "exited"
            run.incidents[kind] = inc
        elif recurred:
            # A restart that fails the same way: the same incident, counted again (one alert, not one per restart).
            inc.count += 1
            inc.extra["last_run"] = run.ordinal
            run.incidents[kind] = inc
        else:
            inc.attempts += 1 if ev is not None and ev.type == _trigger(inc) else 0
        if ev is not None:
            inc.extra.setdefault("trigger", ev.type)
            for name in ("cause", "impl"):
                if ev.get(name):
                    inc.extra.setdefault(name, ev.get(name))
            if inc.attempts == 1 and inc.count == 1:
                inc.add_evidence(ev.record.lineno, ev.record.text)
            inc.last_line = max(inc.last_line, ev.record.lineno)
            inc.add_slot(ev.get("slot"))
        if cause:
            inc.extra["cause"] = cause
        inc.model = inc.model or run.target_model
        inc.draft_model = inc.draft_model or run.draft_model
        inc.hint = hints.for_incident(inc, run)
        self._changed(inc)
        return inc

    def _recurrence(self, run: Run, kind: str, reason: str | None = None,
                    cause: str | None = None) -> Incident | None:
        """The open incident of this kind that the load just before, of the same models, raised for the same reason.

        A different reason or cause is a different failure (the draft was missing, then is a truncated file at
        the same path): counting it as the same one would repeat the first one's reason and advice.
        """
        before = [older for older in reversed(self.runs) if older is not run][:1]
        if not before and self.earlier_load is not None:
            before = [r for r in (self.earlier_load(run),) if r is not None]
        for older in before:
            inc = older.incidents.get(kind)
            if inc is not None and inc.status == "open" \
                    and basename(inc.model) == basename(run.target_model) \
                    and basename(inc.draft_model) == basename(run.draft_model) \
                    and (reason is None or inc.reason == reason) \
                    and (cause is None or inc.extra.get("cause") == cause):
                return inc
            return None  # only the run just before counts: a different failure in between ends the loop
        return None

    def _failure_before(self, run: Run) -> Incident | None:
        """The open draft failure of the run before this one (the reason a host reloaded without the draft)."""
        i = self.runs.index(run)
        if i == 0:
            return None
        return next((inc for inc in self.runs[i - 1].incidents.values()
                     if inc.kind in _DRAFT_FAILURES and inc.status == "open"), None)

    def _attach_errors(self, run: Run, inc: Incident, role: str | None = None) -> None:
        """Bring in the allocation failure that caused this, with its device and size."""
        fails = [f for f in run.ledger.failures if role is None or f.role == role]
        run.failures_reported = len(run.ledger.failures)
        run.vocab_pending = None
        run.draft_loader_error = None
        if fails:
            f = fails[-1]
            inc.device = inc.device or (f.device if f.device != "?" else None)
            inc.mib = inc.mib or f.mib
            inc.extra["failed_allocations"] = len(fails)
        if inc.attempts == 1 and inc.count == 1 and len(inc.evidence) <= 2:
            if run.draft_event is not None and inc.kind != "main_model_oom":
                inc.add_evidence(run.draft_event.record.lineno, run.draft_event.record.text)
            for e in run.recent_errors[-4:]:
                inc.add_evidence(e.record.lineno, e.record.text)
            if _is_memory(inc):
                # Why it did not fit: -fit left the draft out, or llama.cpp already retried with less.
                notes = run.memory_notes[-1:]
                if run.fit_unmeasured is not None and inc.kind != "main_model_oom":
                    notes.append(run.fit_unmeasured)
                for e in notes:
                    inc.add_evidence(e.record.lineno, e.record.text)
        inc.evidence.sort(key=lambda e: e.lineno)
        run.recent_errors.clear()
        inc.hint = hints.for_incident(inc, run)

    def _changed(self, inc: Incident) -> None:
        if self.on_change is not None:
            self.on_change(inc)

    def incidents(self) -> list[Incident]:
        """Every incident of every run, oldest first; one that recurred over several runs once."""
        seen: dict[int, Incident] = {}
        for r in self.runs:
            for i in r.incidents.values():
                seen.setdefault(id(i), i)
        return list(seen.values())


#: The handler of each event: ``Stream._on_<event>``, collected once. Every event of watcher/events.py is either
#: here or in IGNORED (tests/test_events.py holds both ways), so a new event cannot go unhandled by mistake.
HANDLERS: dict[str, Callable[[Stream, Run, Event], None]] = {
    name[len("_on_"):]: fn for name, fn in vars(Stream).items() if name.startswith("_on_") and callable(fn)
}

#: Events the per-run state deliberately does not handle, and why.
IGNORED: dict[str, str] = {
    "swap_start": "llama-swap's demux (watcher/swap.py) consumes it to open a model's section",
    "swap_ready": "llama-swap's demux consumes it to name a section",
    "swap_stop": "llama-swap's demux consumes it to close a section",
    "swap_exit": "llama-swap's demux consumes it to close a section",
    "listen_port": "llama-swap's demux consumes it to tie a section to its port",
    "host_record": "Stream.apply takes it for the whole stream (which host wrote the log), not for one run",
    **dict.fromkeys(("model_arch", "model_file_size", "device_memory", "task_release", "prompt_cache"),
                    "the memory ledger's LoadTracker (watcher/loads.py) reads it; incident rules do not use it"),
}

#: Lines between llama_init_from_model's exception line and its caller's "failed to create context"
#: line: printed back to back; LM Studio's record header may sit between them.
_CHAIN_GAP = 3


def _head_arch(ev: Event) -> str | None:
    """The draft head (``Gemma4Assistant``) a line says needs its target's context, if it says so."""
    return ev.get("arch") if ev.get("cause") == "needs_target_ctx" else None


def _same_file(a: str | None, b: str | None) -> bool:
    """Two paths name the same model file (hosts print it with other separators or directories)."""
    return bool(a) and bool(b) and basename(a) == basename(b)


def _is_memory(inc: Incident) -> bool:
    return bool(inc.mib) or inc.kind == "main_model_oom" or inc.extra.get("cause") == "memory"


def _on_gpu(run: Run) -> bool:
    """The log shows model memory on a GPU (a GPU build after all), for the draft if it says anything of it."""
    d = run.ledger.offload.get("draft")
    if d is not None:
        return d[0] > 0
    gpu = any(not a.device.startswith(("CPU", "?")) and not a.device.endswith("_Host")
              for a in run.ledger.allocations)
    return gpu or run.ledger.offload.get("target", (0, 0))[0] > 0


def _trigger(inc: Incident) -> str:
    return str(inc.extra.get("trigger", ""))


def ln_close(a: int, b: int) -> bool:
    """Lines of one failure chain sit within a few lines of each other."""
    return abs(a - b) <= 6


#: Causes that make a draft unusable for this target (vocabulary, tokens, head type).
_INCOMPATIBLE = ("vocab", "draft_kind_mismatch", "special_tokens")
INDEX_ERROR = "index error in llama.cpp's loader, not a file error"

#: A model load failure's causes, the most telling first when its chain of lines names several.
_LOAD_CAUSES = ("missing_file", "draft_head_alone", "unknown_arch", "index_error", "bad_gguf", "memory")
_LOAD_REASONS = {
    "draft_head_alone": "a draft head loaded as a model of its own (it borrows its target's tensors)",
    "missing_file": "file not found",
    "index_error": INDEX_ERROR,
    "bad_gguf": "file is not a valid GGUF",
    "memory": "out of memory",
}


def _load_reason(run: Run, ev: Event) -> tuple[str, str | None, str | None]:
    """(reason, cause, arch) of a draft load failure: from the causes the failure's lines carry."""
    if run.ledger.failures and run.ledger.failures[-1].role == "draft":
        return "out of memory", "memory", None
    lines = [ev, *reversed(run.recent_errors)]
    for cause in _LOAD_CAUSES:
        line = next((e for e in lines if e.get("cause") == cause), None)
        if line is None:
            continue
        if cause == "unknown_arch":
            # A draft head (gemma4-assistant, ...) or a newer family than this build (or its host) knows.
            arch = line.get("arch") or "?"
            return f"unknown model architecture: '{arch}'", cause, arch
        return _LOAD_REASONS[cause], cause, None
    return "see evidence", None, None
