"""``specwatch watch`` as a process: follows, stores checkpoints, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from watcher.commands.watch import find_lmstudio, lmstudio_candidates

from .helpers_tail import append, failure

ROOT = Path(__file__).resolve().parents[2]


def test_lmstudio_locations(tmp_path: Path) -> None:
    """The home pointer comes first, then ~/.lmstudio, then the old ~/.cache/lm-studio."""
    (tmp_path / ".lmstudio-home-pointer").write_text(str(tmp_path / "moved") + "\n")
    c = lmstudio_candidates({}, tmp_path)
    assert c == [tmp_path / "moved" / "server-logs", tmp_path / ".lmstudio" / "server-logs",
                 tmp_path / ".cache" / "lm-studio" / "server-logs"]
    (tmp_path / ".cache" / "lm-studio" / "server-logs").mkdir(parents=True)
    assert find_lmstudio({}, tmp_path) == c[2]


def test_watch_follows_and_stops_on_sigterm(tmp_path: Path) -> None:
    """An appended failure reaches the event log; SIGTERM ends the process with status 0."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "server.log"
    log.write_bytes(b"")
    events = tmp_path / "events.jsonl"
    base = {k: v for k, v in os.environ.items() if k != "SPECWATCH_CONFIG"}
    env = {**base, "SPECWATCH_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "watch", str(logs), "--events", str(events)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "state" / "specwatch.db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the first pass places the file at its end
        append(log, failure(1))
        while (not events.exists() or b"draft_load_failed" not in events.read_bytes()) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert b"draft_load_failed" in events.read_bytes(), err
    assert proc.returncode == 0, err
