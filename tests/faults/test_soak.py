"""A seeded soak: ``watch`` killed with -9 (now and then stopped with SIGTERM) at random moments while its log is
rotated; every failure written must be counted once in the store, none lost and none twice.

The figures it prints are the ones docs/watch.md states; the test checks the docs say exactly that.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from watcher.incidents import Incident
from watcher.store import Store

from .helpers import ROOT, Watch, append, block, wait_for
from .test_watch_faults import rotate

pytestmark = pytest.mark.faults

SEED = 14
ROUNDS = 20


def key(log: Path, draft: int) -> str:
    """The incident a ``block(draft)`` in ``log`` raises."""
    inc = Incident("draft_load_failed", "critical", str(log), 1, model="/m/t.gguf", draft_model=f"/m/d{draft}.gguf")
    return inc.key


def soak(tmp_path: Path) -> tuple[str, Counter[str], Counter[str]]:
    """Run the rounds; the summary sentence, failures written and counted per incident."""
    rng = random.Random(SEED)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "server.log"
    log.write_bytes(b"")
    w = Watch(tmp_path, [logs], settle=0.1, interval=0.05)
    written: Counter[str] = Counter()
    kills = rotations = 0

    def counted() -> Counter[str]:
        return Counter({k: c for k, _, c, _ in w.state.incidents()})

    try:
        w.start(wait=log)
        for _ in range(ROUNDS):
            for _ in range(rng.randint(1, 3)):
                draft = rng.randint(1, 2)
                append(log, block(draft))
                written[key(log, draft)] += 1
                time.sleep(rng.choice([0.0, 0.0, rng.uniform(0.0, 0.3)]))
            if rng.random() < 0.3:
                Store.open(w.state.db).acknowledge(None, "soak", time.time())
            how = rng.choice(["rename", "copytruncate", None])
            stopped = rng.random() < 0.5
            if how == "copytruncate":
                # A copy-truncate keeps only what was read: it runs once the failures are counted.
                assert wait_for(lambda: counted() == written), (counted(), written, w.stderr())
            if how and not stopped:
                rotate(log, how)
                rotations += 1
            time.sleep(rng.uniform(0.0, 0.4))  # kill at a random moment: before, during or after recording
            if rng.random() < 0.8:
                w.kill()
                kills += 1
            else:
                assert w.stop() == 0
            if how and stopped:
                rotate(log, how)
                rotations += 1
            w.start(wait=log)
        wait_for(lambda: counted() == written)
        assert w.stop() == 0
    finally:
        w.close()
    got = counted()
    total, seen = sum(written.values()), sum(got.values())
    twice = sum(max(0, got[k] - written[k]) for k in written | got)
    lost = sum(max(0, written[k] - got[k]) for k in written)
    summary = (f"{ROUNDS} restarts ({kills} kill -9, {ROUNDS - kills} SIGTERM) with {rotations} rotations: "
               f"{total} failures written, {seen} counted, {twice} counted twice, {lost} lost")
    return summary, written, got


def test_kill9_rotation_soak(tmp_path: Path) -> None:
    """Every failure written across 20 restarts, most of them kill -9, and rotations is counted exactly once."""
    summary, written, got = soak(tmp_path)
    print(summary)
    assert got == written, summary
    assert summary in (ROOT / "docs" / "watch.md").read_text(), summary
