"""The journald source: JSON entries in, MESSAGE analysed, cursor checkpointed and passed back on restart.

No journald runs in CI, so a small stand-in for ``journalctl`` (a real process speaking its JSON output
format) replays a file of entries and honours ``--after-cursor``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from watcher.checkpoints import Checkpoints
from watcher.sources.journal import JournalFollower, journal_command, message_bytes

from .helpers_tail import Recorder, failure

FAKE = r'''
import json, sys, time
args = sys.argv[1:]
after = args[args.index("--after-cursor") + 1] if "--after-cursor" in args else None
entries = [json.loads(l) for l in open(sys.argv[1])]
start = 0
if after is not None:
    start = [e["__CURSOR"] for e in entries].index(after) + 1
for e in entries[start:]:
    print(json.dumps(e), flush=True)
time.sleep(30)
'''


def _entries(path: Path, numbers: list[int]) -> None:
    with path.open("w") as fh:
        for n in numbers:
            fh.write(json.dumps({"MESSAGE": failure(n).decode().rstrip("\n"), "__CURSOR": f"c{n}"}) + "\n")


def _drain(j: JournalFollower, rec: Recorder, want: int) -> None:
    deadline = time.monotonic() + 20
    while len(rec.numbers()) < want and time.monotonic() < deadline:
        j.step()
        time.sleep(0.01)


def test_command_line() -> None:
    """journalctl gets --after-cursor when there is a cursor, else only new entries (or all with --from-start)."""
    assert journal_command("llama-swap", None, False)[-2:] == ["--lines", "0"]
    assert journal_command("llama-swap", None, True)[-2:] == ["--lines", "all"]
    assert "--after-cursor" in journal_command("llama-swap", "s=1", False)


def test_binary_message() -> None:
    """A MESSAGE journald sent as a byte array is decoded to bytes."""
    assert message_bytes({"MESSAGE": [104, 105]}) == b"hi"
    assert message_bytes({"MESSAGE": None}) is None


def test_cursor_resume(tmp_path: Path) -> None:
    """After a restart, entries up to the stored cursor are not analysed again."""
    script = tmp_path / "journalctl.py"
    script.write_text(FAKE)
    feed = tmp_path / "entries.jsonl"
    _entries(feed, [1, 2])
    store = Checkpoints.open(tmp_path / "db.sqlite")
    cmd = (sys.executable, str(script), str(feed))
    rec = Recorder()
    j = JournalFollower("llama-swap", rec.make, checkpoints=store, journalctl=cmd)
    _drain(j, rec, 2)
    j.close()
    assert store.get("journal:llama-swap").cursor == "c2"  # type: ignore[union-attr]
    _entries(feed, [1, 2, 3])
    rec2 = Recorder()
    j2 = JournalFollower("llama-swap", rec2.make, checkpoints=store, journalctl=cmd)
    _drain(j2, rec2, 1)
    j2.close()
    store.close()
    assert rec.numbers() == [1, 2] and rec2.numbers() == [3]


def test_missing_journalctl(tmp_path: Path) -> None:
    """Without journalctl the error names the unit and the command."""
    rec = Recorder()
    errors: list[tuple[str, str]] = []
    j = JournalFollower("x", rec.make, on_error=lambda s, m: errors.append((s, m)),
                        journalctl=(str(tmp_path / "no-such-journalctl"),))
    j.close()
    assert errors and errors[0][0] == "journal:x" and "cannot run" in errors[0][1]
