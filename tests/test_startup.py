"""What starting specwatch loads: ``--version``, building the parser and a scan of an empty file import only what
they need, so a growing program and catalogue do not slow every start.

Structural, not timed (speed is measured in bench/): each check runs a fresh interpreter and lists ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Never needed to parse a command line: storage, HTTP, notifications, file watching, metrics, regexes, the
#: prefilter, and specwatch's own analysis, memory ledger, store and delivery code. (The extensions' own modules,
#: watcher.metrics, watcher.probe and watcher.notify.sink, are listed by the command layer and load with it, but
#: load none of these until they are asked for.)
HEAVY = {
    "regex", "sqlite3", "apprise", "requests", "watchdog", "prometheus_client", "structlog", "jeepney",
    "desktop_notifier", "ahocorasick_rs", "urllib.request", "http.client", "http.server", "ssl", "email",
    "ctypes", "logging", "tomllib", "platformdirs",
    "watcher.catalogue", "watcher.classify", "watcher.events", "watcher.framing", "watcher.relay", "watcher.state",
    "watcher.pipeline", "watcher.loads", "watcher.fleet", "watcher.ledger", "watcher.sinks",
    "watcher.store", "watcher.db", "watcher.checkpoints", "watcher.audit", "watcher.notify.outbox",
    "watcher.notify.worker", "watcher.sources.tail", "watcher.sources.child", "watcher.sources.journal", "watcher.pipe",
}
#: What a scan of a file needs: the prefilter, the catalogue (its TOML parser until it is cached; regex for the
#: relays, which are compiled and checked when the catalogue loads), the analysis and its memory ledger, and the
#: terminal writer every command that reads logs writes through.
SCAN_NEEDS = {"ahocorasick_rs", "tomllib", "platformdirs", "regex", "watcher.catalogue", "watcher.classify",
              "watcher.events", "watcher.framing", "watcher.relay", "watcher.pipeline", "watcher.state",
              "watcher.loads", "watcher.ledger", "watcher.sinks"}

PROBE = """
import json, sys
from watcher.environment import Environment
from watcher.cli import build_parser, run
argv = json.loads(sys.argv[1])
status = run(argv, Environment.from_process()) if argv else build_parser() and 0
sys.stdout.write("\\n" + json.dumps({"status": status, "modules": sorted(sys.modules)}) + "\\n")
"""


def _loaded(tmp_path: Path, *argv: str) -> tuple[int, set[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECWATCH_STATE_DIR": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "SPECWATCH_NOTIFY": ""}
    env.pop("SPECWATCH_CONFIG", None)
    p = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv)], capture_output=True, env=env, cwd=tmp_path,
                       timeout=60, check=True)
    doc = json.loads(p.stdout.decode().rsplit("\n", 2)[-2])
    return doc["status"], set(doc["modules"])


def _roots(modules: set[str]) -> set[str]:
    """Every module and each of its parent packages ("a.b.c" gives a, a.b, a.b.c)."""
    return {".".join(m.split(".")[: i + 1]) for m in modules for i in range(m.count(".") + 1)}


def test_version_loads_nothing_heavy(tmp_path: Path) -> None:
    """``specwatch --version`` imports none of the heavy modules."""
    status, loaded = _loaded(tmp_path, "--version")
    assert status == 0
    assert sorted(HEAVY & _roots(loaded)) == []


def test_building_the_parser_loads_nothing_heavy(tmp_path: Path) -> None:
    """Building the whole command line (every command's options) imports none of the heavy modules."""
    _, loaded = _loaded(tmp_path)
    assert "watcher.commands.scan" in loaded and "watcher.commands.watch" in loaded
    assert sorted(HEAVY & _roots(loaded)) == []


def test_scanning_an_empty_file_loads_only_what_scan_needs(tmp_path: Path) -> None:
    """``scan`` of an empty file loads the prefilter, catalogue and analysis, but no store (nor sqlite3), HTTP,
    notification or file-watching code; once the catalogue is cached, no TOML parser. ``scan --notify`` does
    load the store."""
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    status, loaded = _loaded(tmp_path, "scan", str(empty))
    assert status == 0
    assert loaded >= SCAN_NEEDS
    assert sorted((HEAVY - SCAN_NEEDS) & _roots(loaded)) == []
    status, loaded = _loaded(tmp_path, "scan", str(empty))
    assert status == 0
    assert sorted((HEAVY - SCAN_NEEDS | {"tomllib"}) & _roots(loaded)) == []
    status, loaded = _loaded(tmp_path, "scan", "--notify", "json://127.0.0.1:9/", str(empty))
    assert status == 0
    assert "watcher.store" in loaded
