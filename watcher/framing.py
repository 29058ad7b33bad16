"""Bytes to records: line splitting, a literal prefilter, tolerant decoding, ANSI stripping, caps.

The prefilter is what keeps specwatch close to free. It searches each chunk for the catalogue's
anchor literals with few whole-chunk scans: one stdlib ``re`` pass per chosen common first byte
(CPython runs a literal-prefix pattern at about 2 GB/s, but crawls through an alternation whose
branches start with different bytes, about 0.3 GB/s) and a memchr walk per rare first byte. Only the
lines around a hit are decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from watcher.events import Record

#: What is analysed of one line; longer lines are cut (the bytes still pass through untouched).
MAX_LINE = 16 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


#: How often each byte occurs in llama.cpp server logs, per mille (measured on the verbose engine logs,
#: public reports and the benchmark log). It steers which bytes the prefilter scans for: a scan for a rare
#: byte is a memchr (about 30 GB/s here), one for a common byte a regex pass (about 2 GB/s).
BYTE_FREQ: dict[str, float] = {
    "s": 82.2, "t": 69.7, "e": 52.4, "o": 52.2, "l": 43.8, "a": 42.9, "r": 39.3, "n": 28.8, "_": 26.3, "p": 26.0,
    "i": 25.0, "0": 24.5, "d": 22.4, ":": 19.2, "c": 16.6, "1": 15.5, "u": 15.4, "k": 15.3, "m": 14.5, "|": 13.9,
    "2": 12.9, "g": 10.7, ",": 10.5, "v": 9.6, "=": 9.5, "5": 8.8, "7": 8.8, "3": 8.4, ".": 8.0, "9": 7.7,
    "8": 7.6, "4": 6.6, "6": 6.6, "h": 6.0, "q": 5.9, "y": 5.9, "f": 3.8, "/": 3.7, "w": 3.6, ")": 3.5, "-": 2.5,
    "C": 2.4, "b": 2.4, "[": 2.3, "(": 1.2, ">": 1.2, "O": 1.2, "P": 1.2, "S": 1.2, "T": 1.2, " ": 150.0,
}
_RARE = 0.5  # per mille: below this a byte is scanned with memchr


def _cost(byte: int) -> float:
    freq = BYTE_FREQ.get(chr(byte), 0.0)
    return 0.1 if freq < _RARE else 1.0 + 0.05 * freq


def plan_probes(anchors: Iterable[str], min_len: int = 3) -> dict[int, list[bytes]]:
    """Choose, for every anchor, a probe literal inside it so that few and cheap first bytes are scanned.

    A greedy weighted set cover over first bytes: an anchor can be found from its own first byte (the probe is
    the whole anchor), from a rare byte inside it, or from a common byte that leaves at least 7 bytes (the probe
    runs from there to the anchor's end, long enough to stay selective). Each round takes the byte that finds
    the most remaining anchors per unit of scan cost. Any line holding an anchor holds its probe, so nothing
    relevant is lost.
    """
    todo = {a.encode() for a in anchors if len(a.encode()) >= min_len}

    def starts(a: bytes, b: int) -> int | None:
        if a[0] == b:
            return 0
        # Inside an anchor, a common byte only starts a probe long enough to stay selective.
        need = min_len if _cost(b) < 1 else 7
        return next((i for i in range(len(a) - need + 1) if a[i] == b), None)

    plan: dict[int, list[bytes]] = {}
    while todo:
        best, best_score, best_cover = -1, -1.0, set()
        for b in range(256):
            cover = {a for a in todo if starts(a, b) is not None}
            if cover and len(cover) / _cost(b) > best_score:
                best, best_score, best_cover = b, len(cover) / _cost(b), cover
        for a in best_cover:
            i = starts(a, best)
            assert i is not None
            plan.setdefault(best, []).append(a[i:])
        todo -= best_cover
    return plan


class LineSelector:
    """Finds the lines of a chunk that contain at least one anchor literal."""

    def __init__(self, anchors: Iterable[str]) -> None:
        self.plan = plan_probes(anchors)
        self._rare: list[tuple[bytes, tuple[bytes, ...]]] = []
        self._passes: list[re.Pattern[bytes]] = []
        for first, probes in sorted(self.plan.items()):
            uniq = sorted(set(probes), key=lambda t: (-len(t), t))
            if _cost(first) < 1:
                self._rare.append((bytes([first]), tuple(uniq)))
            else:
                alt = b"|".join(re.escape(t[1:]) for t in uniq)
                self._passes.append(re.compile(re.escape(bytes([first])) + b"(?:" + alt + b")"))

    @property
    def passes(self) -> int:
        """How many scans of each chunk the prefilter costs (memchr scans included)."""
        return len(self._passes) + len(self._rare)

    def hits(self, data: bytes) -> list[int]:
        """Start offsets of every probe occurrence, unsorted."""
        out: list[int] = []
        for rx in self._passes:
            out.extend(m.start() for m in rx.finditer(data))
        for byte, probes in self._rare:
            pos = data.find(byte)
            while pos >= 0:
                if data.startswith(probes, pos):
                    out.append(pos)
                pos = data.find(byte, pos + 1)
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
