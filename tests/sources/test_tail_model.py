"""A stateful model test: appends, rotations, truncations and restarts at random; every failure is reported once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from watcher.checkpoints import Checkpoints
from watcher.sources.tail import Follower

from .helpers_tail import Recorder, append, failure, filler


class FollowerModel(RuleBasedStateMachine):
    """Real files in a temporary directory, a real follower and checkpoint DB; the model is the set written."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="specwatch-model-"))
        self.log = self.dir / "app.log"
        self.log.write_bytes(b"")
        self.store = Checkpoints.open(self.dir / "state.db")
        self.rec = Recorder()
        self.next = 0
        self.written: list[int] = []
        self.pending = b""  # a line written in part
        self.follower: Follower | None = self._start()
        self.rotated_unseen = False

    def _start(self) -> Follower:
        f = self.rec.follower([self.log], self.store)
        f.step()
        self.rotated_unseen = False
        return f

    @rule(fillers=st.integers(0, 3), split=st.integers(0, 60))
    def write_failure(self, fillers: int, split: int) -> None:
        """Append a failure line, sometimes in two pieces around a step."""
        self.next += 1
        line = b"".join(filler(i) for i in range(fillers)) + failure(self.next)
        self.written.append(self.next)
        cut = min(split, len(line))
        append(self.log, self.pending + line[:cut])
        self.pending = b""
        if cut < len(line):
            if self.follower is not None:
                self.follower.step()
                self.rotated_unseen = False
            append(self.log, line[cut:])

    @precondition(lambda self: self.follower is not None)
    @rule()
    def step(self) -> None:
        """One pass of the follower."""
        assert self.follower is not None
        self.follower.step()
        self.rotated_unseen = False

    @precondition(lambda self: not self.rotated_unseen)
    @rule()
    def rotate(self) -> None:
        """logrotate 'create': rename to .1, create a new file. Two rotations with no look in between
        would overwrite an unread .1: no tailer can recover that, so the model does not do it."""
        self.log.rename(self.dir / "app.log.1")
        self.log.write_bytes(b"")
        self.rotated_unseen = True

    @precondition(lambda self: self.follower is not None)
    @rule()
    def copy_truncate(self) -> None:
        """copytruncate right after a step (bytes written between the two are lost by design)."""
        assert self.follower is not None
        self.follower.step()
        self.rotated_unseen = False
        shutil.copyfile(self.log, self.dir / "app.log.1")
        with self.log.open("r+b") as fh:
            fh.truncate(0)

    @precondition(lambda self: self.follower is not None)
    @rule(kill=st.booleans())
    def stop(self, kill: bool) -> None:
        """Stop cleanly, or vanish like kill -9 (only the last step's checkpoint survives)."""
        assert self.follower is not None
        if not kill:
            self.follower.close()
        else:
            for s in self.follower.streams.values():
                if s.fd is not None:
                    os.close(s.fd)
        self.follower = None

    @precondition(lambda self: self.follower is None)
    @rule()
    def start(self) -> None:
        """Start again from the checkpoints."""
        self.follower = self._start()
        self.rotated_unseen = False

    @invariant()
    def never_twice(self) -> None:
        """No failure is reported twice, and none that was not written."""
        seen = self.rec.numbers()
        assert len(seen) == len(set(seen))
        assert set(seen) <= set(self.written)

    def teardown(self) -> None:
        """Catch up, then every failure written was reported exactly once."""
        try:
            if self.follower is None:
                self.follower = self._start()
            self.follower.step()
            assert sorted(self.rec.numbers()) == self.written
        finally:
            if self.follower is not None:
                self.follower.close()
            self.store.close()
            shutil.rmtree(self.dir, ignore_errors=True)


FollowerModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
TestFollowerModel = FollowerModel.TestCase
