"""The llama-swap demux (watcher/swap.py): one state per model llama-swap starts, attributed by sequence and
port, and plain server logs analysed exactly as a single stream analyses them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLES
from watcher import catalogue, swap
from watcher.classify import Classifier
from watcher.events import Record
from watcher.framing import Framer
from watcher.incidents import Incident
from watcher.pipeline import Analyzer
from watcher.samples import sample_logs
from watcher.state import Stream
from watcher.swap import SwapStream

CAT = catalogue.load()
#: The catalogue without llama-swap's patterns: what a plain server log was analysed with before the demux.
CAT_BEFORE = catalogue.load([f for f in sorted(catalogue.default_dir().glob("*.toml")) if f.name != "llama-swap.toml"])
ENGINE = SAMPLES / "engine"


def engine(name: str) -> list[str]:
    """The lines of one real engine log (llama.cpp b11549)."""
    return (ENGINE / f"{name}-default.log").read_text().splitlines()


MISMATCH = engine("draft-vocab-type-mismatch")  # draft fails, the server serves without it (listens on 46579)
WORKING = engine("spec-working")  # draft works (listens on 44087)
KV_OOM = engine("draft-kv-oom")  # draft KV cache out of memory, exits 1


def health(model: str, port: int) -> str:
    return f"[INFO] <{model}> Health check passed on http://127.0.0.1:{port}/health"


def analyse(lines: list[str], source: str = "swap.log") -> Analyzer:
    a = Analyzer(CAT, source=source)
    a.feed(("\n".join(lines) + "\n").encode())
    a.finish()
    return a


def by_model(a: Analyzer) -> dict[str | None, list[Incident]]:
    out: dict[str | None, list[Incident]] = {}
    for inc in a.incidents():
        out.setdefault(inc.extra.get("swap_model"), []).append(inc)
    return out


def plain(data: bytes, source: str) -> Stream:
    """The same log through one undivided Stream and the catalogue before llama-swap's: specwatch before the demux."""
    stream = Stream(source)
    classifier = Classifier(CAT_BEFORE)
    framer = Framer(source=source)
    for rec in framer.feed(data) + framer.flush():
        ev = classifier.classify(rec)
        if ev is not None:
            stream.apply(ev)
    stream.finish()
    return stream


def _summary(runs: list[Any], incidents: list[Incident]) -> tuple[list[Any], list[Any]]:
    return [r.as_dict() for r in runs], [i.as_dict() for i in incidents]


PLAIN_LOGS = [p for p in sample_logs(SAMPLES) if p.parent.name != "swap"]


@pytest.mark.parametrize("log", PLAIN_LOGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_plain_logs_analyse_exactly_as_one_stream(log: Path) -> None:
    """Every sample without a llama-swap model line or router children gives what a single Stream gives."""
    data = log.read_bytes()
    a = Analyzer(CAT, source=log.name)
    a.feed(data)
    a.finish()
    if a.stream.models or a.stream.router_ports:
        pytest.skip("names a llama-swap model or a router's children")
    before = plain(data, log.name)
    assert _summary(a.stream.runs, a.incidents()) == _summary(before.runs, before.incidents())


def test_info_level_swap_keeps_a_models_failure_open() -> None:
    """A model's draft failure stays open and named after llama-swap swaps to another model that speculates."""
    a = analyse((SAMPLES / "swap" / "llamaswap-info-swap-vocab-mismatch-then-working.log").read_text().splitlines())
    incs = by_model(a)
    assert [i.kind for i in incs["qwen3-spec-bpe"]] == ["draft_incompatible"]
    assert incs["qwen3-spec-bpe"][0].status == "open"
    assert "qwen3-spec" not in incs
    runs = {r.source: r for r in a.stream.runs}
    assert runs["swap.log <qwen3-spec>"].speculation == "on"
    assert runs["swap.log <qwen3-spec-bpe>"].speculation == "failed"


def test_one_undivided_stream_would_resolve_the_other_models_failure() -> None:
    """Why the demux exists: both models load target.gguf, so one stream lets B's working draft close A's failure."""
    data = (SAMPLES / "swap" / "llamaswap-info-swap-vocab-mismatch-then-working.log").read_bytes()
    assert [i.status for i in plain(data, "swap.log").incidents()] == ["resolved"]


def test_debug_level_start_command_names_the_section_before_its_output() -> None:
    """With logLevel debug the start command names the model first; its exit marks the failed run exited."""
    a = analyse((SAMPLES / "swap" / "llamaswap-debug-draft-oom-exit-then-swap.log").read_text().splitlines())
    [inc] = by_model(a)["qwen3-spec-wide"]
    assert inc.kind == "draft_context_failed" and inc.server_state == "exited"
    assert [(r.source, r.ordinal, r.phase) for r in a.stream.runs] == [
        ("swap.log <qwen3-spec-wide>", 1, "exited"), ("swap.log <qwen3-spec>", 1, "exited")]
    assert a.stream.runs[1].first_line == 25  # its first recognised line (build_info), not line 1


def test_a_then_b_then_a_again_keeps_one_state_per_model() -> None:
    """A fails, B works, A comes back fixed: A has runs 1 and 2, and only A's own reload resolves A's failure."""
    lines = [*MISMATCH[:14], health("A", 46579), *MISMATCH[14:],
             *WORKING[:11], health("B", 44087), *WORKING[11:],
             *WORKING[:11], health("A", 44087), *WORKING[11:]]
    a = analyse(lines)
    s = a.stream
    assert isinstance(s, SwapStream)
    assert [r.ordinal for r in s.models["A"].runs] == [1, 2]
    assert [r.ordinal for r in s.models["B"].runs] == [1]
    assert [r.source for r in s.runs] == ["swap.log <A>", "swap.log <B>", "swap.log <A>"]
    [inc] = a.incidents()
    assert (inc.extra["swap_model"], inc.run, inc.status) == ("A", 1, "resolved")
    assert "run 2" in inc.resolution


def test_a_then_b_without_a_fix_leaves_a_open() -> None:
    """B speculating never resolves A's failure, even with the same target file."""
    lines = [*MISMATCH[:14], health("A", 46579), *MISMATCH[14:], *WORKING[:11], health("B", 44087), *WORKING[11:]]
    [inc] = analyse(lines).incidents()
    assert (inc.extra["swap_model"], inc.status) == ("A", "open")


def test_unexpected_exit_while_failed_marks_the_incident_exited() -> None:
    """A model serving without its draft that then dies: its incident says exited, with llama-swap's line."""
    exit_line = "[WARN] <A> upstream process exited unexpectedly"
    lines = [*MISMATCH[:14], health("A", 46579), *MISMATCH[14:21], exit_line]
    [inc] = analyse(lines).incidents()
    assert inc.server_state == "exited"
    assert any(e.text == exit_line for e in inc.evidence)
    assert inc.title.startswith("Server exited")


def test_lines_before_any_model_stay_unattributed() -> None:
    """Upstream output before llama-swap names anything is the default stream; a later named model is separate."""
    start = "[DEBUG] <B> Executing start command: llama-server --port 44087 -m target.gguf, env: "
    a = analyse([*KV_OOM, start, *WORKING])
    s = a.stream
    assert isinstance(s, SwapStream)
    assert s.default not in s.models.values()
    assert [r.source for r in s.runs] == ["swap.log", "swap.log <B>"]
    [inc] = a.incidents()
    assert "swap_model" not in inc.extra and inc.kind == "draft_context_failed"


def test_health_check_on_another_port_does_not_name_the_section() -> None:
    """An anonymous section listening on 46579 is not the model whose health check passed on 9001."""
    a = analyse([*MISMATCH[:14], health("elsewhere", 9001), *MISMATCH[14:]])
    s = a.stream
    assert isinstance(s, SwapStream)
    assert "elsewhere" not in s.models
    assert all("swap_model" not in i.extra for i in a.incidents())


def test_exit_names_an_anonymous_section_that_never_became_healthy() -> None:
    """A load that dies before its health check is named by llama-swap's exit line."""
    a = analyse([*KV_OOM, "[INFO] <wide> process exited but not StateStopping, current state: starting"])
    [inc] = a.incidents()
    assert inc.extra["swap_model"] == "wide" and inc.server_state == "exited"


def test_stop_ends_the_run_without_touching_incidents() -> None:
    """A requested stop marks the run exited; the failure it had stays as it was."""
    lines = [*MISMATCH[:14], health("A", 46579), *MISMATCH[14:], "[DEBUG] <A> process exited cleanly"]
    a = analyse(lines)
    assert a.stream.runs[0].phase == "exited"
    [inc] = a.incidents()
    assert inc.server_state == "serving_without_speculation"


def test_preload_then_start_command_is_one_section() -> None:
    """llama-swap announcing one start twice (preload, then the command) opens one section."""
    start = "[DEBUG] <B> Executing start command: llama-server --port 44087 -m target.gguf, env: "
    a = analyse(["[INFO] preloading model: B", start, *WORKING[:11], health("B", 44087), *WORKING[11:]])
    assert [r.source for r in a.stream.runs] == ["swap.log <B>"]
    assert a.stream.runs[0].speculation == "on"


def test_swap_events_never_reach_state() -> None:
    """llama-swap's lines alone create no run, as in a log of llama-swap's own lines only."""
    a = analyse(["[INFO] preloading model: B", health("B", 5800), "[DEBUG] <B> process exited cleanly"])
    assert a.stream.runs == [] and a.incidents() == []


class _Counting(Stream):
    applied = 0

    def apply(self, ev: Any) -> None:
        type(self).applied += 1
        super().apply(ev)


_POOL = [
    *MISMATCH, *WORKING, *KV_OOM,
    health("A", 46579), health("B", 44087), health("C", 9001),
    "[DEBUG] <A> Executing start command: llama-server --port 46579, env: ",
    "[INFO] preloading model: B",
    "[INFO] matrix: model=C starting (no models running)",
    "[WARN] <A> upstream process exited unexpectedly",
    "[DEBUG] <B> process exited cleanly",
    "[INFO] <C> Unloading model, TTL of 300s reached",
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_POOL), max_size=120))
def test_attribution_never_loses_or_duplicates_an_event(lines: list[str]) -> None:
    """Any interleaving: every upstream event reaches exactly one model's stream, every run is listed once."""
    _Counting.applied = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(swap, "Stream", _Counting)
        a = Analyzer(CAT, source="x")
        upstream = 0
        classifier = Classifier(CAT)
        for n, line in enumerate(lines, 1):
            ev = classifier.classify(Record(line, n))
            if ev is not None and ev.type not in swap.SWAP_EVENTS:
                upstream += 1
        a.feed(("\n".join(lines) + "\n").encode() if lines else b"")
        a.finish()
    s = a.stream
    assert isinstance(s, SwapStream)
    exits = sum(1 for line in lines if "exited unexpectedly" in line)
    # Each upstream event is applied once; an unexpected exit is applied once more as load_exit, at most.
    assert upstream <= _Counting.applied <= upstream + exits
    inner = [r for st_ in s.streams for r in st_.runs]
    assert sorted(map(id, inner)) == sorted(map(id, s.runs))
    assert len(set(map(id, s.runs))) == len(s.runs)
    for st_ in s.streams:
        assert [r.ordinal for r in st_.runs] == list(range(1, len(st_.runs) + 1))
    assert {id(i) for i in a.incidents()} == {id(i) for r in inner for i in r.incidents.values()}


def test_an_unnamed_model_never_inherits_a_merged_models_name() -> None:
    """After many A/B swaps (old streams merged and freed), a failing model llama-swap has not named carries no name."""
    import gc

    a = Analyzer(CAT, source="swap.log")
    working_port, failing_port = 44087, 46579
    for i in range(30):
        for model in ("A", "B"):
            a.feed(("\n".join([*WORKING, health(model, working_port)]) + "\n").encode())
        gc.collect()
        a.feed(("\n".join(MISMATCH) + "\n").encode())
        fresh = [inc for inc in a.incidents() if inc.status == "open" and inc.extra.get("swap_model") in ("A", "B")]
        assert not fresh, f"swap {i}: an unnamed model's incident is tagged {fresh[0].extra['swap_model']}"
        a.feed((health(f"C{i}", failing_port) + "\n").encode())


def test_an_option_warning_before_the_next_upstream_belongs_to_it() -> None:
    """'--gpu-layers-draft option will be ignored' printed before a new upstream's first line is that model's."""
    gpu_ignored = "warning: no usable GPU found, --gpu-layers-draft option will be ignored"
    a = analyse([*WORKING, health("A", 44087), gpu_ignored, *WORKING, health("B", 44087)])
    incs = by_model(a)
    assert [i.kind for i in incs.get("B", [])] == ["draft_on_cpu"]
    assert "A" not in incs
