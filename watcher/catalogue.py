"""Load and validate the pattern catalogue (``patterns/*.toml``); each regex compiles on first use.

Loading parses the TOML and checks every key, but compiles no regex: a pattern's regex is compiled the first
time a line holds one of its anchors, so a growing catalogue costs nothing at start and patterns whose lines
never occur are never compiled. The shipped catalogue is compiled and tried on its examples by the test suite;
a user's own pattern files (``--patterns``, ``[patterns] extra``) are compiled at load, so a bad regex there is
reported at start, naming the file, the pattern and the key.

The commands give ``load`` a cache directory: each file's parsed TOML is kept there as JSON, named by the hash of
the file's bytes, so an unchanged file is read back without the TOML parser (its import and parse were a third
of a small command's start) and a changed file, however little, is parsed afresh.
"""

from __future__ import annotations

import difflib
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher import timed
from watcher.events import CAUSES, EVENTS, FIELD_TYPES
from watcher.relay import Relay, RelayExample, Relays, compile_relay

__all__ = ["Catalogue", "CatalogueError", "Cause", "Example", "Pattern", "Relay", "RelayExample", "Relays", "load"]

if TYPE_CHECKING:
    import regex

#: Macros usable in a pattern's regex as ``<NAME>``; upper case so they never clash with
#: ``(?P<name>...)`` groups. Kept here rather than in data: they are part of the schema.
MACROS: dict[str, str] = {
    # "id  0 | task -1 | " after a slot prefix; optional because LM Studio and old builds vary.
    "SLOT": r"(?:id\s+(?P<slot>\d+)\s*\|\s*task\s+(?P<task>-?\d+)\s*\|\s*)",
    "NUM": r"(?:\d+(?:\.\d+)?)",
    # Model paths: quoted in llama.cpp, may hold spaces and backslashes (Windows).
    "QPATH": r"'(?P<model>[^']*)'?",
}

#: Named groups in a regex: ``(?P<name>...)`` and the regex module's ``(?<name>...)`` (never a lookbehind).
_GROUP = re.compile(r"\(\?P?<([A-Za-z_]\w*)>")

SCHEMA_VERSION = 1
_KNOWN_KEYS = {
    "id", "event", "anchor", "regex", "examples", "near_misses", "set", "since", "until",
    "level", "source", "note", "flags", "generic", "tally",
}


class CatalogueError(ValueError):
    """A pattern file or pattern is invalid; the message names the file, the pattern and the key."""


@dataclass(frozen=True)
class Example:
    """A line a pattern must match, optionally with the fields it must capture."""

    line: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pattern:
    """One catalogue entry; its regex compiles the first time it is used."""

    id: str
    event: str
    anchors: tuple[str, ...]
    #: The regex as written, macros expanded.
    expression: str
    origin: str
    examples: tuple[Example, ...]
    near_misses: tuple[str, ...] = ()
    constants: Mapping[str, Any] = field(default_factory=dict)
    since: str = ""
    until: str = ""
    level: str = ""
    source: str = ""
    note: str = ""
    #: Matches any line of a family (to place what follows it), not one message: ``patterns audit`` does not
    #: count it as recognising a message, so new wordings of that family still show as missed.
    generic: bool = False
    #: From specwatch's own catalogue (tested for speed), not from a user's pattern file.
    shipped: bool = False
    ignore_case: bool = False
    #: Where the pattern was defined ("file: pattern 'id'"), for the message of a regex that does not compile.
    where: str = field(default="", compare=False)
    #: A line so frequent (one per finished task) that it is tallied, not classified: the framer runs
    #: ``tally_expression`` (bytes, one group) over whole stretches of a chunk and hands on the values of the
    #: field ``tally_field`` in bulk. Its anchor stays out of the prefilter, so the line costs no Python call.
    tally_field: str = ""
    tally_expression: str = ""

    @cached_property
    def tally_regex(self) -> regex.Pattern[bytes]:
        """The compiled tally regex (the ``regex`` module: over a 256 MiB log it searched in 0.14 s of CPU where
        the standard ``re`` took 0.20)."""
        import regex

        return regex.compile(self.tally_expression.encode())

    @cached_property
    def regex(self) -> regex.Pattern[str]:
        """The compiled regex (compiled once, on first use; the module itself loads with the first one)."""
        import regex

        try:
            return regex.compile(self.expression, regex.V0 | (regex.IGNORECASE if self.ignore_case else 0))
        except regex.error as exc:
            raise CatalogueError(f"{self.where or self.id}: key 'regex': {exc}") from exc

    def match(self, text: str, timeout: float = 0.05) -> dict[str, Any] | None:
        """Typed fields if ``text`` matches, else None. A regex timeout counts as no match."""
        try:
            return self.fields(text, timeout)
        except TimeoutError:
            return None

    @cached_property
    def literals(self) -> tuple[str, ...]:
        """Pieces of plain text every match contains (see ``required_literals``), checked before the regex runs.

        Most lines a pattern is tried on hold its anchor but are not its line (a dozen patterns share "MiB"); a
        substring test turns most of them away for a fraction of a regex search. As a guard against a regex
        this reading gets wrong, literals that one of the pattern's own examples lacks are not used.
        """
        found = () if self.ignore_case else required_literals(self.expression)
        if any(lit not in ex.line for ex in self.examples for lit in found):
            return ()
        return found

    def fields(self, text: str, timeout: float = 0.05) -> dict[str, Any] | None:
        """Typed fields if ``text`` matches, else None; raises TimeoutError when the regex takes too long."""
        for lit in self.literals:
            if lit not in text:
                return None
        m = timed.search(self.regex, text, timeout)
        if m is None:
            return None
        fields: dict[str, Any] = dict(self.constants)
        for name, value in m.groupdict().items():
            if value is None:
                continue
            kind = FIELD_TYPES.get(name, str)
            try:
                fields[name] = kind(value.strip()) if kind is str else kind(value)
            except ValueError:
                continue
        return fields


#: Characters with a meaning outside a character set, in the regex module's version 0 syntax.
_SPECIAL = frozenset(".^$*+?{}[]\\|()")


def required_literals(expression: str) -> tuple[str, ...]:
    """Runs of plain characters at the top level of ``expression``, which every match must contain.

    Deliberately simple and conservative: it reads only the outermost sequence (groups, sets, classes and
    escapes of letters end a run without being looked into; a quantifier takes back the character it applies
    to), and gives nothing for a pattern with a top-level alternative or inline flags, which could change what
    the plain characters mean. The two longest runs of at least 3 characters are kept.
    """
    if "(?" in expression and any(f"(?{f}" in expression for f in "aiLmsuxVbefrpw-#"):
        return ()
    runs: list[str] = []
    run: list[str] = []
    depth, i, n = 0, 0, len(expression)

    def end() -> None:
        if len(run) >= 3:
            runs.append("".join(run))
        run.clear()

    while i < n:
        c = expression[i]
        if c == "\\":
            nxt = expression[i + 1 : i + 2]
            if depth == 0 and nxt and not nxt.isalnum() and not nxt.isspace():
                run.append(nxt)
            elif depth == 0:
                end()
            i += 2
            if nxt in "xuUNpPg" or nxt.isdigit():
                # An escape with an argument (\x41, \N{...}, \p{L}, \g<1>, \12): its argument is not text.
                closer = {"{": "}", "<": ">"}.get(expression[i : i + 1])
                if closer:
                    i = expression.find(closer, i) + 1 or n
                while i < n and expression[i].isalnum():
                    i += 1
            continue
        if c == "[":
            # Skip the set: a ']' first (or after '^') is a member; escapes inside are skipped whole.
            if depth == 0:
                end()
            i += 1
            if expression[i : i + 1] == "^":
                i += 1
            if expression[i : i + 1] == "]":
                i += 1
            while i < n and expression[i] != "]":
                i += 2 if expression[i] == "\\" else 1
            i += 1
            continue
        if c == "(":
            if depth == 0:
                end()
            depth += 1
        elif c == ")":
            depth = max(0, depth - 1)
        elif depth == 0:
            if c == "|":
                return ()
            if c in "*?{" or (c == "+" and run):
                # The character before a quantifier may be absent (or repeated): it leaves the run.
                if run:
                    run.pop()
                end()
                if c == "{":
                    close = expression.find("}", i)
                    i = n if close < 0 else close + 1
                    continue
            elif c in _SPECIAL:
                end()
            else:
                run.append(c)
        i += 1
    end()
    return tuple(sorted(runs, key=len, reverse=True)[:2])


#: Regex timeouts after which a user's pattern is no longer tried, for the rest of the run.
GIVE_UP_AFTER = 3


class SlowPatterns:
    """Patterns whose regex hit the timeout, shared by every classifier of a catalogue (one per source).

    A catastrophic regex (nested repetition) costs the whole timeout on every line it is tried on,
    silently: 2,000 lines took 100 s. The first timeout of a pattern is reported through ``say``; a user's
    pattern that times out ``limit`` times is disabled for the run, and that is reported too. A shipped
    pattern is never disabled (its failures must not go unseen); its timeout is a bug to report.
    """

    def __init__(self, say: Callable[[str], object] | None = None, limit: int = GIVE_UP_AFTER) -> None:
        self.say = say
        self.limit = limit
        #: Timeouts per pattern id.
        self.timeouts: dict[str, int] = {}
        #: Ids of the patterns no longer tried.
        self.disabled: set[str] = set()
        self._lock = threading.Lock()

    def timed_out(self, pattern: Pattern, timeout: float, where: str) -> None:
        """``pattern`` took longer than ``timeout`` seconds on the line at ``where``."""
        with self._lock:
            n = self.timeouts[pattern.id] = self.timeouts.get(pattern.id, 0) + 1
            give_up = not pattern.shipped and n >= self.limit and pattern.id not in self.disabled
            if give_up:
                self.disabled.add(pattern.id)
        name = f"pattern {pattern.id!r} ({pattern.origin})"
        if n == 1:
            then = ("a bug in specwatch's catalogue: please report it with the line" if pattern.shipped else
                    f"a regex with nested repetition can take exponential time: simplify it; after {self.limit} "
                    "timeouts it is no longer tried")
            self._say(f"specwatch: {name} took over {timeout * 1000:.0f} ms on {where}, counted as no match; "
                      f"{then}\n")
        if give_up:
            self._say(f"specwatch: {name} disabled for the rest of this run after {n} regex timeouts\n")

    def _say(self, text: str) -> None:
        if self.say is not None:
            self.say(text)


@dataclass(frozen=True)
class Cause:
    """A ``[[cause]]`` entry: the words in a failure's reason that say why it happened."""

    id: str
    cause: str
    regex: regex.Pattern[str]
    examples: tuple[Mapping[str, str], ...]
    near_misses: tuple[str, ...] = ()
    source: str = ""
    note: str = ""

    def match(self, text: str) -> dict[str, str] | None:
        """``{"cause": ..., and any captured field}`` if ``text`` says this cause, else None."""
        m = timed.match_or_none(self.regex, text)
        if m is None:
            return None
        return {"cause": self.cause, **{k: v for k, v in m.groupdict().items() if v}}


@dataclass(frozen=True)
class Catalogue:
    """All patterns in load order, plus the literal anchors the prefilter looks for."""

    patterns: tuple[Pattern, ...]
    files: tuple[str, ...]
    #: The run's record of slow patterns (see SlowPatterns); commands point its ``say`` at stderr.
    slow: SlowPatterns = field(default_factory=SlowPatterns, compare=False, repr=False)
    #: Wrappers around llama.cpp's lines (docker compose, journald, LocalAI...), stripped before matching.
    relays: tuple[Relay, ...] = ()
    #: What a captured ``reason`` says about why a failure happened, first match wins.
    causes: tuple[Cause, ...] = ()

    def cause_of(self, reason: str) -> dict[str, str] | None:
        """The cause (and fields such as ``arch``) a failure's reason states, if the causes table knows it."""
        for c in self.causes:
            found = c.match(reason)
            if found is not None:
                return found
        return None

    @property
    def relay(self) -> Relays:
        """The relay stage over this catalogue's relays."""
        return Relays(self.relays)

    @property
    def anchors(self) -> tuple[str, ...]:
        """Every distinct anchor of the patterns that are classified line by line, in first-seen order (a
        tallied pattern's lines are counted in bulk by the framer, never selected)."""
        seen: dict[str, None] = {}
        for p in self.patterns:
            if p.tally_field:
                continue
            for a in p.anchors:
                seen.setdefault(a, None)
        return tuple(seen)

    @property
    def tallies(self) -> tuple[Pattern, ...]:
        """The patterns whose lines the framer tallies in bulk."""
        return tuple(p for p in self.patterns if p.tally_field)

    def by_anchor(self) -> dict[str, tuple[Pattern, ...]]:
        """Patterns indexed by each of their anchors, catalogue order kept."""
        out: dict[str, list[Pattern]] = {}
        for p in self.patterns:
            for a in p.anchors:
                out.setdefault(a, []).append(p)
        return {k: tuple(v) for k, v in out.items()}


def default_dir() -> Path:
    """The shipped catalogue: inside an installed wheel, or ``patterns/`` of a source checkout."""
    # The wheel puts the catalogue beside this module (pyproject's force-include); a plain path rather than
    # importlib.resources, whose import costs more than the rest of loading the catalogue.
    here = Path(__file__).resolve().parent
    packaged = here / "_catalogue"
    return packaged if packaged.is_dir() else here.parent / "patterns"


def load(paths: Iterable[Path] | None = None, cache: Path | None = None) -> Catalogue:
    """Load every ``*.toml`` under the given files or directories (default: the shipped catalogue).

    The regexes of files outside the shipped catalogue are compiled now, so their errors are reported at load.
    With ``cache``, parsed files are kept in (and read back from) that directory.
    """
    files: list[Path] = []
    for p in paths if paths is not None else [default_dir()]:
        if p.is_dir():
            files.extend(sorted(p.glob("*.toml")))
        elif p.is_file():
            files.append(p)
        else:
            raise CatalogueError(f"{p}: no such pattern file or directory")
    if not files:
        raise CatalogueError("no pattern files found")
    patterns: list[Pattern] = []
    relays: list[Relay] = []
    causes: list[Cause] = []
    ids: dict[str, str] = {}
    shipped = default_dir().resolve()
    for f in files:
        for item in _load_file(f, f.resolve().parent == shipped, cache):
            kind = "pattern" if isinstance(item, Pattern) else "relay" if isinstance(item, Relay) else "cause"
            key = f"{kind}:{item.id}"
            if key in ids:
                raise CatalogueError(f"{f.name}: {kind} {item.id!r}: id already used in {ids[key]}")
            ids[key] = f.name
            if isinstance(item, Pattern):
                if not item.shipped:
                    _ = item.regex  # a user's file: a regex that does not compile is an error at start
                patterns.append(item)
            elif isinstance(item, Relay):
                relays.append(item)
            else:
                causes.append(item)
    return Catalogue(tuple(patterns), tuple(str(f) for f in files), relays=tuple(relays), causes=tuple(causes))


def _load_file(path: Path, shipped: bool = False, cache: Path | None = None) -> Iterator[Pattern | Relay | Cause]:
    data = _parse(path, cache)
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise CatalogueError(f"{path.name}: schema {schema} is not supported (this specwatch reads {SCHEMA_VERSION})")
    origin = str(data.get("origin", path.stem))
    entries = data.get("pattern", [])
    if not isinstance(entries, list):
        raise CatalogueError(f"{path.name}: 'pattern' must be an array of tables ([[pattern]])")
    for n, entry in enumerate(entries, 1):
        yield _compile(path.name, n, origin, entry, shipped)
    relays = data.get("relay", [])
    if not isinstance(relays, list):
        raise CatalogueError(f"{path.name}: 'relay' must be an array of tables ([[relay]])")
    for n, entry in enumerate(relays, 1):
        where = f"{path.name}: relay {str(entry.get('id', f'#{n}'))!r}"
        yield compile_relay(where, origin, entry, CatalogueError)
    causes = data.get("cause", [])
    if not isinstance(causes, list):
        raise CatalogueError(f"{path.name}: 'cause' must be an array of tables ([[cause]])")
    for n, entry in enumerate(causes, 1):
        yield _compile_cause(f"{path.name}: cause {str(entry.get('id', f'#{n}'))!r}", entry)


def _compile_cause(where: str, entry: dict[str, Any]) -> Cause:
    import regex

    for key in ("id", "cause", "regex", "examples"):
        if key not in entry:
            raise CatalogueError(f"{where}: missing key {key!r}")
    unknown = set(entry) - {"id", "cause", "regex", "flags", "examples", "near_misses", "source", "note"}
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    name = str(entry["cause"])
    if name not in CAUSES:
        raise CatalogueError(f"{where}: key 'cause': unknown cause {name!r} (see watcher/events.py CAUSES)")
    flags = regex.V0 | (regex.IGNORECASE if "i" in str(entry.get("flags", "")) else 0)
    try:
        compiled = regex.compile(str(entry["regex"]), flags)
    except regex.error as exc:
        raise CatalogueError(f"{where}: key 'regex': {exc}") from exc
    bad = set(compiled.groupindex) - set(FIELD_TYPES)
    if bad:
        raise CatalogueError(f"{where}: key 'regex': unknown field name(s) {', '.join(sorted(bad))}")
    examples = entry["examples"]
    if not examples or not all(isinstance(e, dict) and isinstance(e.get("text"), str) for e in examples):
        raise CatalogueError(f"{where}: key 'examples': at least one {{text = ...}} from a real failure")
    return Cause(id=str(entry["id"]), cause=name, regex=compiled,
                 examples=tuple({str(k): str(v) for k, v in e.items()} for e in examples),
                 near_misses=tuple(str(x) for x in entry.get("near_misses", [])),
                 source=str(entry.get("source", "")), note=str(entry.get("note", "")))


#: Part of every cache key: a change to how parsed files are kept makes every old entry unreachable.
_CACHE_FORMAT = b"specwatch catalogue cache 1\0"
#: Entries kept per cache directory; past it the oldest go (every edit of a pattern file leaves one behind).
CACHE_ENTRIES = 64


def _parse(path: Path, cache: Path | None) -> dict[str, Any]:
    """The TOML document of ``path``, read back from ``cache`` when this exact content was parsed before."""
    raw = path.read_bytes()
    entry = None
    if cache is not None:
        import hashlib
        import json

        entry = cache / f"{hashlib.sha256(_CACHE_FORMAT + raw).hexdigest()[:40]}.json"
        try:
            kept = json.loads(entry.read_bytes())
        except (OSError, ValueError):
            pass  # not cached yet, or an unreadable entry: parsed again (and the entry rewritten) below
        else:
            if isinstance(kept, dict):
                return kept
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    try:
        data: dict[str, Any] = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path.name}: invalid TOML: {exc}") from exc
    if entry is not None:
        _keep(entry, data)
    return data


def _keep(entry: Path, data: dict[str, Any]) -> None:
    """Write a cache entry atomically; a cache that cannot be written is only slower, never an error."""
    import json
    import os

    try:
        text = json.dumps(data, ensure_ascii=False)
        if json.loads(text) != data:
            return  # a value JSON would not give back the same (TOML dates, NaN): this file is always parsed
    except (TypeError, ValueError):
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(entry)
        old = sorted(entry.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for p in old[: max(0, len(old) - CACHE_ENTRIES)]:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _compile(fname: str, n: int, origin: str, entry: dict[str, Any], shipped: bool = False) -> Pattern:
    pid = str(entry.get("id", f"#{n}"))
    where = f"{fname}: pattern {pid!r}"
    for key in ("id", "event", "anchor", "regex"):
        if key not in entry:
            raise CatalogueError(f"{where}: missing key {key!r}")
    unknown = set(entry) - _KNOWN_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    event = str(entry["event"])
    if event not in EVENTS:
        close = difflib.get_close_matches(event, EVENTS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else " (see watcher/events.py EVENTS)"
        raise CatalogueError(f"{where}: key 'event': unknown event {event!r}{hint}")
    anchors = entry["anchor"]
    anchors = (anchors,) if isinstance(anchors, str) else tuple(anchors)
    if not anchors or not all(isinstance(a, str) and len(a) >= 3 for a in anchors):
        raise CatalogueError(f"{where}: key 'anchor': literal(s) of at least 3 characters required")
    source = _expand(str(entry["regex"]))
    # Field names are checked without compiling (the regex compiles on first use).
    bad = set(_GROUP.findall(source)) - set(FIELD_TYPES)
    if bad:
        raise CatalogueError(f"{where}: key 'regex': unknown field name(s) {', '.join(sorted(bad))}")
    examples = tuple(_example(where, e) for e in entry.get("examples", []))
    if not examples:
        raise CatalogueError(f"{where}: key 'examples': every pattern needs at least one real example line")
    constants = entry.get("set", {})
    if not isinstance(constants, dict):
        raise CatalogueError(f"{where}: key 'set' must be a table")
    if "cause" in constants and constants["cause"] not in CAUSES:
        raise CatalogueError(f"{where}: key 'set': unknown cause {constants['cause']!r} (see watcher/events.py CAUSES)")
    tally_field, tally_expression = _tally(where, entry.get("tally"), source, examples)
    return Pattern(
        id=pid,
        event=event,
        anchors=anchors,
        expression=source,
        origin=origin,
        examples=examples,
        near_misses=tuple(str(x) for x in entry.get("near_misses", [])),
        constants=constants,
        since=str(entry.get("since", "")),
        until=str(entry.get("until", "")),
        level=str(entry.get("level", "")),
        source=str(entry.get("source", "")),
        note=str(entry.get("note", "")),
        generic=bool(entry.get("generic", False)),
        shipped=shipped,
        ignore_case="i" in str(entry.get("flags", "")),
        where=where,
        tally_field=tally_field,
        tally_expression=tally_expression,
    )


def _tally(where: str, raw: Any, source: str, examples: tuple[Example, ...]) -> tuple[str, str]:
    """``(field, regex)`` of a ``tally = { field = ..., regex = ... }`` table, checked against the examples."""
    if raw is None:
        return "", ""
    if not isinstance(raw, dict) or set(raw) != {"field", "regex"}:
        raise CatalogueError(f"{where}: key 'tally': a table {{ field = ..., regex = ... }}")
    name, expression = str(raw["field"]), str(raw["regex"])
    if name not in set(_GROUP.findall(source)) or FIELD_TYPES.get(name) is not int:
        raise CatalogueError(f"{where}: key 'tally': field {name!r} must be an integer field of the pattern's regex")
    try:
        rx = re.compile(expression.encode())
    except re.error as exc:
        raise CatalogueError(f"{where}: key 'tally': {exc}") from exc
    if rx.groups != 1:
        raise CatalogueError(f"{where}: key 'tally': the regex needs exactly one group (the field's digits)")
    for ex in examples:
        found = rx.findall(ex.line.encode())
        if name in ex.fields and found != [str(ex.fields[name]).encode()]:
            raise CatalogueError(f"{where}: key 'tally': finds {found!r} in an example whose {name} is "
                                 f"{ex.fields[name]!r}")
    return name, expression


def _expand(source: str) -> str:
    for name, body in MACROS.items():
        source = source.replace(f"<{name}>", body)
    return source


def _example(where: str, raw: Any) -> Example:
    if isinstance(raw, str):
        return Example(raw)
    if isinstance(raw, dict) and isinstance(raw.get("line"), str):
        return Example(raw["line"], dict(raw.get("fields", {})))
    raise CatalogueError(f"{where}: key 'examples': each example is a string or {{line = ..., fields = {{...}}}}")
