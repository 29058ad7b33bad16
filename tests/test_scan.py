"""scan on the first day: a missing file among good ones, progress on a terminal, a report of a restart loop."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import SAMPLES, SEED, cli

WORKING = SAMPLES / "engine" / "spec-working-verbose.log"
CORRUPT = SAMPLES / "engine" / "draft-corrupt-default.log"


def test_missing_file_among_good_ones_reports_the_good_ones_then_exits_2(tmp_path: Path) -> None:
    """The readable files are reported (text and JSON), the missing one is named on stderr, the exit is 2."""
    missing = tmp_path / "gone.log"
    r = cli("scan", str(SEED), str(missing), str(WORKING))
    assert r.status == 2
    assert r.stderr == f"specwatch: scan: {missing}: No such file or directory\n"
    assert f"({SEED}, lines" in r.out and f"({WORKING}, lines" in r.out
    doc = json.loads(cli("scan", "--json", str(missing), str(WORKING)).out)
    assert {run["source"] for run in doc["runs"]} == {str(WORKING)}


def test_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """On a terminal stderr shows which file is read and how far, then erases the line; redirected, nothing."""
    on_tty = cli("scan", str(SEED), str(WORKING), stderr_tty=True)
    assert f"\r\x1b[Kscanning {SEED.name} (file 1 of 2): " in on_tty.stderr
    assert f"\r\x1b[Kscanning {WORKING.name} (file 2 of 2): " in on_tty.stderr
    assert on_tty.stderr.endswith("\r\x1b[K")
    assert cli("scan", str(SEED), str(WORKING)).stderr == ""


def test_a_restart_loop_report_is_summarised_and_the_json_complete(tmp_path: Path) -> None:
    """1000 runs with the same failure: a report of a screenful or two, every run and incident in --json."""
    log = tmp_path / "loop.log"
    log.write_bytes(CORRUPT.read_bytes() * 1000)
    r = cli("scan", str(log))
    assert r.status == 1
    lines = r.out.splitlines()
    assert len(lines) < 120
    assert lines[0] == "Server runs: 1000 (speculation: 1000 failed)"
    assert "  (984 of 1000 runs not shown: the first and last 3, and the first 10 whose speculation failed, are; " \
           "scan --json lists every run)" in lines
    doc = json.loads(cli("scan", "--json", str(log)).out)
    assert len(doc["runs"]) == 1000
    # One banner per kind of failure, however many times it happened (the JSON has each incident).
    assert f"Incidents: {len(doc['incidents'])} " in r.out
    assert sum(1 for line in lines if line.startswith("SPECWATCH ")) == len({i["title"] for i in doc["incidents"]})
