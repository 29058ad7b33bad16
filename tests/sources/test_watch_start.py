"""watch tells what it follows, and numbers runs on from where an earlier watcher stopped."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from tests.conftest import SAMPLES, wait_for
from watcher import cli
from watcher.commands import watch
from watcher.environment import Environment

CORRUPT = SAMPLES / "engine" / "draft-corrupt-default.log"
KV_OOM = SAMPLES / "engine" / "draft-kv-oom-default.log"


def _watch(argv: list[str], state: Path, until: str) -> str:
    """Run ``watch ARGV`` until ``until`` is in its event log (or stderr, when no --events); returns stderr."""
    stderr = io.StringIO()
    env = Environment(io.BytesIO(), io.BytesIO(), stderr, environ={"SPECWATCH_STATE_DIR": str(state)})
    conf = state / "c.toml"
    conf.write_text("[analysis]\nsettle = 0\n")
    args = cli.build_parser().parse_args(["watch", *argv, "--poll", "--config", str(conf)])
    stop = threading.Event()
    t = threading.Thread(target=lambda: watch.run(args, env, stop=stop))
    t.start()
    try:
        events = Path(args.events) if args.events else None
        wait_for(lambda: until in (events.read_text() if events and events.exists() else stderr.getvalue()), until)
    finally:
        stop.set()
        t.join(30)
    return stderr.getvalue()


def test_watch_says_what_it_follows(tmp_path: Path) -> None:
    """At start: each file, directory and glob with what it holds now; a path that does not exist yet is named."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.log").write_text("x\n")
    missing = tmp_path / "typo.log"
    err = _watch([str(logs), str(missing), str(logs / "a.log")], tmp_path, "typo.log")
    assert err.splitlines()[:3] == [
        f"specwatch: watching: {logs}/ (*.log, 1 file now, new lines)",
        f"specwatch: watching: {missing} (does not exist yet: read from its start once it appears)",
        f"specwatch: watching: {logs / 'a.log'} (new lines)",
    ]


def test_run_numbers_continue_after_a_restart(tmp_path: Path) -> None:
    """A watcher restarted on a log it had read numbers the next server run 3, not 1, and says where it resumes."""
    log = tmp_path / "server.log"
    log.write_bytes(CORRUPT.read_bytes() * 2)  # two runs, one incident seen twice
    first = tmp_path / "first.jsonl"
    _watch([str(log), "--from-start", "--events", str(first)], tmp_path, '"count": 2')
    lines = (CORRUPT.read_bytes() * 2).count(b"\n")
    with log.open("ab") as fh:
        fh.write(KV_OOM.read_bytes())  # a third run, failing another way
    second = tmp_path / "second.jsonl"
    err = _watch([str(log), "--events", str(second)], tmp_path, '"change": "opened"')
    opened = [json.loads(x) for x in second.read_text().splitlines() if '"change": "opened"' in x]
    assert [o["run"] for o in opened] == [3]
    assert opened[0]["first_line"] > lines
    assert f"specwatch: watching: {log} (resuming after line {lines})" in err
