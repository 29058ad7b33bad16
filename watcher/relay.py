"""Relays: hosts that wrap llama.cpp's own lines (docker compose, journald, kubectl, LocalAI, ollama, Jan,
llama-box...). A relay strips its wrapper so the catalogue sees the inner llama.cpp line.

Relays are data (``[[relay]]`` tables in ``patterns/*.toml``, each with real examples), tried only on the
lines the literal prefilter already selected, and only when one of the relay's anchors occurs in the line:
an unwrapped log pays a few substring tests per candidate line and nothing per other line. A wrapper can
wrap another (LocalAI in docker compose, ollama in journald), so unwrapping repeats a few times.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

from watcher import timed

#: How many wrappers deep a line may be (journald around docker around LocalAI is three).
MAX_DEPTH = 4
_ESCAPES = ("", "go")
_MARKS = ("", "exit_cause")


@dataclass(frozen=True)
class RelayExample:
    """A wrapped line and the inner line the relay must give back."""

    line: str
    inner: str


@dataclass(frozen=True)
class Relay:
    """One wrapper: literal anchors, a regex with an ``inner`` group, how the inner text is escaped."""

    id: str
    anchors: tuple[str, ...]
    regex: regex.Pattern[str]
    escape: str
    wrap: str
    examples: tuple[RelayExample, ...]
    near_misses: tuple[str, ...] = ()
    origin: str = ""
    source: str = ""
    note: str = ""
    #: What the wrapper says of the inner line, passed on as the event field ``relayed_as`` ("exit_cause": the
    #: host reports the process terminated because of it).
    mark: str = ""

    def strip(self, text: str) -> str | None:
        """The inner line if ``text`` is wrapped by this relay, else None."""
        split = self.split(text)
        return None if split is None else split[0]

    def split(self, text: str) -> tuple[str, str] | None:
        """The inner line and the channel the wrapper names (a router child's port; empty when the relay has
        no ``channel`` group), or None when ``text`` is not wrapped by this relay."""
        if not any(a in text for a in self.anchors):
            return None
        m = timed.match_or_none(self.regex, text)
        if m is None:
            return None
        inner = m.group("inner")
        channel = (m.group("channel") or "") if "channel" in self.regex.groupindex else ""
        return (unescape(inner) if self.escape == "go" else inner), channel

    def wrapped(self, line: str) -> str:
        """``line`` as this relay would print it (for tests: the ``wrap`` template with the line escaped)."""
        body = escape(line) if self.escape == "go" else line
        return self.wrap.replace("{line}", body)


class Relays:
    """Every relay of a catalogue, applied until no wrapper is left."""

    def __init__(self, relays: Sequence[Relay]) -> None:
        self.relays = tuple(relays)

    def unwrap(self, text: str) -> str:
        """The innermost line: each pass strips the first relay that matches."""
        return self.unwrap_marked(text)[0]

    def unwrap_marked(self, text: str) -> tuple[str, str]:
        """The innermost line and the mark of the relay nearest to it (empty when none says anything)."""
        text, mark, _ = self.unwrap_all(text)
        return text, mark

    def unwrap_all(self, text: str) -> tuple[str, str, str]:
        """The innermost line, the mark of the relay nearest to it and the channel of the outermost one (the
        log's own router names its children; empty when none says)."""
        mark = channel = ""
        for _ in range(MAX_DEPTH):
            for r in self.relays:
                split = r.split(text)
                if split is not None and split[0] != text:
                    text, mark, channel = split[0], r.mark or mark, channel or split[1]
                    break
            else:
                return text, mark, channel
        return text, mark, channel


def unescape(s: str) -> str:
    """A Go %q / JSON string body without its escapes (``\\"``, ``\\\\``, ``\\t``, ``\\u00e9``)."""
    if "\\" not in s:
        return s
    try:
        out = json.loads(f'"{s}"')
        return out if isinstance(out, str) else s
    except ValueError:
        # Go's \x.. and \U........ escapes are not JSON: undo the two that matter for paths and quotes.
        return s.replace('\\"', '"').replace("\\\\", "\\")


def escape(s: str) -> str:
    """The inverse of ``unescape`` for the characters Go and JSON escape."""
    return json.dumps(s, ensure_ascii=False)[1:-1]


def compile_relay(where: str, origin: str, entry: Mapping[str, Any], error: type[Exception]) -> Relay:
    """A ``[[relay]]`` table, checked: ``where`` names file and relay in every error."""
    for key in ("id", "anchor", "regex", "wrap", "examples"):
        if key not in entry:
            raise error(f"{where}: missing key {key!r}")
    unknown = set(entry) - {"id", "anchor", "regex", "escape", "wrap", "examples", "near_misses", "source", "note",
                            "mark"}
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    anchors = entry["anchor"]
    anchors = (anchors,) if isinstance(anchors, str) else tuple(anchors)
    if not anchors or not all(isinstance(a, str) and len(a) >= 2 for a in anchors):
        raise error(f"{where}: key 'anchor': literal(s) of at least 2 characters required")
    mark = str(entry.get("mark", ""))
    if mark not in _MARKS:
        raise error(f"{where}: key 'mark': one of {', '.join(repr(m) for m in _MARKS)}")
    esc = str(entry.get("escape", ""))
    if esc not in _ESCAPES:
        raise error(f"{where}: key 'escape': one of {', '.join(repr(e) for e in _ESCAPES)}")
    try:
        compiled = regex.compile(str(entry["regex"]))
    except regex.error as exc:
        raise error(f"{where}: key 'regex': {exc}") from exc
    if "inner" not in compiled.groupindex:
        raise error(f"{where}: key 'regex': needs a group (?P<inner>...) for the relayed line")
    if "{line}" not in str(entry["wrap"]):
        raise error(f"{where}: key 'wrap': a template holding {{line}}")
    examples = []
    for raw in entry["examples"]:
        if not (isinstance(raw, dict) and isinstance(raw.get("line"), str) and isinstance(raw.get("inner"), str)):
            raise error(f"{where}: key 'examples': each example is {{line = ..., inner = ...}}")
        examples.append(RelayExample(raw["line"], raw["inner"]))
    if not examples:
        raise error(f"{where}: key 'examples': every relay needs at least one real example line")
    return Relay(id=str(entry["id"]), anchors=anchors, regex=compiled, escape=esc, wrap=str(entry["wrap"]),
                 examples=tuple(examples), near_misses=tuple(str(x) for x in entry.get("near_misses", [])),
                 origin=origin, source=str(entry.get("source", "")), note=str(entry.get("note", "")), mark=mark)
