"""Bytes to records: line splitting, a literal prefilter, tolerant decoding, ANSI stripping, caps.

The prefilter is what keeps specwatch close to free. It searches each chunk for the catalogue's
anchor literals with one stdlib ``re`` pass per distinct first byte: CPython's regex engine runs a
literal-prefix pattern at memchr-like speed (about 2.5 GB/s here) but crawls through an alternation
whose branches start with different bytes (about 0.3 GB/s). Only the lines around a hit are decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from watcher.events import Record

#: What is analysed of one line; longer lines are cut (the bytes still pass through untouched).
MAX_LINE = 16 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


class LineSelector:
    """Finds the lines of a chunk that contain at least one anchor literal."""

    def __init__(self, anchors: Iterable[str]) -> None:
        groups: dict[int, set[bytes]] = {}
        for a in anchors:
            b = a.encode()
            groups.setdefault(b[0], set()).add(b)
        self._passes: list[re.Pattern[bytes]] = []
        for first, words in sorted(groups.items()):
            tails = sorted((w[1:] for w in words), key=lambda t: (-len(t), t))
            alt = b"|".join(re.escape(t) for t in tails)
            self._passes.append(re.compile(re.escape(bytes([first])) + b"(?:" + alt + b")"))

    @property
    def passes(self) -> int:
        """How many scans of each chunk the prefilter costs."""
        return len(self._passes)

    def hits(self, data: bytes) -> list[int]:
        """Start offsets of every anchor occurrence, unsorted."""
        out: list[int] = []
        for rx in self._passes:
            out.extend(m.start() for m in rx.finditer(data))
        return out


class Framer:
    """Turns a byte stream, fed in chunks of any size, into records.

    With a selector only the lines holding an anchor become records; without one every line does.
    Lines end at LF (CRLF's CR is dropped); a lone CR also separates records inside a line, so
    progress bars redrawn with CR do not glue messages together.
    """

    def __init__(self, selector: LineSelector | None = None, source: str = "-", max_line: int = MAX_LINE) -> None:
        self.selector = selector
        self.source = source
        self.max_line = max_line
        self.lines = 0  # complete lines consumed so far
        self._pending = b""
        self._skipping = False  # inside an over-long line, discarding until its end
        self.truncated_lines = 0

    def feed(self, chunk: bytes) -> list[Record]:
        """Records for every line completed by ``chunk``; a partial last line waits for its end."""
        if not chunk:
            return []
        if self._skipping:
            nl = chunk.find(b"\n")
            if nl < 0:
                return []
            self._skipping = False
            out = self._emit(self._pending + b"\n", force=True)
            self._pending = b""
            chunk = chunk[nl + 1 :]
            return out + self.feed(chunk)
        data = self._pending + chunk if self._pending else chunk
        last = data.rfind(b"\n")
        if last < 0:
            self._pending = data
            return self._check_overlong()
        self._pending = data[last + 1 :]
        out = self._emit(data[: last + 1])
        return out + self._check_overlong()

    def flush(self) -> list[Record]:
        """End of stream: the last line even without its newline."""
        if not self._pending:
            return []
        data, self._pending, self._skipping = self._pending + b"\n", b"", False
        return self._emit(data, force=True)

    def _check_overlong(self) -> list[Record]:
        if len(self._pending) <= self.max_line:
            return []
        # A stream that only ever uses CR (a progress display) would otherwise look like one
        # endless line: split it at its last CR instead.
        cr = self._pending.rfind(b"\r", 0, len(self._pending))
        if cr >= 0:
            head, self._pending = self._pending[: cr + 1], self._pending[cr + 1 :]
            out = self._records(head.split(b"\r")[:-1], self.lines + 1, check=True)
            return out + self._check_overlong()
        self._pending = self._pending[: self.max_line]
        self._skipping = True
        self.truncated_lines += 1
        return []

    def _emit(self, data: bytes, force: bool = False) -> list[Record]:
        """Records for ``data``, which ends with a newline. ``force`` walks it line by line."""
        base = self.lines
        self.lines += data.count(b"\n")
        if self.selector is None or force:
            out: list[Record] = []
            start, n = 0, base
            while start < len(data):
                end = data.index(b"\n", start)
                n += 1
                out.extend(self._records(data[start:end].split(b"\r"), n, check=self.selector is not None))
                start = end + 1
            return out
        hits = self.selector.hits(data)
        if not hits:
            return []
        hits.sort()
        out = []
        newlines, counted_to, last_start = base, 0, -1
        for h in hits:
            start = data.rfind(b"\n", 0, h) + 1
            if start == last_start:
                continue
            last_start = start
            newlines += data.count(b"\n", counted_to, start)
            counted_to = start
            pieces = data[start : data.find(b"\n", h)].split(b"\r")
            out.extend(self._records(pieces, newlines + 1, check=len(pieces) > 1))
        return out

    def _records(self, pieces: list[bytes], lineno: int, check: bool = False) -> list[Record]:
        """Decoded records for the pieces of one line; ``check`` keeps only pieces with an anchor."""
        out = []
        for piece in pieces:
            if not piece:
                continue
            if len(piece) > self.max_line:
                piece = piece[: self.max_line]
            text = piece.decode("utf-8", "replace")
            if "\x1b" in text:
                text = _ANSI.sub("", text)
            if check and self.selector is not None and not self.selector.hits(piece):
                continue
            out.append(Record(text, lineno, self.source))
        return out
