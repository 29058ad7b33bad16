"""Loading: which model a run loads and in which role, the speculative set-up, the slots, and how the load ends.

The role decides whose memory and failures the lines that follow are (the target's or the draft's); a new host's
or era's way of naming its models is taught here.
"""

from __future__ import annotations

from watcher import hints
from watcher.events import Event
from watcher.incidents import basename
from watcher.state.base import same_file
from watcher.state.conclusions import Conclusions
from watcher.state.model import Run


class LoadingRules(Conclusions):
    """Handlers of a load: build, models and their roles, speculative set-up, slots, loaded or exited."""

    def _on_build_info(self, run: Run, ev: Event) -> None:
        run.build = ev.get("build")

    def _on_model_loading(self, run: Run, ev: Event) -> None:
        run.role = "target"
        run.target_model = ev.get("model") or run.target_model
        run.inherited_model = False
        if ev.get("model"):
            self._targets.add(basename(ev.get("model")))

    def _on_model_meta(self, run: Run, ev: Event) -> None:
        path = ev.get("model")
        if run.role != "draft" and path and same_file(path, run.draft_model):
            # The draft named by the command line or the host's options is the model now loading.
            run.role = "draft"
        elif (run.role != "draft" and path and run.target_model and not run.inherited_model
              and not same_file(path, run.target_model) and run.phase == "loading" and not run.draft_model
              and basename(path) not in self._targets):
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

    def _on_spec_ctx_init_ok(self, run: Run, ev: Event) -> None:
        if ev.get("slot") is not None:
            run.slot(ev.get("slot")).speculative = "on"

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
