"""Line numbers across rotations and kill -9: a new file never reuses numbers already counted, and lines read
again after a restart keep theirs. The follower runs in-process; dropping it without ``close()`` is kill -9."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.sources.helpers_tail import Recorder
from watcher.checkpoints import Checkpoints

from .helpers import append, block

pytestmark = pytest.mark.faults


@pytest.fixture
def store(tmp_path: Path) -> Checkpoints:
    s = Checkpoints.open(tmp_path / "state" / "specwatch.db")
    yield s  # type: ignore[misc]
    s.close()


def killed_after_reading(tmp_path: Path, store: Checkpoints, rec: Recorder) -> Path:
    """A follower reads a failure (line 3) and is killed before its checkpoint (which waits for the store) moves."""
    log = tmp_path / "server.log"
    log.write_bytes(b"")
    ready = [True]
    f = rec.follower([log], store, ready=lambda: ready[0])
    f.step()
    ready[0] = False
    append(log, block())
    f.step()
    return log


def test_lines_read_again_after_kill_keep_their_numbers(tmp_path: Path, store: Checkpoints) -> None:
    """After kill -9 the lines past the checkpoint are read again with the same numbers: the same occurrence."""
    rec = Recorder()
    log = killed_after_reading(tmp_path, store, rec)
    rec.follower([log], store, counted=lambda _p: 3).step()
    assert rec.lines == [3, 3]


def test_copy_truncate_while_killed_numbers_past_what_was_counted(tmp_path: Path, store: Checkpoints) -> None:
    """A copy-truncate while killed, of a file checkpointed empty: new lines are numbered past the counted ones."""
    rec = Recorder()
    log = killed_after_reading(tmp_path, store, rec)
    shutil.copyfile(log, tmp_path / "server.log.1")
    log.write_bytes(b"")
    f = rec.follower([log], store, counted=lambda _p: 3)
    f.step()
    append(log, block())
    f.step()
    assert rec.lines == [3, 6]


def test_file_begun_before_kill_is_numbered_as_before(tmp_path: Path, store: Checkpoints) -> None:
    """A rotation, then kill -9 before the checkpoint moved: the restart numbers the new file as the killed one did."""
    rec = Recorder()
    log = tmp_path / "server.log"
    log.write_bytes(b"")
    ready = [True]
    f = rec.follower([log], store, ready=lambda: ready[0])
    f.step()
    append(log, block())
    f.step()
    ready[0] = False
    log.rename(tmp_path / "server.log.1")
    append(log, b"srv  update_slots: all slots are idle\n" + block())
    f.step()
    rec.follower([log], store, counted=lambda _p: 7).step()
    assert rec.lines == [3, 7, 7]


def test_file_shrunk_under_the_same_first_bytes_is_a_new_file(tmp_path: Path, store: Checkpoints) -> None:
    """A file cut below its checkpoint while stopped, its first KiB unchanged, is numbered past the old lines."""
    rec = Recorder()
    log = tmp_path / "server.log"
    log.write_bytes(b"")
    f = rec.follower([log], store)
    f.step()
    head = b"".join(b"srv  update_slots: all slots are idle (%d)\n" % i for i in range(40))  # > 1 KiB
    append(log, head + block())
    f.step()
    f.close()
    with log.open("r+b") as fh:
        fh.truncate(len(head))
    f = rec.follower([log], store, counted=lambda _p: 43)
    f.step()
    append(log, block())
    f.step()
    assert rec.lines[0] == 43 and rec.lines[-1] > 43
