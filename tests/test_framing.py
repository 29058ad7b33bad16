"""Framing: any split of any byte stream gives the same records; the prefilter never drops a line
that holds an anchor; absurd input is survived."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from watcher.framing import Framer, LineSelector

ANCHORS = ["draft", "speculative", "MiB", "failed to"]
SELECTOR = LineSelector(ANCHORS)
WORDS = [b"draft", b"speculative", b"MiB", b"failed to", b"slot", b"\x1b[31m", b"\xff\xfe", b"\x00", b" ", b"x",
         b"\r", b"\r\n", b"\n", b"caf\xc3\xa9"]


def records(framer: Framer, chunks: list[bytes]) -> list[tuple[int, str]]:
    out = []
    for c in chunks:
        out.extend((r.lineno, r.text) for r in framer.feed(c))
    out.extend((r.lineno, r.text) for r in framer.flush())
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    parts, last = [], 0
    for p in points:
        parts.append(data[last:p])
        last = p
    parts.append(data[last:])
    return parts


streams = st.lists(st.sampled_from(WORDS), max_size=60).map(b"".join)


class TestSplitting:
    @settings(max_examples=300)
    @given(streams, st.lists(st.integers(min_value=0), max_size=12))
    def test_chunking_does_not_change_records(self, data: bytes, cuts: list[int]) -> None:
        """Feeding a stream in one piece or cut anywhere yields identical records."""
        whole = records(Framer(SELECTOR), [data])
        pieces = records(Framer(SELECTOR), split(data, cuts))
        assert whole == pieces

    @settings(max_examples=300)
    @given(streams)
    def test_prefilter_keeps_every_anchor_line(self, data: bytes) -> None:
        """With the prefilter, exactly the lines (CR pieces) holding an anchor come out, same as unfiltered."""
        unfiltered = records(Framer(None), [data])
        expected = [(n, t) for n, t in unfiltered if any(a in t for a in ANCHORS)]
        assert records(Framer(SELECTOR), [data]) == expected

    @given(streams)
    def test_line_numbers_count_newlines(self, data: bytes) -> None:
        """Line numbers are 1-based positions among LF-terminated lines."""
        f = Framer(None)
        recs = records(f, [data])
        lines = data.split(b"\n")
        for n, _ in recs:
            assert 1 <= n <= len(lines)


MANY = [f"anchor{i:03d}" for i in range(150)]


@settings(max_examples=100)
@given(st.lists(st.one_of(st.sampled_from(MANY), st.sampled_from([" ", "x", "\n", "anchor", "\r"])), max_size=80))
def test_more_anchors_than_one_searcher_takes(tokens: list[str]) -> None:
    """Past 16 literals the selector splits them over several searchers and still finds every anchor line."""
    sel = LineSelector(MANY)
    assert sel.passes == 10
    data = "".join(tokens).encode()
    unfiltered = records(Framer(None), [data])
    assert records(Framer(sel), [data]) == [(n, t) for n, t in unfiltered if any(a in t for a in MANY)]


NESTED = ["draft", "draft tokens", "Recurrent draft", "MiB", "MiB free", "failed to allocate",
          "failed to allocate buffer for"]


@settings(max_examples=200)
@given(st.lists(st.sampled_from(["draft", "draft tok", "tokens", "Recurrent", "MiB", "MiB free", "failed to allocate",
                                 " buffer for", "drat", " ", "\n", "\r"]), max_size=60))
def test_anchors_holding_other_anchors_are_not_searched_for(tokens: list[str]) -> None:
    """An anchor containing another is not searched for separately, and every anchor line is still found."""
    sel = LineSelector(NESTED)
    assert sel.literals == [b"MiB", b"draft", b"failed to allocate"]
    data = "".join(tokens).encode()
    unfiltered = records(Framer(None), [data])
    assert records(Framer(sel), [data]) == [(n, t) for n, t in unfiltered if any(a in t for a in NESTED)]


def reference(data: bytes, anchors: list[str], max_line: int) -> list[tuple[int, str]]:
    """What the framer must produce: every CR piece of every line, cut at max_line, kept if an anchor is left."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        for piece in line.split(b"\r"):
            text = piece[:max_line].decode("utf-8", "replace")
            if piece and any(a in text for a in anchors):
                out.append((n, text))
    return out


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"draft", b"MiB", b"x" * 7, b" ", b"\r", b"\n", b"failed to"]), max_size=60)
       .map(b"".join), st.lists(st.integers(min_value=0), max_size=8), st.sampled_from([4, 8, 16]))
def test_capped_lines_do_not_depend_on_chunking(data: bytes, cuts: list[int], max_line: int) -> None:
    """With lines and CR pieces longer than the cap, any chunking gives the reference records and line count."""
    f = Framer(SELECTOR, max_line=max_line)
    assert records(f, split(data, cuts)) == reference(data, ANCHORS, max_line)
    assert f.lines == len(data.split(b"\n")) - (1 if data.endswith(b"\n") or not data else 0)


class TestHostileInput:
    def test_crlf_and_lone_cr(self) -> None:
        """CRLF loses its CR; a lone CR separates records within one line number."""
        got = records(Framer(None), [b"a draft\r\nb\rc draft\n"])
        assert got == [(1, "a draft"), (2, "b"), (2, "c draft")]

    def test_ansi_colours_are_stripped(self) -> None:
        """Coloured llama.cpp output is matched as plain text."""
        got = records(Framer(SELECTOR), [b"\x1b[1;31mE failed to load draft model\x1b[0m\n"])
        assert got == [(1, "E failed to load draft model")]

    def test_invalid_utf8_and_nul(self) -> None:
        """Invalid bytes decode to U+FFFD instead of raising."""
        got = records(Framer(SELECTOR), [b"\xff\x00 draft \xc3\n"])
        assert got == [(1, "\ufffd\x00 draft \ufffd")]

    def test_overlong_line_is_capped_and_later_lines_survive(self) -> None:
        """A line longer than the cap is cut, and the line after it is still found."""
        f = Framer(SELECTOR, max_line=1024)
        chunks = [b"draft " + b"x" * 5000, b"y" * 100_000, b"\nfailed to load\n"]
        got = records(f, chunks)
        assert got[0][0] == 1 and got[0][1].startswith("draft ") and len(got[0][1]) <= 1024
        assert got[-1] == (2, "failed to load")

    def test_cr_only_stream_is_split_at_cr(self) -> None:
        """A progress display that never writes LF is still cut into records."""
        f = Framer(SELECTOR, max_line=64)
        got = records(f, [b"progress 10%\r" * 20 + b"draft failed to load\r" + b"progress\r" * 20])
        assert any("draft failed to load" in t for _, t in got)


# --- tallied lines (one per finished task): counted in bulk, never records -------------------------------------

def _tallied_catalogue():  # type: ignore[no-untyped-def]
    from watcher import catalogue

    return catalogue.load()


RELEASE = "slot      release: id  {s} | task {t} | stop processing: n_tokens = {n}, truncated = 0\n"
OTHER = ["E failed to load draft model\n", "srv  update_slots: all slots are idle\n"]


@settings(max_examples=200)
@given(st.lists(st.one_of(st.integers(min_value=0, max_value=99999), st.sampled_from(OTHER)), max_size=40),
       st.lists(st.integers(min_value=0), max_size=6))
def test_tallies_do_not_depend_on_chunking_and_keep_the_log_order(items: list, cuts: list[int]) -> None:  # type: ignore[type-arg]
    """Every release line's size is tallied once, in order, however the bytes are cut; a tally comes before the
    record printed after it, and the tallied lines are never records."""
    from watcher.events import Record, Tally

    cat = _tallied_catalogue()
    lines = [RELEASE.format(s=i % 4, t=i, n=x) if isinstance(x, int) else x for i, x in enumerate(items)]
    data = "".join(lines).encode()
    f = Framer(LineSelector(cat.anchors), tallies=cat.tallies)
    out: list[Record | Tally] = []
    for piece in split(data, cuts):
        out.extend(f.feed(piece))
    out.extend(f.flush())
    order: list[object] = []
    for item in out:
        if isinstance(item, Tally):
            order.extend(item.values)
        else:
            assert "stop processing" not in item.text
            order.append(item.text)
    expected = [x if isinstance(x, int) else x.rstrip("\n") for x in items
                if isinstance(x, int) or any(a in x for a in cat.anchors)]
    assert order == expected


def test_a_tallied_line_is_still_matched_line_by_line_where_every_line_is_a_record() -> None:
    """Without a selector (``patterns test``) nothing is tallied: the release line is a record like any other."""
    cat = _tallied_catalogue()
    f = Framer(None, tallies=cat.tallies)
    got = f.feed(RELEASE.format(s=0, t=1, n=31).encode())
    assert [type(r).__name__ for r in got] == ["Record"]
