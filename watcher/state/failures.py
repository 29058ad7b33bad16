"""Failures: of the draft's or the target's model load, of a context, of the vocabulary, of the speculative set-up.

Each failure line opens the incident it means, with the loader's errors and allocation failures before it as
evidence. The lines that only announce one (a loader's error, a vocabulary mismatch, MTP refused for want of
layers) are kept in the run for the failure line that follows, or for the conclusions when none does.
"""

from __future__ import annotations

from watcher import hints
from watcher.events import Event
from watcher.incidents import Evidence, basename
from watcher.state.base import StreamBase, head_arch, ln_close, same_file
from watcher.state.model import Run

#: Lines between llama_init_from_model's exception line and its caller's "failed to create context"
#: line: printed back to back; LM Studio's record header may sit between them.
_CHAIN_GAP = 3

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



class FailureRules(StreamBase):
    """Handlers of the lines that say a model, a context or the speculative set-up failed, or is about to."""

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

    def _on_vocab_mismatch(self, run: Run, ev: Event) -> None:
        run.recent_errors.append(ev)
        if ev.get("cause") == "vocab":
            run.vocab_pending = ev

    def _on_mtp_unavailable(self, run: Run, ev: Event) -> None:
        if run.in_fit_probe:
            return
        run.mtp_unavailable = ev
        run.spec_requested = True
        run.spec_mode = "mtp"
        run.role = "draft"
        run.recent_errors.append(ev)

    def _on_fit_probe_note(self, run: Run, ev: Event) -> None:
        # "X requires ctx_other to be set": X is a draft head that runs on its target's context. The fit
        # probe creates it alone and expects this; it is a real failure only when the caller's
        # "failed to create context with model" follows (see _on_context_failed).
        run.draft_head = head_arch(ev) or run.draft_head
        run.last_ctx_init = ev
        if ev.get("relayed_as") == "exit_cause" and ev.get("cause") == "needs_target_ctx":
            # The host reports the process terminated because of it (ollama): not a probe, the real context.
            self._draft_head_failed(run, ev, None)

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
        if (path and same_file(path, run.draft_model) and not same_file(path, run.target_model)) or (
                not path and self._failing_role(run) == "draft"):
            self._on_draft_context_failed(run, ev)
        elif path and same_file(path, run.target_model):
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
        arch = run.draft_head or head_arch(ev) or "draft head"
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

    def _on_spec_no_draft(self, run: Run, ev: Event) -> None:
        # A draft implementation with no draft context: a draft --spec-type and no draft model.
        run.spec_requested = True
        inc = self._incident(run, "spec_disabled", ev, cause="spec_type_without_draft",
                             reason="a draft speculative type is enabled but no draft model is loaded (no -md)")
        if run.phase != "exited":
            inc.server_state = "serving_without_speculation"

    def _on_spec_no_impls(self, run: Run, ev: Event) -> None:
        run.no_impls = True
        run.no_impls_event = run.no_impls_event or ev
        if run.spec_requested and run.draft_model:
            # b9464+: -md without --spec-type draft-simple loads the draft and never uses it.
            self._incident(run, "spec_disabled", ev, cause="no_spec_type",
                           reason=f"draft {basename(run.draft_model)} is loaded but no speculative type is enabled")

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
