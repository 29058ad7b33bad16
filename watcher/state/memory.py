"""The memory ledger's events: what each role allocated and where, what failed to be, and the fitting probe whose
failures are normal.

An allocation failure is only recorded here, once per chain of lines and with whose it is: the failure line that
follows it reports it (failures.py), or the conclusions do where none does (conclusions.py).
"""

from __future__ import annotations

from watcher.events import Event
from watcher.ledger import Failure, device_name
from watcher.state.base import StreamBase, head_arch, ln_close
from watcher.state.model import Run


class MemoryRules(StreamBase):
    """Handlers of the fitting probe, of allocations and of their failures."""

    def _on_fit_start(self, run: Run, ev: Event) -> None:
        run.in_fit_probe = True

    def _on_fit_done(self, run: Run, ev: Event) -> None:
        run.in_fit_probe = False

    def _on_warmup(self, run: Run, ev: Event) -> None:
        # A real context is being warmed up: fitting is over even where its end line is not printed.
        run.in_fit_probe = False

    def _on_fit_extra_unmeasured(self, run: Run, ev: Event) -> None:
        # -fit sized the target without the draft: context for a draft OOM that may follow.
        run.fit_unmeasured = ev
        run.draft_head = head_arch(ev) or run.draft_head

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

    def _on_gpu_error_not_memory(self, run: Run, ev: Event) -> None:
        # Metal's "failed with status 5" is read as an allocation failure, since the memory case is the one
        # that matters; the description line after it can say otherwise. Then that failure is not one to conclude.
        last = run.ledger.failures[-1] if run.ledger.failures else None
        if last is not None and ln_close(last.lineno, ev.record.lineno):
            run.failures_reported = len(run.ledger.failures)
        run.recent_errors.append(ev)

    def _on_draft_gpu_ignored(self, run: Run, ev: Event) -> None:
        # Judged once the load is over: a build that loads its GPU backends late prints this and still
        # offloads, so the log's own placement lines have the last word (_check_draft_placement).
        run.gpu_ignored = ev

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
