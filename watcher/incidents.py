"""Incidents: one finding per failure and run, keyed for dedupe, with a title a person can act on."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

#: The ``kind`` values are an interface (scripts, alert rules, the store): add, never rename.
KINDS: dict[str, str] = {
    "draft_load_failed": "the draft model's weights did not load (missing, corrupt, out of memory)",
    "draft_context_failed": "the draft loaded but its context / KV cache could not be created",
    "spec_disabled": "speculation was asked for, and the server is serving without it",
    "spec_unsupported": "the target context cannot do speculation (recurrent/hybrid model, multimodal)",
    "draft_incompatible": "the draft's vocabulary does not match the target's",
    "low_acceptance": "speculation runs but accepts too few drafted tokens to pay for its memory",
    "draft_on_cpu": "the draft runs on the CPU while the target is on a GPU",
    "main_model_oom": "the target itself failed to allocate (not a speculation problem, reported as such)",
    "spec_runtime_error": "a speculative batch failed while serving (requests get HTTP 500)",
    "memory_overcommit": "a model is starting whose last measured footprint, beside what is resident, exceeds the "
                         "device's memory",
    "acceptance_regressed": "a (target, draft) pair accepts far less than it did in earlier loads (a build change)",
}

SEVERITIES = ("critical", "warning", "info")


@dataclass
class Evidence:
    """A log line that proves an incident, with where it was."""

    lineno: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"line": self.lineno, "text": self.text}


@dataclass
class Incident:
    """What failed, where, why, and what to change."""

    kind: str
    severity: str
    source: str
    run: int
    model: str | None = None
    draft_model: str | None = None
    slots: list[int] = field(default_factory=list)
    device: str | None = None
    mib: float | None = None
    reason: str = ""
    hint: str = ""
    server_state: str = "unknown"  # serving | serving_without_speculation | exited | unknown
    confidence: str = "certain"  # certain | inferred (a finding from evidence of absence)
    evidence: list[Evidence] = field(default_factory=list)
    attempts: int = 1
    #: Server loads (runs) of one stream that failed this same way in a row: a restart loop is one incident.
    count: int = 1
    first_line: int = 0
    last_line: int = 0
    status: str = "open"  # open | resolved
    resolved_line: int | None = None
    resolution: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Stable identity: the same failure of the same models on the same source dedupes."""
        parts = [self.kind, self.source, basename(self.model), basename(self.draft_model), self.device or ""]
        import hashlib  # here, not at import: parsing a command line needs no hash

        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        """One line saying what broke and where."""
        return render_title(self)

    def add_evidence(self, lineno: int, text: str, limit: int = 8) -> None:
        """Keep the first few proving lines, never the same line twice."""
        if len(self.evidence) < limit and all(e.lineno != lineno for e in self.evidence):
            self.evidence.append(Evidence(lineno, text.strip()))
        self.last_line = max(self.last_line, lineno)
        if not self.first_line:
            self.first_line = lineno

    def add_slot(self, slot: int | None) -> None:
        """Name every affected slot once."""
        if slot is not None and slot not in self.slots:
            self.slots.append(slot)
            self.slots.sort()

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape documented in the README."""
        return {
            "id": self.key,
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "status": self.status,
            "source": self.source,
            "run": self.run,
            "model": self.model,
            "draft_model": self.draft_model,
            "slots": list(self.slots),
            "device": self.device,
            "mib": self.mib,
            "reason": self.reason,
            "hint": self.hint,
            "server_state": self.server_state,
            "confidence": self.confidence,
            "attempts": self.attempts,
            "count": self.count,
            "first_line": self.first_line,
            "last_line": self.last_line,
            "resolved_line": self.resolved_line,
            "resolution": self.resolution,
            "evidence": [e.as_dict() for e in self.evidence],
            **({"details": self.extra} if self.extra else {}),
        }


def basename(path: str | None) -> str:
    """File name of a model path, whichever separator the host used."""
    if not path:
        return ""
    return re.split(r"[\\/]", path.rstrip("\\/"))[-1]


def slot_list(slots: list[int]) -> str:
    """``0-3``, ``0,2``: compact ranges."""
    if not slots:
        return ""
    out: list[str] = []
    start = prev = slots[0]
    for s in [*slots[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    return ",".join(out)


def _mib(v: float | None) -> str:
    return "" if v is None else f"{v:.0f} MiB"


def render_title(inc: Incident) -> str:
    """Titles lead with the consequence, then the cause and the place."""
    draft = basename(inc.draft_model) or "draft"
    where = f" on {inc.device}" if inc.device else ""
    size = f" ({_mib(inc.mib)})" if inc.mib else ""
    slots = f", slots {slot_list(inc.slots)}" if inc.slots else ""
    off = "Speculative decoding OFF" if inc.server_state != "exited" else "Server exited"
    cause = inc.extra.get("cause")
    match inc.kind:
        case "draft_context_failed" if cause == "draft_head_alone":
            head = inc.extra.get("draft_head") or "draft head"
            return f"{off}: {draft} is a {head} draft head and cannot run without its target model"
        case "draft_context_failed" if cause == "no_mtp_layers":
            return f"{off}: MTP requested, but {basename(inc.model) or 'the model'} has no MTP layers"
        case "draft_on_cpu" if cause == "no_gpu":
            return f"Draft {draft} runs on the CPU: no usable GPU found (--gpu-layers-draft ignored)"
        case "draft_context_failed":
            why = "out of memory" if inc.mib or cause == "memory" else "context failed"
            return f"{off}: draft {draft} {why}{where}{size}{slots}"
        case "draft_load_failed":
            return f"{off}: draft {draft} failed to load ({inc.reason or 'see evidence'}){where}{size}"
        case "spec_disabled":
            sure = " (inferred)" if inc.confidence == "inferred" else ""
            return f"Speculative decoding OFF{sure}: {inc.reason or 'server serving without speculation'}{slots}"
        case "spec_unsupported":
            return f"{off}: {inc.reason or 'the target context cannot do speculation'}"
        case "draft_incompatible":
            return f"{off if inc.severity == 'critical' else 'Speculation degraded'}: draft {draft} is not " \
                   f"compatible with the target ({inc.reason or 'vocabulary mismatch'})"
        case "low_acceptance":
            return f"Low draft acceptance: {inc.reason}{slots}"
        case "draft_on_cpu":
            return f"Draft {draft} runs on the CPU while the target is on a GPU"
        case "main_model_oom":
            return f"Target model out of memory{where}{size}: {basename(inc.model) or 'model'} did not load"
        case "spec_runtime_error":
            return f"Speculative batch failed while serving{slots}: requests get HTTP 500"
        case "memory_overcommit":
            return f"Memory overcommit{where}: {inc.reason}"
        case "acceptance_regressed":
            return f"Draft acceptance regressed: {inc.reason}"
    return f"{inc.kind}: {inc.reason}"
