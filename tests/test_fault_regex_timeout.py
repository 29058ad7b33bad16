"""Fault: a user pattern with a catastrophic regex. Each try costs the whole regex timeout; specwatch says so
once, naming the pattern, and stops trying it after a few timeouts instead of paying on every line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli
from watcher import catalogue as cat
from watcher.catalogue import GIVE_UP_AFTER, SlowPatterns
from watcher.classify import Classifier
from watcher.events import Record

#: Nested alternatives over the same letters: exponential backtracking on a run of x without a y.
SLOW = """
[[pattern]]
id = "user.slow"
event = "spec_unsupported"
anchor = "draftcheck"
regex = '''draftcheck (?:x|xx|xxx)+y'''
examples = ["draftcheck xxy"]
"""
LINE = "draftcheck " + "x" * 64


def _user_catalogue(tmp_path: Path) -> cat.Catalogue:
    f = tmp_path / "slow.toml"
    f.write_text(SLOW)
    return cat.load([cat.default_dir(), f])


def _seeded(p: cat.Pattern, regex: Any) -> cat.Pattern:
    """A copy of ``p`` whose compiled regex (compiled on first use, then kept) is ``regex``."""
    new = dataclasses.replace(p)
    vars(new)["regex"] = regex
    return new


class _Counting:
    """The real compiled regex, counting its searches (the evaluations the test bounds)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.searches = 0

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        return self.inner.search(*args, **kwargs)


def test_a_timing_out_user_pattern_is_tried_a_bounded_number_of_times(tmp_path: Path) -> None:
    """200 catastrophic lines cost GIVE_UP_AFTER regex evaluations, not 200; one warning, one 'disabled'."""
    loaded = _user_catalogue(tmp_path)
    counting = _Counting(next(p for p in loaded.patterns if p.id == "user.slow").regex)
    patterns = tuple(_seeded(p, counting) if p.id == "user.slow" else p for p in loaded.patterns)
    said: list[str] = []
    catalogue = cat.Catalogue(patterns, loaded.files, SlowPatterns(said.append))
    classifier = Classifier(catalogue)
    for n in range(1, 201):
        assert classifier.classify(Record(LINE, n, "server.log")) is None
    assert counting.searches == GIVE_UP_AFTER
    assert catalogue.slow.disabled == {"user.slow"}
    assert len(said) == 2
    assert said[0].startswith("specwatch: pattern 'user.slow' (slow) took over 50 ms on server.log:1, counted as "
                              "no match;")
    assert said[1] == f"specwatch: pattern 'user.slow' (slow) disabled for the rest of this run after " \
                      f"{GIVE_UP_AFTER} regex timeouts\n"


def test_a_pattern_that_matches_again_is_still_tried(tmp_path: Path) -> None:
    """Lines the slow pattern handles quickly still match it until it has timed out GIVE_UP_AFTER times."""
    catalogue = _user_catalogue(tmp_path)
    classifier = Classifier(catalogue)
    assert classifier.classify(Record(LINE, 1, "s")) is None
    ev = classifier.classify(Record("draftcheck xxy", 2, "s"))
    assert ev is not None and ev.pattern == "user.slow"


def test_a_shipped_pattern_is_reported_but_never_disabled() -> None:
    """A shipped pattern that times out is a bug to report; it keeps being tried, so no failure goes unseen."""
    loaded = cat.load()
    meta = next(p for p in loaded.patterns if p.id == "llama.model_meta")
    assert meta.shipped
    said: list[str] = []
    slow = SlowPatterns(said.append)
    for n in range(10):
        slow.timed_out(meta, 0.05, f"x.log:{n}")
    assert slow.disabled == set() and slow.timeouts == {"llama.model_meta": 10}
    assert len(said) == 1 and "please report it" in said[0]


def test_scan_warns_once_naming_the_pattern(tmp_path: Path) -> None:
    """`scan --patterns slow.toml` over 100 catastrophic lines warns once and says the pattern was disabled."""
    (tmp_path / "slow.toml").write_text(SLOW)
    log = tmp_path / "server.log"
    log.write_text((LINE + "\n") * 100)
    r = cli("scan", "--patterns", str(tmp_path / "slow.toml"), str(log))
    assert r.status == 0
    lines = [ln for ln in r.stderr.splitlines() if "user.slow" in ln]
    assert len(lines) == 2, r.stderr
    assert f"took over 50 ms on {log}:1" in lines[0]
    assert "disabled for the rest of this run after 3 regex timeouts" in lines[1]


class _Descheduled:
    """A regex whose wall-clock timeout ran out while its thread did not run (a machine busy with the server)."""

    def search(self, *args: Any, **kwargs: Any) -> Any:
        raise TimeoutError("regex timed out")


def test_a_timeout_without_cpu_spent_does_not_count_against_the_pattern(tmp_path: Path) -> None:
    """Only regex time really spent counts: a pattern is never disabled because the machine was busy."""
    loaded = _user_catalogue(tmp_path)
    patterns = tuple(_seeded(p, _Descheduled()) if p.id == "user.slow" else p
                     for p in loaded.patterns)
    said: list[str] = []
    catalogue = cat.Catalogue(patterns, loaded.files, SlowPatterns(said.append))
    classifier = Classifier(catalogue)
    for n in range(1, 21):
        assert classifier.classify(Record(LINE, n, "server.log")) is None
    assert catalogue.slow.disabled == set() and said == []


class _StarvedOnce:
    """The real regex, except that its first search times out without running (its thread was not scheduled)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.searches = 0

    def search(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        if self.searches == 1:
            raise TimeoutError("regex timed out")
        return self.inner.search(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_line_whose_match_was_starved_is_still_recognised() -> None:
    """A failure line whose regex ran out of wall-clock time while its thread did not run is matched again, not
    lost (seen under load: 8 of 20,000 lines lost with four busy threads beside the analysis)."""
    loaded = cat.load()
    line = "srv    load_model: failed to load draft model, '/m/d1.gguf'"
    classifier = Classifier(loaded)
    [target] = [p for p in classifier.candidates(line) if p.match(line) is not None]
    starved = _StarvedOnce(target.regex)
    patterns = tuple(_seeded(p, starved) if p.id == target.id else p for p in loaded.patterns)
    said: list[str] = []
    catalogue = cat.Catalogue(patterns, loaded.files, SlowPatterns(said.append))
    ev = Classifier(catalogue).classify(Record(line, 1, "server.log"))
    assert ev is not None and ev.type == "draft_load_failed" and ev.get("model") == "/m/d1.gguf"
    assert starved.searches == 2 and said == [] and catalogue.slow.disabled == set()


def test_a_relayed_line_whose_unwrapping_was_starved_is_still_unwrapped() -> None:
    """A relay's search that ran out of wall-clock time without running is tried again: the wrapped failure line
    is still read (it was read as an unwrapped, unrecognised line before)."""
    loaded = cat.load()
    compose = next(r for r in loaded.relays if r.id.startswith("docker-compose"))
    starved = dataclasses.replace(compose, regex=_StarvedOnce(compose.regex))
    relays = tuple(starved if r.id == compose.id else r for r in loaded.relays)
    catalogue = dataclasses.replace(loaded, relays=relays)
    inner = "srv    load_model: failed to load draft model, '/m/d1.gguf'"
    assert Classifier(catalogue).unwrap(Record("llama-1  | " + inner, 1)).text == inner


def test_timed_search_raises_only_for_a_search_that_spent_the_time() -> None:
    """A search that timed out while using the CPU raises; one starved every time counts as no match."""
    import regex

    from watcher import timed

    slow = regex.compile(r"(a|aa)+$")
    with pytest.raises(TimeoutError):
        timed.search(slow, "a" * 40 + "b", 0.01)

    class Starved:
        def search(self, *args: Any, **kwargs: Any) -> Any:
            raise TimeoutError("regex timed out")

    assert timed.search(Starved(), "x", 0.05) is None  # type: ignore[arg-type]
