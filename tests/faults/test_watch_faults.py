"""``specwatch watch`` under faults: rotation with restarts, kill -9, a failing store, FIFOs, symlink loops.

Each test runs the real command in its own process on local files and stops it with SIGTERM or kill -9.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sources.helpers_tail import Recorder, failure
from watcher.store import Store

from .helpers import DEADLINE, ROOT, Watch, append, block, wait_for

pytestmark = pytest.mark.faults


@pytest.fixture
def watch(tmp_path: Path):  # type: ignore[no-untyped-def]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "server.log").write_bytes(b"")
    w = Watch(tmp_path, [logs])
    yield w
    w.close()


def rotate(log: Path, how: str) -> None:
    """Rotate like logrotate: rename and a new file, or copy then truncate in place."""
    if how == "rename":
        log.rename(log.with_name(log.name + ".1"))
        log.write_bytes(b"")
    else:
        shutil.copyfile(log, log.with_name(log.name + ".1"))
        with log.open("r+b") as fh:
            fh.truncate(0)


@pytest.mark.parametrize("restart", ["sigterm", "kill9"])
@pytest.mark.parametrize("how", ["rename", "copytruncate"])
def test_failure_after_rotation_and_restart_reopens(watch: Watch, tmp_path: Path, how: str, restart: str) -> None:
    """A failure written after a rotation and a restart is a new occurrence: it reopens the acknowledged incident."""
    log = tmp_path / "logs" / "server.log"
    watch.start(wait=log)
    append(log, block())
    assert wait_for(lambda: watch.state.count() == 1), watch.stderr()
    Store.open(watch.state.db).acknowledge(None, "seen", time.time())
    assert wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[1] == len(block())), watch.stderr()
    rotate(log, how)
    ino = log.stat().st_ino
    # The checkpoint now names the new file (offset 0): the restart resumes there.
    assert wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[0] == ino and cp[1] == 0), watch.stderr()
    if restart == "sigterm":
        assert watch.stop() == 0
    else:
        watch.kill()
    watch.start(wait=log)
    append(log, block())
    assert wait_for(lambda: watch.state.incidents()[0][1:3] == ("open", 2)), (watch.state.incidents(), watch.stderr())
    assert watch.stop() == 0


def test_checkpoint_waits_for_the_store(watch: Watch, tmp_path: Path) -> None:
    """While the store cannot record a failure the checkpoint stays before it; kill -9 then loses nothing."""
    log = tmp_path / "logs" / "server.log"
    append(log, b"srv  update_slots: all slots are idle\n")
    watch.start(wait=log)
    before = watch.state.checkpoint(log)
    assert before is not None
    conn = sqlite3.connect(str(watch.state.db), timeout=10)
    # The store refuses every new incident (a constraint fails); checkpoints can still be written.
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON incidents BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    conn.commit()
    append(log, block())
    # Long enough for many passes past the settle time: without the fix the checkpoint moves past the failure.
    moved = wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[1] > before[1], timeout=3)
    watch.kill()
    conn.execute("DROP TRIGGER refuse")
    conn.commit()
    conn.close()
    assert not moved, "checkpoint written for a failure the store never recorded"
    watch.start()
    assert wait_for(lambda: watch.state.count() == 1), watch.stderr()
    assert watch.stop() == 0


CHECKPOINT = "dev, ino, head_len, head_hash, offset, lines, runs"


def checkpoint_row(db: Path, log: Path) -> tuple[object, ...]:
    """The checkpoint of ``log`` as stored, to put back later."""
    with contextlib.closing(sqlite3.connect(str(db), timeout=10)) as conn:
        row = conn.execute(f"SELECT {CHECKPOINT} FROM checkpoints WHERE stream = ?", (f"file:{log}",)).fetchone()
    return tuple(row)


def killed_before_checkpoint(db: Path, log: Path, row: tuple[object, ...]) -> None:
    """What kill -9 leaves between an incident's commit and the next checkpoint: the checkpoint before its lines."""
    with contextlib.closing(sqlite3.connect(str(db), timeout=10)) as conn, conn:
        conn.execute(f"UPDATE checkpoints SET ({CHECKPOINT}) = (?, ?, ?, ?, ?, ?, ?) WHERE stream = ?",
                     (*row, f"file:{log}"))


def test_loop_read_again_after_kill_counts_its_new_loads(watch: Watch, tmp_path: Path) -> None:
    """A counted failure read again after kill -9, then two more loads of its restart loop: counted 3 times, not 1."""
    log = tmp_path / "logs" / "server.log"
    watch.start(wait=log)
    before = checkpoint_row(watch.state.db, log)
    append(log, block(2))
    assert wait_for(lambda: watch.state.count() == 1), watch.stderr()
    assert watch.stop() == 0
    killed_before_checkpoint(watch.state.db, log, before)
    append(log, block(2) + block(2))
    watch.start(wait=log)
    assert wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[1] == 3 * len(block(2))), watch.stderr()
    assert watch.stop() == 0
    assert [c for _, _, c, _ in watch.state.incidents()] == [3], (watch.state.incidents(), watch.stderr())


def test_loop_resumed_inside_after_kill_counts_no_load_twice(watch: Watch, tmp_path: Path) -> None:
    """A restart loop's counted second load read again after kill -9, then a third: counted 3 times, not 4."""
    log = tmp_path / "logs" / "server.log"
    watch.start(wait=log)
    append(log, block(2))
    assert wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[1] == len(block(2))), watch.stderr()
    before = checkpoint_row(watch.state.db, log)
    append(log, block(2))
    assert wait_for(lambda: watch.state.count() == 2), watch.stderr()
    assert watch.stop() == 0
    killed_before_checkpoint(watch.state.db, log, before)
    append(log, block(2))
    watch.start(wait=log)
    assert wait_for(lambda: (cp := watch.state.checkpoint(log)) and cp[1] == 3 * len(block(2))), watch.stderr()
    assert watch.stop() == 0
    assert [c for _, _, c, _ in watch.state.incidents()] == [3], (watch.state.incidents(), watch.stderr())


def test_failure_recovered_before_it_settled_is_in_history(tmp_path: Path) -> None:
    """A draft that fails and a working reload within the settle time: history shows it opened, then resolved."""
    working = (b"build: 4000 (abc) with cc\nsrv    load_model: loading model '/m/t.gguf'\n"
               b"slot update_slots: id  0 | task 5 | accepted 2/8 draft tokens, new n_past = 120\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECWATCH_STATE_DIR": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    p = subprocess.run([sys.executable, "-m", "watcher"], input=block() + working, capture_output=True, env=env,
                       timeout=DEADLINE, check=False)
    assert p.returncode == 0 and b"SPECWATCH RESOLVED" in p.stderr
    h = subprocess.run([sys.executable, "-m", "watcher", "history"], capture_output=True, text=True, env=env,
                       timeout=DEADLINE, check=False)
    lines = h.stdout.splitlines()
    assert [ln.split()[3] for ln in lines] == ["resolved", "opened"], h.stdout
    assert "(speculation works again in run 2 (line 6))" in lines[0]


def test_fifo_is_refused_clearly(tmp_path: Path) -> None:
    """A FIFO named on the command line is a usage error (exit 2) naming it, not a hang in open()."""
    fifo = tmp_path / "server.fifo"
    os.mkfifo(fifo)
    w = Watch(tmp_path, [fifo])
    try:
        w.start()
        assert w.proc is not None
        assert w.proc.wait(timeout=DEADLINE) == 2
    finally:
        w.close()
    assert f"{fifo}: a FIFO" in w.stderr()


def test_fifo_appearing_later_is_skipped_and_sigterm_works(tmp_path: Path) -> None:
    """A followed path that turns into a FIFO is reported and skipped; SIGTERM still stops watch at once."""
    path = tmp_path / "server.log"
    w = Watch(tmp_path, [path])
    try:
        w.start()
        assert wait_for(w.state.streams)  # its first pass ran, with the path absent
        os.mkfifo(path)
        assert wait_for(lambda: "not a regular file" in w.stderr()), w.stderr()
        assert w.stop() == 0
    finally:
        w.close()


@pytest.mark.parametrize("layout", ["glob over a symlink loop", "directory with a symlinked file"])
def test_one_file_reached_by_several_paths_is_read_once(tmp_path: Path, layout: str) -> None:
    """A file reached through several paths (a symlink loop under a glob, a symlink beside it) is followed once."""
    logs = tmp_path / "logs"
    (logs / "sub").mkdir(parents=True)
    log = logs / "sub" / "a.log"
    log.write_bytes(b"")
    if layout.startswith("glob"):
        (logs / "sub" / "loop").symlink_to("..")
        target = [Path(f"{logs}/**/*.log")]
    else:
        (logs / "b.log").symlink_to(log)
        target = [logs]
    rec = Recorder()
    f = rec.follower(target)
    f.step()
    append(log, failure(1))
    f.step()
    f.close()
    assert rec.numbers() == [1]
    assert list(f.streams) == [str(log)]
