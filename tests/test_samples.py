"""Every real log in samples/ gives exactly its expected result (golden files), and agrees with the
independent judgement written beside it when the log was collected (source.json / meta.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from watcher.pipeline import Analyzer
from watcher.samples import golden, sample_logs

LOGS = list(sample_logs(SAMPLES))
SPEC_KINDS = {"draft_load_failed", "draft_context_failed", "spec_disabled", "spec_unsupported",
              "draft_incompatible", "spec_runtime_error"}

#: Where specwatch and the collector's judgement differ, and why, by log stem (or "<dir>/<stem>" for the
#: engine builds, whose stems repeat). Strict xfail: fixing one fails the test until it is removed here.
KNOWN_DISAGREEMENTS: dict[str, str] = {
    "llamacpp-pr12603-metal-low-acceptance-annotated":
        "one task, 23% of 304 drafted tokens: under the 512-token window a mediocre rate is judged over, and "
        "above the 12% that is conclusive after 64 tokens; alarming here means alarming on any short task",
    "lms-610-gemma4-mtp-spec-batch-500":
        "reported as spec_runtime_error: the one line is an HTTP 500 batch failure; that an MTP head was "
        "attached as a plain draft is known from the report, not from the log",
    "lmstudio-2229-mtp-as-plain-draft-spec-batch":
        "reported as spec_runtime_error (its hint names the Gemma4Assistant head and --spec-type draft-mtp): "
        "a correctly configured MTP assistant hitting a batch bug logs the same lines, so the kind stays",
    "llamacpp-24758-gemma4-mtp-ctx-oom-silently-disabled":
        "a 5-line excerpt: nothing between the fit probe line and the allocation failure says whose context "
        "failed (a full log has the draft/MTP load line before it), so it reads as the target's",
    "lmstudio-441-draft-load-invalid-vector-2025":
        "a model load failure with no 'loading draft model' line before it: that the failing 0.5B model is the "
        "draft is known from the report, not from the log; no kind says 'some model failed to load'",
    # The issue-13 corpus (samples/public, labelled from each thread before specwatch ran on it).
    "gpustack-1455-llama-box-md-crash-first-request":
        "llama-box names the draft only in its 'arguments :' dump and crashes on the first request: the draft "
        "from an option dump is not read yet",
    "lmstudio-2244-mtp-head-as-simple-draft-segv":
        "an MTP head loaded as a plain draft, then a segfault: not recognised yet",
    "localai-9371-grpc-spec-no-impl-2026":
        "LocalAI's relayed 'no implementations specified' with a draft in its options is not read yet",
    # The held-out set (samples/heldout): labelled from each thread, run only once the detection work was done.
    "buun-46-dflash-unknown-arch-one-line":
        "the paste lost its line breaks: the unknown architecture, the failed model load and the failed draft "
        "load are one physical line, where the first pattern that matches wins",
    "llamacpp-pr10628-journald-spec-batch-decode-fail-2024":
        "only 'llama_decode: failed to decode, ret = 1' and a context shift, no draft named: a server without "
        "a draft whose context is full prints the same, so no speculative failure is concluded",
    # Older llama.cpp builds recorded by the engine matrix (samples/engine/<build>/).
    **{f"b8672/spec-type-without-draft-{v}":
       "--spec-type draft without a draft model: nothing is loaded and the build says nothing at default "
       "verbosity; verbose only has 'speculative decoding context not initialized' with no draft in the run"
       for v in ("default", "verbose")},
    "b10229/spec-type-without-draft-default":
        "--spec-type draft-simple without a draft model: at default verbosity this build prints nothing of the "
        "speculative set-up (its 'ctx_dft=no' line is a trace line) and segfaults at the first request",
}


def analyse(cat, log: Path) -> Analyzer:
    a = Analyzer(cat, source=log.name)
    a.feed(log.read_bytes())
    a.finish()
    return a


def test_there_are_samples_of_every_origin() -> None:
    """The corpus holds the seed, real engine runs and public reports."""
    origins = {p.relative_to(SAMPLES).parts[0] for p in LOGS}
    assert {"seed", "engine", "public"} <= origins
    assert len(LOGS) >= 40


@pytest.mark.parametrize("log", LOGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sample_matches_golden(cat, log: Path) -> None:
    """The analysis of each sample equals its reviewed expected file (tools/update_expected.py)."""
    expected_file = log.with_suffix(".expected.json")
    assert expected_file.exists(), f"no expected file for {log}; run tools/update_expected.py and review it"
    assert golden(analyse(cat, log)) == json.loads(expected_file.read_text())


def _judgement(log: Path) -> tuple[set[str], str] | None:
    src = log.with_suffix(".source.json")
    if src.exists():
        exp = json.loads(src.read_text()).get("expected", [])
        return {e["kind"] if isinstance(e, dict) else e for e in exp}, "source.json"
    meta = log.with_suffix(".meta.json")
    if meta.exists():
        m = json.loads(meta.read_text())
        outcome = m.get("outcome", "")
        if outcome in ("works", "baseline", "idle"):
            return set(), f"measured outcome {outcome!r}"
        return {"*spec"}, f"measured outcome {outcome!r}"
    return None


JUDGED = [p for p in LOGS if _judgement(p) is not None]


@pytest.mark.parametrize("log", JUDGED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_sample_agrees_with_independent_judgement(cat, log: Path, request) -> None:
    """Open incident kinds match what the person who collected the log expected."""
    reason = KNOWN_DISAGREEMENTS.get(f"{log.parent.name}/{log.stem}") or KNOWN_DISAGREEMENTS.get(log.stem)
    if reason:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    judged = _judgement(log)
    assert judged is not None
    expected, why = judged
    got = {i.kind for i in analyse(cat, log).incidents() if i.status == "open"}
    if expected == {"*spec"}:
        # Engine runs: the server exited, crashed or served degraded; some speculation (or target) incident.
        assert got & (SPEC_KINDS | {"main_model_oom", "low_acceptance"}), f"{why}: nothing reported"
    else:
        assert got == expected, f"{why}: expected {sorted(expected)}, got {sorted(got)}"
