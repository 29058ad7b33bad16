"""The follower on real files: start position, rotation, truncation, recreation, restart, unreadable files."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from watcher.checkpoints import Checkpoints
from watcher.sources.tail import ROTATE_WAIT, run_loop

from .helpers_tail import Recorder, append, failure, filler


@pytest.fixture
def store(tmp_path: Path) -> Checkpoints:
    s = Checkpoints.open(tmp_path / "state" / "specwatch.db")
    yield s  # type: ignore[misc]
    s.close()


def test_existing_file_starts_at_eof(tmp_path: Path) -> None:
    """History already in a file at first sight is not reported; what is appended after is."""
    log = tmp_path / "a.log"
    log.write_bytes(failure(1))
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    append(log, failure(2))
    f.step()
    assert rec.numbers() == [2]


def test_from_start_reads_history(tmp_path: Path) -> None:
    """--from-start reads what a file already holds."""
    log = tmp_path / "a.log"
    log.write_bytes(failure(1) + filler(1))
    rec = Recorder()
    rec.follower([log], from_start=True).step()
    assert rec.numbers() == [1]


def test_file_created_while_running_is_read_from_byte_0(tmp_path: Path) -> None:
    """A file that appears in a watched directory is read from its first byte."""
    rec = Recorder()
    f = rec.follower([tmp_path])
    f.step()
    (tmp_path / "new.log").write_bytes(failure(1))
    (tmp_path / "ignored.txt").write_bytes(failure(9))
    f.step()
    assert rec.seen == [(str(tmp_path / "new.log"), 1)]


def test_named_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    """A named file missing at start is followed from byte 0 once it is created."""
    log = tmp_path / "later.log"
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    log.write_bytes(failure(1))
    f.step()
    assert rec.numbers() == [1]


def test_partial_lines_written_in_pieces(tmp_path: Path) -> None:
    """A line written in several pieces is analysed once, when complete."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    line = failure(7)
    for i in range(0, len(line), 5):
        append(log, line[i:i + 5])
        f.step()
    assert rec.numbers() == [7]


def test_rename_rotation_drains_the_old_file(tmp_path: Path) -> None:
    """logrotate 'create': lines written to the old file before the switch are still read."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    append(log, failure(1))
    log.rename(tmp_path / "a.log.1")
    append(tmp_path / "a.log.1", failure(2))  # the writer has not reopened yet
    log.write_bytes(failure(3))
    f.step()
    append(log, failure(4))
    f.step()
    assert rec.numbers() == [1, 2, 3, 4]
    assert f.counters["rotations"] == 1


def test_copy_truncate(tmp_path: Path) -> None:
    """copytruncate: a file shorter than the offset is read again from its start."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    append(log, filler(1) * 10 + failure(1))
    f.step()
    (tmp_path / "a.log.1").write_bytes(log.read_bytes())
    with log.open("r+b") as fh:
        fh.truncate(0)
    append(log, failure(2))
    f.step()
    assert rec.numbers() == [1, 2]
    assert f.counters["truncations"] == 1


def test_truncated_and_rewritten_past_offset(tmp_path: Path) -> None:
    """A file truncated and refilled beyond the old offset between two checks is caught by its first bytes."""
    log = tmp_path / "a.log"
    log.write_bytes(b"first line\n")
    rec = Recorder()
    f = rec.follower([log])
    f.step()
    with log.open("r+b") as fh:
        fh.truncate(0)
    append(log, filler(1) + failure(5) + filler(2))
    f.step()
    assert rec.numbers() == [5]


def test_delete_and_recreate(tmp_path: Path) -> None:
    """A deleted file is drained; its re-created successor is read from byte 0."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    t = [0.0]
    f = rec.follower([log], clock=lambda: t[0])
    f.step()
    append(log, failure(1))
    log.unlink()
    f.step()
    t[0] += ROTATE_WAIT + 1
    f.step()
    assert all(s.fd is None for s in f.streams.values())  # a deleted file is not held open forever
    log.write_bytes(failure(2))
    f.step()
    assert rec.numbers() == [1, 2]


def test_restart_resumes_at_checkpoint(tmp_path: Path, store: Checkpoints) -> None:
    """Lines written while stopped are read once after a restart; nothing is read twice."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log], store)
    f.step()
    append(log, failure(1) + failure(2)[:10])  # a partial line is not checkpointed as read
    f.step()
    f.close()
    append(log, failure(2)[10:] + failure(3))
    rec2 = Recorder()
    rec2.follower([log], store).step()
    assert rec.numbers() == [1]
    assert rec2.numbers() == [2, 3]


def test_restart_after_kill_resumes_at_last_step(tmp_path: Path, store: Checkpoints) -> None:
    """Without close() (kill -9), the checkpoint of the last completed step is what counts."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log], store)
    f.step()
    append(log, failure(1))
    f.step()
    del f  # never closed
    append(log, failure(2))
    rec2 = Recorder()
    rec2.follower([log], store).step()
    assert rec.numbers() + rec2.numbers() == [1, 2]


def test_checkpoint_waits_until_ready(tmp_path: Path, store: Checkpoints) -> None:
    """While incidents are not yet delivered no checkpoint moves, so a crash re-reads those lines."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    ready = [True]
    f = rec.follower([log], store, ready=lambda: ready[0])
    f.step()
    ready[0] = False
    append(log, failure(1))
    f.step()
    rec2 = Recorder()
    rec2.follower([log], store).step()
    assert rec.numbers() == [1] and rec2.numbers() == [1]


def test_rotated_while_stopped(tmp_path: Path, store: Checkpoints) -> None:
    """A file renamed away while specwatch was down is drained from the checkpoint, then the new one is read."""
    log = tmp_path / "a.log"
    log.write_bytes(filler(0))
    rec = Recorder()
    f = rec.follower([log], store)
    f.step()
    append(log, failure(1))
    f.step()
    f.close()
    append(log, failure(2))
    log.rename(tmp_path / "a.log.1")
    log.write_bytes(failure(3))
    rec2 = Recorder()
    rec2.follower([log], store).step()
    assert rec.numbers() == [1]
    assert rec2.numbers() == [2, 3]


def test_replaced_while_stopped_old_file_gone(tmp_path: Path, store: Checkpoints) -> None:
    """A file deleted and re-created while down is read from its start."""
    log = tmp_path / "a.log"
    log.write_bytes(filler(0))
    rec = Recorder()
    f = rec.follower([log], store)
    f.step()
    f.close()
    log.unlink()
    log.write_bytes(filler(1) * 3 + failure(4))
    rec2 = Recorder()
    rec2.follower([log], store).step()
    assert rec2.numbers() == [4]


def test_file_created_in_known_dir_while_stopped(tmp_path: Path, store: Checkpoints) -> None:
    """A file that appeared while specwatch was down, under a directory it watched, is read from byte 0."""
    d = tmp_path / "logs"
    d.mkdir()
    (d / "old.log").write_bytes(failure(1))
    rec = Recorder()
    f = rec.follower([d], store)
    f.step()
    f.close()
    (d / "new.log").write_bytes(failure(2))
    rec2 = Recorder()
    rec2.follower([d], store).step()
    assert rec.numbers() == [] and rec2.numbers() == [2]


def test_unreadable_file_reports_and_others_go_on(tmp_path: Path) -> None:
    """An unreadable file gets one clear error; the other files are still followed."""
    bad = tmp_path / "bad.log"
    # Root reads files of any mode; a Unix socket where a log file is named cannot be opened by anyone.
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(bad))
    good = tmp_path / "good.log"
    good.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([bad, good])
    f.step()
    append(good, failure(1))
    f.step()
    f.step()
    assert rec.numbers() == [1]
    sock.close()
    assert len(rec.errors) == 1 and rec.errors[0][0] == str(bad)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a file with mode 000")
def test_permission_denied(tmp_path: Path) -> None:
    """A file with mode 000 is reported as 'Permission denied' once."""
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"")
    bad.chmod(0)
    rec = Recorder()
    f = rec.follower([bad])
    f.step()
    f.step()
    assert rec.errors == [(str(bad), "Permission denied")]


def test_ignore_older_keeps_old_files_closed_then_resumes(tmp_path: Path, store: Checkpoints) -> None:
    """Old files are not held open; when written again only the new lines are read."""
    old = tmp_path / "old.log"
    old.write_bytes(failure(1))
    os.utime(old, (1_000_000, 1_000_000))
    rec = Recorder()
    f = rec.follower([tmp_path], store, ignore_older=86400.0)
    f.step()
    assert str(old) not in f.streams
    append(old, failure(2))
    f.step()
    assert rec.numbers() == [2]


def test_a_dormant_file_written_again_keeps_absolute_line_numbers(tmp_path: Path, store: Checkpoints) -> None:
    """An old file first seen dormant and written later is numbered as a scan of the whole file would be."""
    old = tmp_path / "old.log"
    old.write_bytes(filler(1) * 500 + failure(1))
    os.utime(old, (1_000_000, 1_000_000))
    rec = Recorder()
    f = rec.follower([tmp_path], store, ignore_older=86400.0)
    f.step()
    append(old, failure(2))
    f.step()
    assert rec.lines == [502]


def test_glob_source(tmp_path: Path) -> None:
    """A glob follows every matching file, including ones created later."""
    (tmp_path / "x").mkdir()
    rec = Recorder()
    f = rec.follower([Path(str(tmp_path / "**" / "*.log"))])
    f.step()
    (tmp_path / "x" / "b.log").write_bytes(failure(1))
    f.step()
    assert rec.numbers() == [1]


def test_native_observer_wakes_the_loop(tmp_path: Path) -> None:
    """With native events, an append is seen long before the periodic check would run."""
    log = tmp_path / "a.log"
    log.write_bytes(b"")
    rec = Recorder()
    f = rec.follower([log])
    stop, wake = threading.Event(), threading.Event()
    seen = threading.Event()
    f.step()
    observer = f.observe(wake)

    def step() -> None:
        f.step()
        if rec.numbers():
            seen.set()
            stop.set()

    t = threading.Thread(target=run_loop, args=([step], stop, wake, 60.0))
    t.start()
    try:
        append(log, failure(1))
        assert seen.wait(30), "the observer never woke the loop"
    finally:
        stop.set()
        wake.set()
        t.join(5)
        observer.stop()
        observer.join(5)
    assert rec.numbers() == [1]


def test_line_numbers_count_the_skipped_history(tmp_path: Path) -> None:
    """Starting at EOF skips the history's events but not its lines: numbers match a scan of the whole file."""
    log = tmp_path / "a.log"
    log.write_bytes(filler(1) * 1000 + failure(1))
    rec = Recorder()
    follower = rec.follower([log])
    follower.step()
    append(log, filler(2) + failure(2))
    follower.step()
    assert rec.lines == [1003]
