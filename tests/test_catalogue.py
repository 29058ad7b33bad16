"""The shipped catalogue checks itself: examples, near-misses, anchors, prefixes, errors of bad pattern files,
and the annotated corpus in tests/corpus (fail2ban-style ``# expect:`` lines)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watcher import catalogue as cat
from watcher.classify import HOST_MARKER, Classifier
from watcher.events import Record, Tally
from watcher.framing import Framer, LineSelector

CORPUS = Path(__file__).parent / "corpus"
CATALOGUE = cat.load()
CLASSIFIER = Classifier(CATALOGUE)
ALL_EXAMPLES = [(p, ex) for p in CATALOGUE.patterns for ex in p.examples]
ALL_NEAR_MISSES = [(p, nm) for p in CATALOGUE.patterns for nm in p.near_misses]
#: Prefixes llama.cpp and its hosts put before a message: timestamps and level letters (--log-prefix,
#: --log-timestamps), router-mode children ("[pid] "), LM Studio's indentation.
PREFIXES = ["", "0.03.621.477 E ", "I ", "[41907] 13.06.287.074 I ", "[41907] ", " "]


def _id(item: tuple[cat.Pattern, Any]) -> str:
    return item[0].id


def _classify(line: str) -> tuple[str | None, dict[str, Any]]:
    ev = CLASSIFIER.classify(Record(line, 1))
    return (ev.pattern, ev.fields) if ev else (None, {})


def _claimed(p: cat.Pattern, line: str) -> bool:
    """``line`` is ``p``'s event, or ``p`` marks a host and the line's event (another pattern's) carries it; a
    tallied pattern's line is its own first among every match and its tally regex finds the value."""
    if p.tally_field:
        return CLASSIFIER.matches(Record(line, 1))[:1] == [p] and bool(p.tally_regex.findall(line.encode()))
    pid, fields = _classify(line)
    if pid == p.id:
        return True
    return p.event == HOST_MARKER and pid is not None and fields.get("host") == p.constants.get("host")


def test_every_pattern_has_examples_and_known_fields() -> None:
    """Every pattern carries at least one real example line."""
    assert CATALOGUE.patterns
    for p in CATALOGUE.patterns:
        assert p.examples, p.id


@pytest.mark.parametrize("item", ALL_EXAMPLES, ids=[_id(i) for i in ALL_EXAMPLES])
def test_example_matches_its_own_pattern_first(item: tuple[cat.Pattern, cat.Example]) -> None:
    """Each example is claimed by its own pattern (first in catalogue order) with the declared fields; a host
    marker's example may be another pattern's event, as long as that event carries the marker's host."""
    p, ex = item
    pid, fields = _classify(ex.line)
    if p.tally_field:
        pid, fields = p.id, p.match(ex.line) or {}
    assert _claimed(p, ex.line), f"{ex.line!r} is claimed by {pid}, not {p.id}"
    for name, value in ex.fields.items():
        assert fields.get(name) == value, f"{p.id}: field {name} = {fields.get(name)!r}, expected {value!r}"


@pytest.mark.parametrize("item", ALL_EXAMPLES, ids=[_id(i) for i in ALL_EXAMPLES])
def test_example_contains_an_anchor_and_passes_the_prefilter(item: tuple[cat.Pattern, cat.Example]) -> None:
    """The prefilter cannot drop an example: it holds one of its pattern's anchors and the framer selects it."""
    p, ex = item
    assert any(a in ex.line for a in p.anchors), f"{p.id}: no anchor of {p.anchors} in {ex.line!r}"
    framer = Framer(LineSelector(CATALOGUE.anchors), tallies=CATALOGUE.tallies)
    noise = b"llama_model_loader: - kv   0: general.architecture str = llama\n"
    records = framer.feed(noise + ex.line.encode() + b"\n" + noise)
    if p.tally_field:  # never a record: the framer tallies it, with the example's value
        tallies = [r for r in records if isinstance(r, Tally) and r.pattern == p.id]
        assert [t.values for t in tallies] == [(int(ex.fields.get(p.tally_field, tallies[0].values[0])),)]
        return
    assert ex.line in [r.text for r in records if isinstance(r, Record)]


@pytest.mark.parametrize("item", ALL_EXAMPLES, ids=[_id(i) for i in ALL_EXAMPLES])
def test_example_survives_log_prefixes(item: tuple[cat.Pattern, cat.Example]) -> None:
    """Timestamps, level letters and router-mode ``[pid]`` prefixes do not change what a line means."""
    p, ex = item
    for prefix in PREFIXES:
        assert _claimed(p, prefix + ex.line), f"{p.id} lost with prefix {prefix!r}"


@pytest.mark.parametrize("item", ALL_NEAR_MISSES, ids=[_id(i) for i in ALL_NEAR_MISSES])
def test_near_miss_does_not_match(item: tuple[cat.Pattern, str]) -> None:
    """A near-miss line (similar wording, other meaning) is not matched by the pattern it sits beside."""
    p, line = item
    assert p.match(line) is None, f"{p.id} matches its near-miss {line!r}"


def test_anchors_fit_four_prefilter_passes() -> None:
    """The literals the prefilter searches for (anchors that contain no other anchor) fit four SIMD searchers of 16:
    a 65th costs a fifth pass over every chunk."""
    assert LineSelector(CATALOGUE.anchors).passes <= 4


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_classifies_without_error(text: str) -> None:
    """Arbitrary text gives an event or nothing, never an exception."""
    CLASSIFIER.classify(Record(text, 1))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_EXAMPLES), st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40))
def test_trailing_text_keeps_the_event_type(item: tuple[cat.Pattern, cat.Example], tail: str) -> None:
    """Text appended after a recognised line does not turn it into nothing (unless the pattern is end-anchored)."""
    p, ex = item
    if "$" in p.regex.pattern:
        return
    if p.tally_field:  # tallied, never classified: the framer must still find its value
        assert p.tally_regex.findall((ex.line + " " + tail).encode())
        return
    pid, _ = _classify(ex.line + " " + tail)
    assert pid is not None


# -- bad pattern files -----------------------------------------------------------------------------

GOOD = '''
[[pattern]]
id = "t.one"
event = "draft_loading"
anchor = "draft"
regex = "loading draft model <QPATH>"
examples = ["loading draft model '/m/d.gguf'"]
'''


@pytest.mark.parametrize(("body", "key"), [
    (GOOD.replace('regex = "loading draft model <QPATH>"\n', ""), "regex"),
    (GOOD.replace('event = "draft_loading"\n', ""), "event"),
    (GOOD.replace("loading draft model <QPATH>", "loading (draft"), "regex"),
    (GOOD.replace("<QPATH>", "(?P<nonsense>x)"), "regex"),
    (GOOD.replace('anchor = "draft"', 'anchor = "dr"'), "anchor"),
    (GOOD.replace('examples = ["loading draft model \'/m/d.gguf\'"]', "examples = []"), "examples"),
    (GOOD.replace('examples = ["loading draft model \'/m/d.gguf\'"]', "examples = [3]"), "examples"),
    (GOOD + 'colour = "red"\n', "colour"),
    (GOOD + "set = 3\n", "set"),
])
def test_bad_pattern_names_file_pattern_and_key(tmp_path: Path, body: str, key: str) -> None:
    """A broken pattern is refused with a message naming the file, the pattern id and the key."""
    f = tmp_path / "broken.toml"
    f.write_text(body)
    with pytest.raises(cat.CatalogueError) as err:
        cat.load([f])
    msg = str(err.value)
    assert "broken.toml" in msg and "t.one" in msg and key in msg


def test_regexes_compile_on_first_use_only() -> None:
    """Loading compiles no shipped regex; a line compiles only the patterns whose anchor it holds."""
    catalogue = cat.load()
    assert not any("regex" in vars(p) for p in catalogue.patterns)
    line = "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache"
    Classifier(catalogue).classify(Record(line, 1))
    compiled = {p.id for p in catalogue.patterns if "regex" in vars(p)}
    tried = {p.id for p in catalogue.patterns if any(a in line for a in p.anchors)}
    assert compiled and compiled <= tried


def test_a_bad_regex_in_a_shipped_pattern_fails_on_use_naming_it(tmp_path: Path, monkeypatch) -> None:
    """A shipped pattern's regex is checked when first used, and its error names the file, pattern and key."""
    (tmp_path / "broken.toml").write_text(GOOD.replace("loading draft model <QPATH>", "loading (draft"))
    monkeypatch.setattr(cat, "default_dir", lambda: tmp_path)
    catalogue = cat.load([tmp_path])
    with pytest.raises(cat.CatalogueError, match=r"broken\.toml: pattern 't\.one': key 'regex'"):
        Classifier(catalogue).classify(Record("loading draft model '/m/d.gguf'", 1))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_EXAMPLES), st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=40),
       st.text(max_size=12))
def test_a_line_without_a_required_literal_never_matches(item: tuple[cat.Pattern, cat.Example], at: int, cut: int,
                                                         insert: str) -> None:
    """The literals checked before a pattern's regex are in every line the regex matches (examples cut and
    spliced anywhere), so skipping the regex when one is missing never loses a match."""
    p, ex = item
    line = ex.line[:at] + insert + ex.line[at + cut:]
    if p.regex.search(line) is not None:
        assert all(lit in line for lit in p.literals)


@pytest.mark.parametrize(("expression", "literals"), [
    (r"(?P<buffer>[\w.-]+) (?:KV|RS) buffer size =\s*(?P<mib>[\d.]+) MiB", (" buffer size =", " MiB")),
    (r"abcd?e", ("abc",)),
    (r"abc{2,3}def", ("def",)),
    (r"x\(y\)z+", ("x(y)",)),
    (r"\x41bc def", (" def",)),
    (r"foo\p{L}+bar", ("foo", "bar")),
    (r"ab[|]cd|efg", ()),
    (r"(?i)abcdef", ()),
    (r"abc(?#comment)def", ()),
])
def test_required_literals_are_read_conservatively(expression: str, literals: tuple[str, ...]) -> None:
    """Only plain text outside groups, sets, escapes with arguments and optional characters is required; an
    alternative or an inline flag at the top gives none."""
    assert cat.required_literals(expression) == literals


def test_a_line_missing_a_literal_does_not_even_compile_the_regex() -> None:
    """A line holding a pattern's anchor but not its other literals is turned away before the regex is compiled."""
    catalogue = cat.load()
    kv = next(p for p in catalogue.patterns if p.id == "llama.kv_buffer")
    assert kv.literals and kv.match("llama_context: graph nodes = 1 MiB") is None
    assert "regex" not in vars(kv)


def test_a_cached_file_is_not_parsed_again(tmp_path: Path, monkeypatch) -> None:
    """A pattern file loaded once with a cache is read back from it: the TOML parser is not used again."""
    import tomllib

    (tmp_path / "p.toml").write_text(GOOD)
    first = cat.load([tmp_path / "p.toml"], cache=tmp_path / "cache")

    def refuse(_text: str) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(tomllib, "loads", refuse)
    again = cat.load([tmp_path / "p.toml"], cache=tmp_path / "cache")
    assert [(p.id, p.expression, p.examples) for p in again.patterns] == \
        [(p.id, p.expression, p.examples) for p in first.patterns]


def test_the_cache_follows_the_content(tmp_path: Path) -> None:
    """Any change to a pattern file's bytes is seen, even with the same size and modification time."""
    f = tmp_path / "p.toml"
    f.write_text(GOOD)
    stamp = f.stat().st_mtime_ns
    assert cat.load([f], cache=tmp_path / "cache").patterns[0].id == "t.one"
    f.write_text(GOOD.replace('id = "t.one"', 'id = "t.two"'))
    os.utime(f, ns=(stamp, stamp))
    assert cat.load([f], cache=tmp_path / "cache").patterns[0].id == "t.two"


def test_a_damaged_or_unwritable_cache_only_costs_a_parse(tmp_path: Path) -> None:
    """A cache entry that is not valid JSON is parsed again and rewritten; a cache that cannot be written is
    not an error."""
    f = tmp_path / "p.toml"
    f.write_text(GOOD)
    cache = tmp_path / "cache"
    cat.load([f], cache=cache)
    (entry,) = cache.iterdir()
    entry.write_text("{not json")
    assert cat.load([f], cache=cache).patterns[0].id == "t.one"
    assert json.loads(entry.read_text())["pattern"][0]["id"] == "t.one"
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cat.load([f], cache=blocked / "cache").patterns[0].id == "t.one"


def test_invalid_toml_and_duplicate_ids_name_the_file(tmp_path: Path) -> None:
    """Invalid TOML names the file; a duplicate id names both files."""
    (tmp_path / "a.toml").write_text("[[pattern]\n")
    with pytest.raises(cat.CatalogueError, match=r"a\.toml"):
        cat.load([tmp_path / "a.toml"])
    (tmp_path / "b.toml").write_text(GOOD)
    (tmp_path / "c.toml").write_text(GOOD)
    with pytest.raises(cat.CatalogueError, match=r"c\.toml.*t\.one.*b\.toml"):
        cat.load([tmp_path / "b.toml", tmp_path / "c.toml"])


# -- annotated corpus ------------------------------------------------------------------------------

def corpus_cases() -> list[tuple[str, int, dict[str, Any], str]]:
    """(file, line number, expectation, line) for every ``# expect:`` comment of tests/corpus/*.log."""
    cases = []
    for f in sorted(CORPUS.glob("*.log")):
        lines = f.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("# expect:"):
                assert i + 1 < len(lines), f"{f.name}:{i + 1}: expectation without a line"
                cases.append((f.name, i + 2, json.loads(line[len("# expect:"):]), lines[i + 1]))
    return cases


CASES = corpus_cases()


def test_corpus_is_not_empty() -> None:
    """The corpus holds annotated lines of several origins."""
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) >= 3


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_corpus_line(case: tuple[str, int, dict[str, Any], str]) -> None:
    """Each annotated corpus line yields the event (and fields) its ``# expect:`` comment states."""
    fname, lineno, expect, line = case
    ev = CLASSIFIER.classify(Record(line, lineno))
    if expect.get("match", True) is False:
        assert ev is None, f"{fname}:{lineno} matched {ev.pattern if ev else ''}"
        return
    assert ev is not None, f"{fname}:{lineno}: no pattern matches {line!r}"
    assert ev.type == expect["event"], f"{fname}:{lineno}: {ev.type} ({ev.pattern})"
    if "pattern" in expect:
        assert ev.pattern == expect["pattern"]
    for name, value in expect.get("fields", {}).items():
        assert ev.fields.get(name) == value, f"{fname}:{lineno}: {name}={ev.fields.get(name)!r}"


def test_every_pattern_is_exercised_by_corpus_or_examples() -> None:
    """No pattern is dead weight: each is hit by a corpus line or one of its own examples (a host marker: its
    host joins the event of an example line)."""
    hit = {p.id for p, ex in ALL_EXAMPLES if _claimed(p, ex.line)}
    hit |= {pid for _, _, _, line in CASES if (pid := _classify(line)[0])}
    missing = [p.id for p in CATALOGUE.patterns if p.id not in hit]
    assert not missing, missing


def test_the_documented_catalogue_size_is_the_real_one() -> None:
    """docs/catalogue.md states how many patterns, files and anchors the catalogue has: the numbers are true."""
    doc = (Path(__file__).parent.parent / "docs" / "catalogue.md").read_text()
    patterns, files = map(int, re.search(r"\((\d+) patterns in (\d+) files\)", doc).groups())  # type: ignore[union-attr]
    anchors = int(re.search(r"(\d+) distinct anchors today", doc).group(1))  # type: ignore[union-attr]
    assert patterns == len(CATALOGUE.patterns)
    assert files == len(list(cat.default_dir().glob("*.toml")))
    assert anchors == len(LineSelector(CATALOGUE.anchors).anchors)
