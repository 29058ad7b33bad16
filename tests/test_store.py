"""The incident store: lifecycle, ids, history, shared by several connections."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.incidents import Evidence, Incident
from watcher.store import MIGRATIONS, AmbiguousIdError, Occurrence, Store


def inc(source: str = "srv", run: int = 1, line: int = 3, **kw: object) -> Incident:
    i = Incident(kind="draft_context_failed", severity="critical", source=source, run=run, draft_model="d.gguf",
                 device="CUDA1", mib=7168.0, slots=[0, 1, 2, 3], hint="lower -cd", first_line=line,
                 **kw)  # type: ignore[arg-type]
    i.evidence = [Evidence(line, "cudaMalloc failed: out of memory")]
    return i


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "s.db", host="box")


def test_open_then_repeat_bumps_count(store: Store) -> None:
    """A new occurrence of an open incident (a later run) only bumps count and last_seen."""
    i = inc()
    assert store.record(i.as_dict(), "opened", 100.0)[0] == "opened"
    what, row = store.record(inc(run=2, line=90).as_dict(), "opened", 200.0)
    assert what == "repeat" and row.count == 2 and row.last_seen == 200.0 and row.first_seen == 100.0
    assert row.status == "open" and row.generation == 1 and row.host == "box" and row.slots == [0, 1, 2, 3]
    assert row.title == i.title


def test_ack_resolve_and_recurrence_reopens(store: Store) -> None:
    """Acknowledged, updated (stays acknowledged), resolved, then recurring: opens again in a new generation."""
    i = inc()
    store.record(i.as_dict(), "opened", 1.0)
    assert store.acknowledge([i.key], "on it", 2.0) == [i.key]
    assert store.get(i.key).status == "acknowledged"  # type: ignore[union-attr]
    what, row = store.record(i.as_dict(), "updated", 3.0)
    assert what == "updated" and row.status == "acknowledged" and row.ack_note == "on it"
    i.status = "resolved"
    assert store.record(i.as_dict(), "resolved", 4.0)[0] == "resolved"
    i.status = "open"
    what, row = store.record(i.as_dict(), "opened", 5.0)
    assert what == "reopened" and row.status == "open" and row.generation == 2 and row.ack_note == ""
    assert [h[2] for h in store.history()] == ["reopened", "resolved", "updated", "acknowledged", "opened"]


def test_recurrence_after_ack_reopens(store: Store) -> None:
    """A new occurrence of an acknowledged incident (a later load) reopens it: the ack ended the alert."""
    i = inc()
    store.record(i.as_dict(), "opened", 1.0)
    store.acknowledge(None, "swapping the draft", 2.0)
    what, row = store.record(inc(run=2, line=90).as_dict(), "opened", 3.0)
    assert what == "reopened" and row is not None
    assert (row.status, row.generation, row.count, row.ack_note, row.acked_at) == ("open", 2, 2, "", None)
    assert row.opened_at == 3.0 and row.first_seen == 1.0
    assert store.acknowledge([i.key], "", 4.0) == [i.key]


def test_same_occurrence_read_again_stays_acknowledged(store: Store) -> None:
    """Another process reading the same lines of a file again (scan, watch replay) neither reopens nor counts."""
    first, later = inc(run=1, line=3), inc(run=2, line=90)
    store.record(first.as_dict(), "opened", 1.0, Occurrence.of(first.as_dict(), "scan-1"))
    store.record(later.as_dict(), "opened", 1.0, Occurrence.of(later.as_dict(), "scan-1"))
    store.acknowledge(None, "", 2.0)
    for i in (first, later):  # a second scan, or watch --from-start, of the same file
        what, row = store.record(i.as_dict(), "opened", 3.0, Occurrence.of(i.as_dict(), "scan-2"))
        assert what == "updated" and row is not None
        assert (row.status, row.generation, row.count) == ("acknowledged", 1, 2)
    newer = inc(run=3, line=400)  # the server loaded again, further down the file
    what, row = store.record(newer.as_dict(), "opened", 4.0, Occurrence.of(newer.as_dict(), "watch-1"))
    assert what == "reopened" and row is not None and row.generation == 2


def test_stream_read_once_is_new_in_every_process(store: Store) -> None:
    """A pipe (or run) is a new server output in every process: the same lines there are a new occurrence."""
    i = inc()
    store.record(i.as_dict(), "opened", 1.0, Occurrence.of(i.as_dict(), "pipe-1", rereadable=False))
    store.acknowledge(None, "", 2.0)
    same = Occurrence.of(i.as_dict(), "pipe-1", rereadable=False)
    assert store.record(i.as_dict(), "opened", 3.0, same)[0] == "updated"  # the same process, same run
    what, row = store.record(i.as_dict(), "opened", 4.0, Occurrence.of(i.as_dict(), "pipe-2", rereadable=False))
    assert what == "reopened" and row is not None and row.generation == 2


def test_replay_of_a_resolved_occurrence_changes_nothing(store: Store) -> None:
    """Re-reading a failure that has since resolved leaves it resolved (no new alert for an old log)."""
    i = inc()
    store.record(i.as_dict(), "opened", 1.0, Occurrence.of(i.as_dict(), "watch-1"))
    i.status = "resolved"
    assert store.record(i.as_dict(), "resolved", 2.0, Occurrence.of(i.as_dict(), "watch-1"))[0] == "resolved"
    i.status = "open"
    for change in ("opened", "updated"):
        assert store.record(i.as_dict(), change, 3.0, Occurrence.of(i.as_dict(), "scan-1"))[0] == "unchanged"
    assert store.get(i.key).status == "resolved"  # type: ignore[union-attr]


def test_failure_resolved_before_it_settled_is_recorded(store: Store) -> None:
    """A failure first reported already resolved is stored resolved, and history shows it opened then resolved."""
    i = inc()
    i.status, i.resolution = "resolved", "speculation works again in run 2 (line 6)"
    what, row = store.record(i.as_dict(), "resolved", 1.0, Occurrence.of(i.as_dict(), "watch-1"))
    assert what == "resolved" and row is not None
    assert (row.status, row.count, row.resolved_at, row.resolution) == ("resolved", 1, 1.0, i.resolution)
    assert [(h[2], h[3]) for h in store.history()] == [("resolved", i.resolution), ("opened", "")]
    # The same lines read again by another process are the same occurrence: nothing changes.
    assert store.record(i.as_dict(), "resolved", 2.0, Occurrence.of(i.as_dict(), "watch-2"))[0] == "unchanged"
    i.status = "open"
    assert store.record(i.as_dict(), "opened", 3.0, Occurrence.of(i.as_dict(), "scan-1"))[0] == "unchanged"
    assert len(store.history()) == 2


def test_rows_from_before_occurrences_reopen_as_before(tmp_path: Path) -> None:
    """An incident stored by the previous schema (no occurrence recorded) keeps the previous rule: reopen."""
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    conn.executescript(MIGRATIONS[0])
    conn.execute("INSERT INTO schema_versions VALUES ('incidents', 1)")
    conn.commit()
    conn.close()
    store = Store.open(tmp_path / "old.db")
    i = inc()
    store.conn.execute("INSERT INTO incidents (key, kind, severity, title, source, host, first_seen, last_seen, "
                       "opened_at, status) VALUES (?, 'k', 'critical', 't', 'srv', 'h', 1, 1, 1, 'acknowledged')",
                       (i.key,))
    assert store.record(i.as_dict(), "opened", 2.0)[0] == "reopened"


def test_acknowledge_hook_runs_in_the_transaction(store: Store) -> None:
    """A failing ``then`` hook rolls the acknowledgement back: status and its message commit together."""
    i = inc()
    store.record(i.as_dict(), "opened", 1.0)

    def boom(_c: object, _row: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.acknowledge([i.key], "", 2.0, boom)
    assert store.get(i.key).status == "open"  # type: ignore[union-attr]
    assert [h[2] for h in store.history()] == ["opened"]


def test_prefix_ids(store: Store) -> None:
    """Ids may be given as unique prefixes; an ambiguous prefix is an error."""
    a, b = inc("a"), inc("b")
    store.record(a.as_dict(), "opened", 1.0)
    store.record(b.as_dict(), "opened", 1.0)
    assert store.resolve_id(a.key[:10]) == a.key
    assert store.resolve_id("zzzz") is None
    with pytest.raises(AmbiguousIdError):
        store.resolve_id("")


def test_file_mode_and_shared(tmp_path: Path) -> None:
    """The database is 0600, and a second connection sees the first one's writes."""
    s1, s2 = Store.open(tmp_path / "x.db"), Store.open(tmp_path / "x.db")
    s1.record(inc().as_dict(), "opened", 1.0)
    assert len(s2.open_incidents()) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "x.db").st_mode) == 0o600


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["opened", "updated", "resolved", "ack"]), max_size=12))
def test_lifecycle_invariants(tmp_path_factory: pytest.TempPathFactory, steps: list[str]) -> None:
    """Whatever happens, count never drops, generation only grows on reopen, status stays valid."""
    store = Store.open(tmp_path_factory.mktemp("h") / "h.db")
    i = inc()
    count, gen = 0, 0
    for t, step in enumerate(steps):
        if step == "ack":
            store.acknowledge(None, "", float(t))
        else:
            i.status = "resolved" if step == "resolved" else "open"
            store.record(i.as_dict(), step, float(t))
        row = store.get(i.key)
        if row is None:
            continue
        assert row.status in ("open", "acknowledged", "resolved")
        assert row.count >= count and row.generation >= gen
        count, gen = row.count, row.generation
    store.close()


def test_restart_loop_after_ack_reopens_once_then_counts(store: Store) -> None:
    """A process reading a restart loop reports each further load as the same incident with a higher count.
    Acknowledged after load 2, load 3 reopens it (the ack ended the alert, it must not silence the next
    failure) and counts 1 more; load 4 only counts. No load is counted twice."""
    i = inc()
    occ = Occurrence("pipe-1", rereadable=False, run=1, line=3)
    store.record(i.as_dict(), "opened", 1.0, occ)
    i.count = 2
    assert store.record(i.as_dict(), "updated", 2.0, occ)[0] == "repeat"
    store.acknowledge([i.key], "fixing the draft", 3.0)
    i.count = 3
    what, row = store.record(i.as_dict(), "updated", 4.0, occ)
    assert what == "reopened" and row is not None
    assert (row.status, row.generation, row.count, row.ack_note) == ("open", 2, 3, "")
    i.count = 4
    what, row = store.record(i.as_dict(), "updated", 5.0, occ)
    assert what == "repeat" and row is not None and (row.status, row.generation, row.count) == ("open", 2, 4)
    assert store.record(i.as_dict(), "updated", 6.0, occ)[1].count == 4  # type: ignore[union-attr]


def test_loop_resolved_elsewhere_reopens_with_only_its_new_loads(store: Store) -> None:
    """A loop counted 2 times, resolved by another process (same models, working speculation), then failing a
    3rd time for its reader: reopened with count 3, not 2 + 3."""
    i = inc()
    occ = Occurrence("pipe-1", rereadable=False, run=1, line=3)
    store.record(i.as_dict(), "opened", 1.0, occ)
    i.count = 2
    store.record(i.as_dict(), "updated", 2.0, occ)
    fixed = inc(run=7, line=500)
    fixed.status = "resolved"
    assert store.record(fixed.as_dict(), "resolved", 3.0, Occurrence("watch-2", run=7, line=500))[0] == "resolved"
    i.count = 3
    what, row = store.record(i.as_dict(), "updated", 4.0, occ)
    assert what == "reopened" and row is not None and row.count == 3


def test_a_single_repeat_row_says_its_count(store: Store) -> None:
    """The first 'repeat' row of history already says how many times (2), like the rows it later stands for."""
    store.record(inc().as_dict(), "opened", 1.0, Occurrence("pipe-1", rereadable=False, run=1, line=3))
    store.record(inc().as_dict(), "opened", 2.0, Occurrence("pipe-2", rereadable=False, run=1, line=3))
    assert [(what, note) for _, _, what, note, _ in store.history()] == [("repeat", "2 times"), ("opened", "")]


def test_loop_read_again_by_another_process_counts_only_its_new_loads(store: Store) -> None:
    """watch counted a loop's first load and was killed before its checkpoint passed it; the next process reads
    that load again and two more of the loop (one incident, count 3): it adds the 2 new loads, and a third
    process reading the same lines again adds none."""
    i = inc(run=7, line=33)
    store.record(i.as_dict(), "opened", 1.0, Occurrence.of(i.as_dict(), "watch-1"))
    i.count = 3
    what, row = store.record(i.as_dict(), "opened", 2.0, Occurrence.of(i.as_dict(), "watch-2"))
    assert what == "repeat" and row is not None and (row.status, row.count) == ("open", 3)
    what, row = store.record(i.as_dict(), "opened", 3.0, Occurrence.of(i.as_dict(), "watch-3"))
    assert what == "updated" and row is not None and row.count == 3


def test_loop_read_again_after_ack_reopens_with_its_new_loads(store: Store) -> None:
    """The same, acknowledged after the first load: the loads read past it reopen the incident, counted once."""
    i = inc(run=7, line=33)
    store.record(i.as_dict(), "opened", 1.0, Occurrence.of(i.as_dict(), "watch-1"))
    store.acknowledge(None, "", 2.0)
    i.count = 2
    what, row = store.record(i.as_dict(), "opened", 3.0, Occurrence.of(i.as_dict(), "watch-2"))
    assert what == "reopened" and row is not None and (row.status, row.generation, row.count) == ("open", 2, 2)


def test_loop_resumed_inside_by_another_process_counts_no_load_twice(store: Store) -> None:
    """watch counted loads 1 and 2 of a loop (runs 1-2) and was killed before its checkpoint passed load 2; the
    next process reads load 2 again as the start of a loop of its own (run 2), then load 3: 3 counted, not 4.
    A loop begun after the counted one is new."""
    i = inc(run=1, line=3)
    i.count, i.last_line = 2, 6
    store.record(i.as_dict(), "opened", 1.0, Occurrence.of(i.as_dict(), "watch-1"))
    again = inc(run=2, line=6)
    what, row = store.record(again.as_dict(), "opened", 2.0, Occurrence.of(again.as_dict(), "watch-2"))
    assert what == "updated" and row is not None and row.count == 2
    again.count, again.last_line = 2, 9
    what, row = store.record(again.as_dict(), "updated", 3.0, Occurrence.of(again.as_dict(), "watch-2"))
    assert what == "repeat" and row is not None and row.count == 3
    assert store.lines_counted("srv") == 9  # a new file at the path is numbered past the loop's last load
    later = inc(run=4, line=12)
    assert store.record(later.as_dict(), "opened", 4.0, Occurrence.of(later.as_dict(), "watch-3"))[1].count == 4  # type: ignore[union-attr]
