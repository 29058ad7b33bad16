"""The fault suite's tools: ``specwatch watch`` as a real process that can be stopped or killed, and its state.

Everything is loopback and local files; every wait has a deadline, so a hang fails the test instead of CI.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: How long any one wait may take before the test fails (a loaded 2-core CI runner included).
DEADLINE = 30.0


def block(draft: int = 1, target: str = "t") -> bytes:
    """One server load whose draft fails: a new run, so each block is a new occurrence of the same incident."""
    return (f"build: 4000 (abc) with cc\n"
            f"srv    load_model: loading model '/m/{target}.gguf'\n"
            f"srv    load_model: failed to load draft model, '/m/d{draft}.gguf'\n").encode()


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as fh:
        fh.write(data)


def wait_for(what: Callable[[], object], timeout: float = DEADLINE, every: float = 0.02) -> object:
    """Poll until ``what()`` is truthy; its value, or None once ``timeout`` passed."""
    end = time.monotonic() + timeout
    while True:
        v = what()
        if v or time.monotonic() > end:
            return v or None
        time.sleep(every)


class State:
    """Read-only looks at the shared database, each on a fresh connection (as another process would)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(str(self.db), timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # a table not created yet
        finally:
            conn.close()

    def incidents(self) -> list[tuple[str, str, int, int]]:
        """(key, status, count, generation) of every incident."""
        return [(str(k), str(s), int(c), int(g))  # type: ignore[call-overload]
                for k, s, c, g in self._query("SELECT key, status, count, generation FROM incidents ORDER BY key")]

    def count(self) -> int:
        """Occurrences counted, over every incident."""
        return sum(c for _, _, c, _ in self.incidents())

    def checkpoint(self, path: Path) -> tuple[int, int, int, float] | None:
        """(inode, offset, lines, updated) of a followed file's checkpoint."""
        rows = self._query("SELECT ino, offset, lines, updated FROM checkpoints WHERE stream = ?", (f"file:{path}",))
        return tuple(rows[0]) if rows else None  # type: ignore[return-value]

    def streams(self) -> list[str]:
        """Every checkpointed stream name (``root:...`` once a watch wrote its first checkpoints)."""
        return [str(r[0]) for r in self._query("SELECT stream FROM checkpoints ORDER BY stream")]

    def history(self) -> list[str]:
        """Every transition, oldest first."""
        return [str(r[0]) for r in self._query("SELECT what FROM incident_log ORDER BY id")]


class Watch:
    """``specwatch watch PATHS`` in its own process; restarts keep the same state dir and stderr file."""

    def __init__(self, tmp: Path, paths: list[Path], settle: float = 0.2, interval: float = 0.1) -> None:
        self.paths = paths
        self.state_dir = tmp / "state"
        self.state = State(self.state_dir / "specwatch.db")
        self.err = tmp / "watch.stderr"
        config = tmp / "config.toml"
        config.write_text(f"[analysis]\nsettle = {settle}\n")
        self.argv = [sys.executable, "-m", "watcher", "watch", *map(str, paths), "--config", str(config),
                     "--interval", str(interval)]
        base = {k: v for k, v in os.environ.items() if not k.startswith("SPECWATCH_")}
        self.env = {**base, "SPECWATCH_STATE_DIR": str(self.state_dir), "PYTHONPATH": str(ROOT),
                    "XDG_CONFIG_HOME": str(tmp / "xdg"), "HOME": str(tmp)}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: Path | None = None) -> None:
        """Start; with ``wait``, return once that file's checkpoint was written by this process."""
        t0 = time.time()
        with self.err.open("ab") as err:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=subprocess.DEVNULL, stderr=err)
        if wait is not None:
            def ready() -> bool:
                cp = self.state.checkpoint(wait)
                return cp is not None and cp[3] >= t0
            assert wait_for(ready), f"watch did not start: {self.stderr()}"

    def stop(self) -> int:
        """SIGTERM, then wait for the exit; its status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=DEADLINE)
        self.proc = None
        return rc

    def kill(self) -> None:
        """kill -9: no clean-up at all."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE)
        self.proc = None

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def close(self) -> None:
        """Whatever state the test left it in, leave no process behind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)
            self.proc = None
