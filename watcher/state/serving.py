"""Serving: tasks, the draft's acceptance, and the speculation they confirm (which resolves what said it failed)."""

from __future__ import annotations

import math

from watcher.events import Event
from watcher.incidents import Incident, basename
from watcher.state.conclusions import Conclusions
from watcher.state.model import Run


class ServingRules(Conclusions):
    """Handlers of tasks and draft statistics, and the acceptance rules."""

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

    def _check_acceptance(self, run: Run, ev: Event) -> None:
        """Low acceptance over the window opens (or, for a new load of the same draft, counts again) its
        incident; acceptance back above the threshold over a full window resolves it."""
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
        if inc is None:
            # A reload (a llama-swap swap-in) of the same target and draft: its acceptance judges that incident.
            inc = self._recurrence(run, "low_acceptance")
            if inc is not None and rate < self.settings.low_acceptance:
                inc.count += 1
                inc.extra["last_run"] = run.ordinal
                run.incidents["low_acceptance"] = inc
                self._changed(inc)
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
                if inc.status == "open" and settled_by_speculation(inc, run):
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


def settled_by_speculation(inc: Incident, run: Run) -> bool:
    """Whether ``run`` speculating settles ``inc``, an earlier load's failure: one of the same target, unless
    the target's own memory failed or it is low acceptance of the same draft (only acceptance over a full
    window settles that: speculating again with a draft as weak is the same problem, not its end)."""
    if inc.kind == "main_model_oom":
        return False
    if inc.model and run.target_model and basename(inc.model) != basename(run.target_model):
        return False
    return not (inc.kind == "low_acceptance" and basename(inc.draft_model) == basename(run.draft_model))


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
