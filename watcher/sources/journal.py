"""Follow a systemd unit's journal through ``journalctl -f -o json``, with its cursor as the checkpoint.

``journalctl`` runs as a child; a thread reads its JSON lines into a queue and wakes the main loop,
which feeds each entry's MESSAGE to the unit's analyzer and remembers ``__CURSOR``. The cursor is
checkpointed only after processing, and a restart passes it back with ``--after-cursor``.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
from collections.abc import Callable, Sequence

from watcher.checkpoints import Checkpoint, Checkpoints, Identity
from watcher.pipeline import Analyzer

_NO_IDENTITY = Identity(0, 0, 0, "")


def journal_command(unit: str, cursor: str | None, from_start: bool,
                    journalctl: Sequence[str] = ("journalctl",)) -> list[str]:
    """The ``journalctl`` command line: after the cursor, else the whole journal or only new entries."""
    cmd = [*journalctl, "--follow", "--unit", unit, "--output", "json", "--no-pager"]
    if cursor:
        cmd += ["--after-cursor", cursor, "--lines", "all"]
    else:
        cmd += ["--lines", "all" if from_start else "0"]
    return cmd


def message_bytes(entry: dict[str, object]) -> bytes | None:
    """The MESSAGE of a journal entry as bytes (journald sends non-UTF-8 messages as byte arrays)."""
    msg = entry.get("MESSAGE")
    if isinstance(msg, str):
        return msg.encode()
    if isinstance(msg, list) and all(isinstance(b, int) for b in msg):
        return bytes(msg)
    return None


class JournalFollower:
    """One unit's journal as one stream."""

    def __init__(self, unit: str, make_analyzer: Callable[[str], Analyzer], *, checkpoints: Checkpoints | None = None,
                 from_start: bool = False, wake: threading.Event | None = None,
                 on_error: Callable[[str, str], None] | None = None,
                 ready: Callable[[], bool] | None = None,
                 journalctl: Sequence[str] = ("journalctl",)) -> None:
        self.unit = unit
        self.stream = f"journal:{unit}"
        self.analyzer = make_analyzer(self.stream)
        self.checkpoints = checkpoints
        self.wake = wake
        self.on_error = on_error
        self.ready = ready
        self.cursor: str | None = None
        self.entries = 0
        self._saved: str | None = None
        cp = checkpoints.get(self.stream) if checkpoints is not None else None
        if cp is not None and cp.cursor:
            self.cursor = self._saved = cp.cursor
            self.analyzer.framer.lines = cp.lines
            self.analyzer.stream.continue_runs(cp.runs)
        self._q: queue.Queue[bytes | None] = queue.Queue()
        cmd = journal_command(unit, self.cursor, from_start, journalctl)
        try:
            self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        except OSError as exc:
            self.proc = None
            self._say(f"cannot run {cmd[0]}: {exc.strerror or exc}")
            return
        self._reader = threading.Thread(target=self._read, name=f"journal-{unit}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line)
            if self.wake is not None:
                self.wake.set()
        self._q.put(None)
        if self.wake is not None:
            self.wake.set()

    def step(self) -> int:
        """Feed every entry received so far; then checkpoint the cursor."""
        n = 0
        while True:
            try:
                line = self._q.get_nowait()
            except queue.Empty:
                break
            if line is None:
                self._ended()
                break
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            msg = message_bytes(entry)
            if msg is not None:
                self.analyzer.feed(msg + b"\n")
                n += 1
            cursor = entry.get("__CURSOR")
            if isinstance(cursor, str):
                self.cursor = cursor
        self.entries += n
        self.commit()
        return n

    def commit(self) -> None:
        """Store the cursor of the last processed entry, once its incidents were delivered."""
        if self.checkpoints is None or self.cursor == self._saved:
            return
        if self.ready is not None and not self.ready():
            return
        self.checkpoints.save([Checkpoint(self.stream, _NO_IDENTITY, 0, self.analyzer.lines, self.cursor,
                                                runs=self.analyzer.stream.runs_seen)])
        self._saved = self.cursor

    def _ended(self) -> None:
        if self.proc is None:
            return
        code = self.proc.wait()
        err = b""
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError):
                err = self.proc.stderr.read()
        detail = err.decode(errors="replace").strip().splitlines()
        self._say(f"journalctl exited with status {code}" + (f": {detail[-1]}" if detail else ""))

    def _say(self, msg: str) -> None:
        if self.on_error is not None:
            self.on_error(self.stream, msg)

    @property
    def running(self) -> bool:
        """Whether journalctl is still running."""
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop journalctl and store the last cursor."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.commit()
