"""The run and slot model: what one load of a target model (and its draft) is known to be, and the thresholds of
the rules that fill it in.

Plain data: the rules of this package write it, and hints, metrics, reports and the memory ledger read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from watcher.events import Event
from watcher.incidents import Incident
from watcher.ledger import Ledger


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
