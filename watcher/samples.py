"""The golden form of an analysis, shared by the sample tests and ``tools/update_expected.py``.

Only what a user relies on goes in (incident kinds, slots, device, size, models, state, evidence line
numbers, run summaries), not wording, so hints and titles can improve without rewriting every file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from watcher.incidents import basename
from watcher.pipeline import Analyzer


def sample_logs(root: Path) -> Iterator[Path]:
    """Every sample log under ``root`` (``*.log`` and the seed ``*.txt``), sorted."""
    for p in sorted(root.rglob("*")):
        if p.suffix in (".log", ".txt") and p.is_file():
            yield p


def golden(a: Analyzer) -> dict[str, Any]:
    """The comparable summary of one analysed source."""
    runs = []
    for r in a.stream.runs:
        runs.append({
            "run": r.ordinal,
            "model": basename(r.target_model) or None,
            "draft_model": basename(r.draft_model) or None,
            "speculation": r.speculation,
            "state": r.phase,
            "slots": {str(s.id): {"n_ctx": s.n_ctx, "speculative": s.speculative}
                      for s in sorted(r.slots.values(), key=lambda s: s.id)},
            "tasks": r.tasks_done,
            "drafted": r.drafted,
            "accepted": r.accepted,
        })
    incidents = []
    for i in a.incidents():
        incidents.append({
            "kind": i.kind,
            "severity": i.severity,
            "status": i.status,
            "confidence": i.confidence,
            "run": i.run,
            "slots": i.slots,
            "device": i.device,
            "mib": round(i.mib, 2) if i.mib else None,
            "model": basename(i.model) or None,
            "draft_model": basename(i.draft_model) or None,
            "server_state": i.server_state,
            "evidence_lines": [e.lineno for e in i.evidence],
        })
    return {"runs": runs, "incidents": incidents}
