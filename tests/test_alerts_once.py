"""One cause is one alert: a failure and its consequence, a restart loop (issue 15)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from tests.conftest import SAMPLES, SEED, cli
from watcher.catalogue import Catalogue
from watcher.cli import build_parser
from watcher.incidents import Incident
from watcher.pipeline import Analyzer
from watcher.sinks import BannerSink
from watcher.state import Settings
from watcher.store import Occurrence, Store

ENGINE = SAMPLES / "engine"


def analyse(cat: Catalogue, data: bytes, source: str = "log") -> Analyzer:
    """The analysis of a whole log, read to its end."""
    a = Analyzer(cat, source=source)
    a.feed(data)
    a.finish()
    return a


def test_seed_story_is_one_alert_in_pipe_mode() -> None:
    """The seed's draft OOM and the reload without the draft it caused: one CRITICAL banner, the second
    incident a line under it; both are still incidents of their own (JSON, store)."""
    r = cli(stdin=SEED.read_bytes())
    assert r.stderr.count("SPECWATCH CRITICAL") == 1, r.stderr
    assert re.search(r"same cause .*reloaded without its draft", r.stderr), r.stderr
    scanned = json.loads(cli("scan", "--json", str(SEED)).stdout)["incidents"]
    first, second = scanned
    assert second["details"]["follows"] == first["id"]


def test_seed_story_is_one_banner_in_scan() -> None:
    """scan groups the consequence under its cause's banner too."""
    r = cli("scan", str(SEED))
    assert r.out.count("SPECWATCH CRITICAL") == 1, r.out
    assert "reloaded without its draft" in r.out


def test_help_example_is_a_correct_command() -> None:
    """specwatch --help shows a draft with --spec-type draft-simple (-md alone is the silent failure)."""
    text = build_parser().format_help()
    [example] = [line for line in text.splitlines() if "-md " in line]
    assert "--spec-type draft-simple" in example


def _loop(n: int) -> bytes:
    """A server that fails the same way at each of ``n`` restarts (the b11549 draft KV failure, n times)."""
    return (ENGINE / "draft-kv-oom-default.log").read_bytes() * n


def test_restart_loop_is_one_incident_counted(cat: Catalogue) -> None:
    """200 restarts failing the same way: one incident, counted 200 times, in every run's summary."""
    a = analyse(cat, _loop(200))
    [inc] = a.incidents()
    assert inc.count == 200 and inc.as_dict()["count"] == 200
    assert len(a.stream.runs) == 200
    assert all(r.speculation == "failed" for r in a.stream.runs)


def test_restart_loop_gives_one_banner_and_counts_in_the_store() -> None:
    """Pipe mode over 200 restarts: one banner saying 200 times, one summary line; the store holds one
    incident counted 200 times and history a handful of rows, not 200."""
    r = cli(stdin=_loop(200))
    assert r.stderr.count("SPECWATCH CRITICAL") == 1, r.stderr[-3000:]
    assert re.search(r"seen +200 times", r.stderr)
    assert r.stderr.count("open incident(s) at exit") == 1
    assert len(re.findall(r"^  CRITICAL ", r.stderr, re.M)) == 1
    status = json.loads(cli("status", "--json").stdout)
    [row] = status if isinstance(status, list) else status["incidents"]
    assert row["count"] == 200
    history = cli("history").out.strip().splitlines()
    assert len(history) <= 10, history


def test_a_recurring_failure_is_told_again_now_and_then() -> None:
    """Released once per restart (a slow loop), the banner sink writes the first banner, then a
    'still failing, N times' line at 2, 5, 10, 20, 50, 100 and 200 occurrences: 7 lines for 200 restarts."""
    out = io.StringIO()
    sink = BannerSink(out, colour=False)
    inc = Incident(kind="draft_context_failed", severity="critical", source="s", run=1, draft_model="d.gguf")
    sink.incident(inc, "opened")
    for n in range(2, 201):
        inc.count = n
        sink.incident(inc, "updated")
    text = out.getvalue()
    assert text.count("SPECWATCH CRITICAL") == 1
    assert re.findall(r"still failing, (\d+) times", text) == ["2", "5", "10", "20", "50", "100", "200"]


def test_a_second_pipe_adds_its_count_to_the_store() -> None:
    """Another pipe with 3 more restarts of the same failure: the stored count goes on from 200 to 203."""
    cli(stdin=_loop(200))
    cli(stdin=_loop(3))
    status = json.loads(cli("status", "--json").stdout)
    [row] = status if isinstance(status, list) else status["incidents"]
    assert row["count"] == 203


def test_history_keeps_one_row_for_a_restart_loop(tmp_path) -> None:
    """Five server starts read by five pipes, each failing the same way: the store counts 5, and history has
    the opening and one 'repeat' row that says 5 times, not five rows."""
    store = Store.open(tmp_path / "specwatch.db")
    inc = Incident(kind="draft_context_failed", severity="critical", source="stdin", run=1, draft_model="d.gguf",
                   first_line=15)
    for n in range(5):
        store.record(inc.as_dict(), "opened", float(n), Occurrence(f"pipe-{n}", rereadable=False, run=1, line=15))
    [row] = store.open_incidents()
    assert row.count == 5
    rows = store.history()
    assert [(what, note) for _, _, what, note, _ in rows] == [("repeat", "5 times"), ("opened", "")]


def test_silent_failure_after_each_restart_is_counted_once_per_load(cat: Catalogue) -> None:
    """-md without --spec-type, three loads in a row (default verbosity, concluded from absence): one incident
    counted 3 times."""
    a = analyse(cat, (ENGINE / "draft-without-spec-type-default.log").read_bytes() * 3)
    [inc] = a.incidents()
    assert (inc.count, inc.confidence, inc.extra.get("last_run")) == (3, "inferred", 3)


def test_a_restart_that_fails_differently_is_not_counted_as_the_same_failure(cat: Catalogue) -> None:
    """The draft was missing, then (downloaded, but truncated) at the same path is not a valid GGUF: two
    incidents, each with its own reason and advice, not 'file not found' counted twice."""
    missing = (ENGINE / "draft-missing-default.log").read_bytes()
    corrupt = (ENGINE / "draft-corrupt-default.log").read_bytes().replace(b"draft-corrupt.gguf",
                                                                          b"draft-missing.gguf")
    a = analyse(cat, missing + corrupt)
    first, second = a.incidents()
    assert (first.count, second.count) == (1, 1)
    assert (first.reason, second.reason) == ("file not found", "file is not a valid GGUF")
    assert "path" in first.hint and "GGUF" in second.hint


def test_llama_swap_swap_ins_failing_the_same_way_are_one_incident(cat: Catalogue) -> None:
    """llama-swap at its default (info) level names a model only after its process loaded: three swap-ins of a
    model whose draft is refused each time are one incident counted 3 times, as at debug level."""
    log = (SAMPLES / "swap" / "llamaswap-info-swap-vocab-mismatch-then-working.log").read_bytes()
    a = analyse(cat, log * 3)
    [inc] = a.incidents()
    assert (inc.kind, inc.count, inc.run, inc.extra.get("last_run")) == ("draft_incompatible", 3, 1, 3)
    r = cli(stdin=log * 3)
    assert r.stderr.count("SPECWATCH CRITICAL") == 1, r.stderr


LOW = ENGINE / "draft-low-acceptance-default.log"


def _changes(cat: Catalogue, data: bytes, settings: Settings | None = None) -> tuple[Analyzer, list[str]]:
    """The analysis of ``data`` and every status its incidents were handed on with, in order."""
    told: list[str] = []
    a = Analyzer(cat, source="log", settings=settings, on_incident=lambda inc: told.append(inc.status))
    a.feed(data)
    a.finish()
    return a, told


def test_a_weak_draft_reloaded_is_one_low_acceptance_incident_counted(cat: Catalogue) -> None:
    """Three loads of the same target and weak draft (the real b11549 logs, both verbosities, as reloads): one
    low_acceptance incident counted 3 times, never resolved by speculation merely restarting."""
    a, told = _changes(cat, LOW.read_bytes() * 2 + (ENGINE / "draft-low-acceptance-verbose.log").read_bytes())
    [inc] = a.incidents()
    assert (inc.kind, inc.status, inc.count) == ("low_acceptance", "open", 3)
    assert len(a.stream.runs) == 3 and "resolved" not in told


def _swap_in(model: str, log: Path, port: int) -> bytes:
    """One llama-swap (info level, v218+) swap-in: the upstream's lines verbatim, llama-swap's health check line
    after the upstream's 'listening on' line, and its TTL unload after the last."""
    out = b""
    for line in log.read_bytes().splitlines(keepends=True):
        out += line
        if f"listening on http://127.0.0.1:{port}".encode() in line:
            out += f"[INFO] <{model}> Health check passed on http://127.0.0.1:{port}/health\n".encode()
    return out + f"[INFO] <{model}> Unloading model, TTL of 300s reached\n".encode()


def test_llama_swap_swap_ins_of_a_weak_draft_are_one_incident(cat: Catalogue) -> None:
    """llama-swap swaps a weak draft's model in three times, a working model between: one low_acceptance
    incident for the weak model, counted 3 times and never resolved and reopened."""
    weak = _swap_in("qwen3-weak", LOW, 42871)
    good = _swap_in("qwen3-spec", ENGINE / "spec-working-default.log", 44087)
    a, told = _changes(cat, weak + good + weak + good + weak)
    [inc] = a.incidents()
    assert (inc.kind, inc.status, inc.count, inc.extra["swap_model"]) == ("low_acceptance", "open", 3, "qwen3-weak")
    assert "resolved" not in told


def test_low_acceptance_resolves_on_a_full_window_of_good_acceptance(cat: Catalogue) -> None:
    """The same draft path reloaded with a draft that now predicts the target (the b11549 working run, its draft
    at the weak one's path): resolved once a full window (20 tokens here) accepts above the threshold."""
    fixed = (ENGINE / "spec-working-default.log").read_bytes().replace(b"draft-same.gguf", b"draft-random.gguf")
    a, told = _changes(cat, LOW.read_bytes() + fixed, Settings(acceptance_window=20))
    [inc] = a.incidents()
    assert inc.status == "resolved" and inc.resolution.startswith("acceptance recovered to 100%"), inc.resolution
    assert told.count("resolved") == 1


def test_another_draft_that_speculates_ends_the_weak_draft_s_incident(cat: Catalogue) -> None:
    """The weak draft replaced by another that speculates: the weak draft's incident is over."""
    a, _ = _changes(cat, LOW.read_bytes() + (ENGINE / "spec-working-default.log").read_bytes())
    [inc] = a.incidents()
    assert inc.status == "resolved" and "speculation works again" in inc.resolution
