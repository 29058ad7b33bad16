"""One cause is one alert: a failure and its consequence, a restart loop (issue 15)."""

from __future__ import annotations

import io
import json
import re

from tests.conftest import SAMPLES, SEED, cli
from watcher.catalogue import Catalogue
from watcher.cli import build_parser
from watcher.incidents import Incident
from watcher.pipeline import Analyzer
from watcher.sinks import BannerSink
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
