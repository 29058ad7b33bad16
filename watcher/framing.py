"""Bytes to records: line splitting, a literal prefilter, tolerant decoding, ANSI stripping, caps.

The prefilter is what keeps specwatch close to free: one pass of a multi-literal searcher
(``ahocorasick_rs``, Rust's aho-corasick crate, whose SIMD "Teddy" engine scans for up to a few dozen
literals at about 2 GB/s) finds the catalogue's anchors in each chunk, and only the lines around a
hit are decoded. Everything else is never looked at byte by byte from Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import ahocorasick_rs

from watcher.events import Record, Tally

if TYPE_CHECKING:
    from watcher.catalogue import Pattern

#: What is analysed of one line; longer lines are cut (the bytes still pass through untouched).
MAX_LINE = 16 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


#: Literals per searcher. The crate's SIMD engine ("Teddy") takes up to 64, but sorts them into at most 16
#: buckets: past 16, literals share buckets and every candidate position is checked against each of them.
#: Groups of 16 neighbouring literals (sorted, so those with the same first bytes share a searcher) cost a pass
#: each and are still faster: measured on the benchmark log and on the real samples, 4 passes of 16 took 0.6x
#: and 0.8x the time of one pass of 49.
GROUP = 16


class LineSelector:
    """Finds the lines of a chunk that contain at least one anchor literal."""

    def __init__(self, anchors: Iterable[str]) -> None:
        self.anchors = sorted({a.encode() for a in anchors if a})
        # An anchor that contains another is found through the shorter one (a line holding "draft tokens" holds
        # "draft"): only the others are searched for. Fewer literals is a faster SIMD pass, and the catalogue
        # may add specific anchors next to general ones at no cost.
        self.literals = [a for a in self.anchors if not any(b != a and b in a for b in self.anchors)]
        # Leftmost-first is the match kind that lets the crate use its SIMD prefilter. It reports
        # non-overlapping matches, which is enough: a match never crosses a newline (no anchor holds
        # one), so a line holding any anchor holds at least one reported match.
        self._searchers = [
            ahocorasick_rs.BytesAhoCorasick(self.literals[i : i + GROUP],
                                            matchkind=ahocorasick_rs.MATCHKIND_LEFTMOST_FIRST)
            for i in range(0, len(self.literals), GROUP)
        ]

    @property
    def passes(self) -> int:
        """Whole-chunk scans per chunk: one per GROUP literals searched for."""
        return len(self._searchers)

    def hits(self, data: bytes | memoryview) -> list[int]:
        """Start offsets of anchor occurrences, ascending; every line holding an anchor has one."""
        if len(self._searchers) == 1:
            return [start for _, start, _ in self._searchers[0].find_matches_as_indexes(data)]
        return sorted(start for ac in self._searchers for _, start, _ in ac.find_matches_as_indexes(data))


class Framer:
    """Turns a byte stream, fed in chunks of any size, into records.

    With a selector only the lines holding an anchor become records; without one every line does.
    Lines end at LF (CRLF's CR is dropped); a lone CR also separates records inside a line, so
    progress bars redrawn with CR do not glue messages together.
    """

    def __init__(self, selector: LineSelector | None = None, source: str = "-", max_line: int = MAX_LINE,
                 tallies: Sequence[Pattern] = ()) -> None:
        self.selector = selector
        self.source = source
        self.max_line = max_line
        # Tallied only behind a selector: without one every line is a record and is classified as such.
        self._tallies = [(p, p.tally_regex) for p in tallies] if selector is not None else []
        self.lines = 0  # complete lines consumed so far
        self._pending = b""  # the unfinished CR piece of the unfinished line (its first max_line bytes)
        self._skipping = False  # that piece is over-long: its bytes are discarded until CR or LF
        self._open = False  # the unfinished line has had pieces emitted (it counts at EOF even if empty now)

    def feed(self, chunk: bytes) -> list[Record | Tally]:
        """Records for every line completed by ``chunk``; a partial last line waits for its end."""
        out: list[Record | Tally] = []
        pos = 0
        if self._skipping:
            nl = chunk.find(b"\n")
            cr = chunk.find(b"\r", 0, nl if nl >= 0 else len(chunk))
            if cr >= 0:
                # The over-long piece ends at a CR: its head is analysed, and the line goes on after it.
                out = [*self._records([self._pending], self.lines + 1, check=True)]
                self._pending, self._skipping, self._open = b"", False, True
                return out + self.feed(chunk[cr + 1 :])
            if nl < 0:
                return []
        if self._pending or self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._pending += chunk  # bounded: _check_overlong cuts it at max_line
                return self._check_overlong()
            line = self._pending if self._skipping else self._pending + chunk[:nl]
            self._pending, self._skipping, self._open = b"", False, False
            out = self._emit(line + b"\n", 0, len(line) + 1, force=True)
            pos = nl + 1
        # The rest is analysed in place (offsets, no copy): chunks can be megabytes.
        last = chunk.rfind(b"\n", pos)
        if last < 0:
            self._pending = chunk[pos:]
        else:
            out += self._emit(chunk, pos, last + 1)
            self._pending, self._open = chunk[last + 1 :], False
        return out + self._check_overlong()

    def flush(self) -> list[Record | Tally]:
        """End of stream: the last line even without its newline."""
        if not (self._pending or self._open):
            return []
        data, self._pending, self._skipping, self._open = self._pending + b"\n", b"", False, False
        return self._emit(data, 0, len(data), force=True)

    def _check_overlong(self) -> list[Record | Tally]:
        if len(self._pending) <= self.max_line:
            return []
        # A stream that only ever uses CR (a progress display) would otherwise look like one
        # endless line: split it at its last CR instead.
        cr = self._pending.rfind(b"\r")
        if cr >= 0:
            head, self._pending = self._pending[: cr + 1], self._pending[cr + 1 :]
            out: list[Record | Tally] = [*self._records(head.split(b"\r")[:-1], self.lines + 1, check=True)]
            self._open = True
            return out + self._check_overlong()
        self._pending = self._pending[: self.max_line]
        self._skipping = True
        return []

    def _emit(self, data: bytes, begin: int, end: int, force: bool = False) -> list[Record | Tally]:
        """Records for ``data[begin:end]``, which ends with a newline. ``force`` walks it line by line."""
        base = self.lines
        out: list[Record | Tally] = []
        if self.selector is None or force:
            self.lines += data.count(b"\n", begin, end)
            self._tally(data, begin, end, self.lines, out)
            start, n = begin, base
            while start < end:
                stop = data.index(b"\n", start)
                n += 1
                out.extend(self._records(data[start:stop].split(b"\r"), n, check=self.selector is not None))
                start = stop + 1
            return out
        # Newlines are counted once, piecewise between hits, so a chunk costs one counting pass.
        newlines, counted_to, line_end, tallied_to = base, begin, -1, begin
        for hit in self.selector.hits(memoryview(data)[begin:end]):
            h = hit + begin
            if h < line_end:
                continue  # another hit on the line just taken: skipped without searching, or a line
                # full of hits would cost a backward search per hit
            start = data.rfind(b"\n", begin, h) + 1 or begin
            line_end = data.find(b"\n", h)
            newlines += data.count(b"\n", counted_to, start)
            counted_to = start
            # The tallied lines up to and including this one come first, so events keep the log's order.
            if self._tallies:
                self._tally(data, tallied_to, line_end + 1, newlines + 1, out)
                tallied_to = line_end + 1
            pieces = data[start:line_end].split(b"\r")
            # A line cut at max_line is kept only if an anchor survives the cut, as when it spans chunks.
            out.extend(self._records(pieces, newlines + 1,
                                     check=len(pieces) > 1 or line_end - start > self.max_line))
        self.lines = newlines + data.count(b"\n", counted_to, end)
        if self._tallies and tallied_to < end:
            self._tally(data, tallied_to, end, self.lines, out)
        return out

    def _tally(self, data: bytes, begin: int, end: int, lineno: int, out: list[Record | Tally]) -> None:
        """A Tally per tallied pattern found in ``data[begin:end]``: one C-level search, no per-line Python."""
        for p, rx in self._tallies:
            found = rx.findall(data, begin, end)
            if found:
                out.append(Tally(p.id, p.event, p.tally_field, tuple(map(int, found)), lineno, self.source))

    def _records(self, pieces: list[bytes], lineno: int, check: bool = False) -> list[Record]:
        """Decoded records for the pieces of one line; ``check`` keeps only pieces with an anchor."""
        out = []
        for whole in pieces:
            if not whole:
                continue
            piece = whole[: self.max_line]
            text = piece.decode("utf-8", "replace")
            if "\x1b" in text:
                text = _ANSI.sub("", text)
            if check and self.selector is not None and not self.selector.hits(piece):
                continue
            out.append(Record(text, lineno, self.source))
        return out
