"""Conclusions from what came, or never came: at the end of a load, after a silence, at the end of the input.

An allocation failure (a draft's loader error, a vocabulary mismatch) that no failure line reported; tasks that
print no draft statistics; a draft left on the CPU; MTP refused. What is inferred says so (``confidence``) and
from what. A new era's or host's way of ending a log is taught here.
"""

from __future__ import annotations

from watcher import hints
from watcher.incidents import Incident, basename
from watcher.state.failures import FailureRules
from watcher.state.model import Run

#: From this build on, a draft given with -md is loaded but not used unless --spec-type names a draft type
#: (b9109-b9463 enabled it with a warning, older builds always did): research catalogue, section 5.
SPEC_TYPE_REQUIRED_SINCE = 9464


class Conclusions(FailureRules):
    """The checks that the end of a load, silence, tasks and the end of the input call."""

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


def _on_gpu(run: Run) -> bool:
    """The log shows model memory on a GPU (a GPU build after all), for the draft if it says anything of it."""
    d = run.ledger.offload.get("draft")
    if d is not None:
        return d[0] > 0
    gpu = any(not a.device.startswith(("CPU", "?")) and not a.device.endswith("_Host")
              for a in run.ledger.allocations)
    return gpu or run.ledger.offload.get("target", (0, 0))[0] > 0
