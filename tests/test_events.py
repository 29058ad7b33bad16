"""The event vocabulary: every pattern yields a known event, every event has a state handler or a declared
reason to be ignored, and a misspelt event in a user's pattern file is an error that names the pattern."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import cli
from watcher import catalogue as cat
from watcher.events import EVENTS
from watcher.loads import LoadTracker
from watcher.state import HANDLERS, IGNORED
from watcher.swap import SWAP_EVENTS


def test_every_catalogue_event_is_in_the_vocabulary() -> None:
    """No shipped pattern yields an event outside watcher/events.py."""
    stray = {p.id: p.event for p in cat.load().patterns if p.event not in EVENTS}
    assert not stray


def test_every_event_is_handled_or_declared_ignored() -> None:
    """Each event has exactly one fate: a state handler, or a reason in IGNORED."""
    assert set(HANDLERS) | set(IGNORED) == set(EVENTS)
    assert not set(HANDLERS) & set(IGNORED)


def test_no_handler_waits_for_an_event_that_does_not_exist() -> None:
    """A handler named after a misspelt or retired event would never run: there is none."""
    assert set(HANDLERS) <= set(EVENTS)


def test_the_ignored_events_are_consumed_elsewhere() -> None:
    """Events that bypass per-run state are llama-swap's own (the demux takes each), stream-wide ones, lines
    claimed only so that a broader pattern does not misread them (a projector's metadata is no model's, a recurrent
    state's size is no KV cache's), or the
    memory ledger's (its LoadTracker handles each), each with its reason."""
    assert set(SWAP_EVENTS) <= set(IGNORED)
    ledger_only = set(IGNORED) - set(SWAP_EVENTS) - {"host_record", "projector_meta", "rs_size"}
    assert all(callable(getattr(LoadTracker, f"_on_{e}", None)) for e in ledger_only), ledger_only
    assert all(IGNORED.values())


MISSPELT = '''
[[pattern]]
id = "mine.draft_oom"
event = "draft_contex_failed"
anchor = "draft"
regex = "my host: draft context failed"
examples = ["my host: draft context failed"]
'''


def test_misspelt_event_is_refused_naming_file_pattern_and_suggestion(tmp_path: Path) -> None:
    """An unknown event in a pattern file is a catalogue error that names the file, the pattern and the event
    it was probably meant to be."""
    f = tmp_path / "mine.toml"
    f.write_text(MISSPELT)
    with pytest.raises(cat.CatalogueError) as err:
        cat.load([cat.default_dir(), f])
    msg = str(err.value)
    assert "mine.toml" in msg and "mine.draft_oom" in msg and "draft_contex_failed" in msg
    assert "draft_context_failed" in msg


def test_misspelt_event_in_patterns_option_exits_2(tmp_path: Path) -> None:
    """'specwatch scan --patterns FILE' with a misspelt event stops with exit status 2 and says why."""
    f = tmp_path / "mine.toml"
    f.write_text(MISSPELT)
    log = tmp_path / "a.log"
    log.write_text("srv  llama_server: model loaded\n")
    r = cli("scan", "--patterns", str(f), str(log))
    assert r.status == 2
    assert "mine.draft_oom" in r.stderr and "unknown event 'draft_contex_failed'" in r.stderr
