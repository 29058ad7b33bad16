"""What every rule of a stream shares: its runs, and how an incident is opened, counted again after a restart,
given its evidence, resolved and announced.

The handlers (loading, memory, failures, serving) and the conclusions build on this class; ``Stream`` puts them
together. Nothing here knows an event by name: that is the handlers' part.
"""

from __future__ import annotations

from collections.abc import Callable

from watcher import hints
from watcher.events import Event
from watcher.incidents import Incident, basename
from watcher.state.model import Run, Settings

#: Failures of the draft that make a host (LM Studio) reload the target without it.
_DRAFT_FAILURES = ("draft_load_failed", "draft_context_failed", "draft_incompatible")


class StreamBase:
    """The state of one log source that every rule reads and writes, and the incident helpers they share."""

    def __init__(self, source: str, settings: Settings | None = None,
                 on_change: Callable[[Incident], None] | None = None) -> None:
        self.source = source
        self.settings = settings or Settings()
        self.runs: list[Run] = []
        self.on_change = on_change
        #: Where the load before a run's first one is, when another stream holds it (llama-swap names a model
        #: only after its process loaded, so a swap-in starts a stream of its own): see ``_recurrence``.
        self.earlier_load: Callable[[Run], Run | None] | None = None
        self._last_acc: list[tuple[int, int]] = []  # (drafted, accepted) per task, newest last
        #: Models some line of this stream announced as a server's target ("loading model '...'", a host's launch
        #: of a runner): never a draft, whatever run their later lines land in (a router's children interleave).
        self._targets: set[str] = set()

    def _failing_role(self, run: Run) -> str:
        """Whose allocation or context this is, from the sequence: once the target's context exists (slots
        are being set up) and a draft is configured, what is still being created while loading is the draft's
        (per-slot draft contexts: b4164-b7199 in the server's init, b7864-b9108 in common_speculative_init)."""
        if run.role == "target" and run.target_ctx_ready and run.phase == "loading" and (
                run.draft_model or run.spec_requested):
            return "draft"
        return run.role

    def _resolve(self, run: Run, kind: str, ev: Event, why: str, cause: str) -> None:
        """Resolve this run's open ``kind`` incident of this cause: a later line showed it was not so."""
        inc = run.incidents.get(kind)
        if inc is None or inc.status != "open" or inc.extra.get("cause") != cause:
            return
        inc.status = "resolved"
        inc.resolved_line = ev.record.lineno
        inc.resolution = f"{why} (line {ev.record.lineno})"
        self._changed(inc)

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


def _trigger(inc: Incident) -> str:
    return str(inc.extra.get("trigger", ""))


def _is_memory(inc: Incident) -> bool:
    return bool(inc.mib) or inc.kind == "main_model_oom" or inc.extra.get("cause") == "memory"


def ln_close(a: int, b: int) -> bool:
    """Lines of one failure chain sit within a few lines of each other."""
    return abs(a - b) <= 6


def same_file(a: str | None, b: str | None) -> bool:
    """Two paths name the same model file (hosts print it with other separators or directories)."""
    return bool(a) and bool(b) and basename(a) == basename(b)


def head_arch(ev: Event) -> str | None:
    """The draft head (``Gemma4Assistant``) a line says needs its target's context, if it says so."""
    return ev.get("arch") if ev.get("cause") == "needs_target_ctx" else None
