"""The process environment, injected so that every command can be tested without touching ``sys``."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TextIO, cast


class QuietText(io.TextIOBase):
    """specwatch's own stderr: a write that fails (closed, broken pipe) is dropped, never raised.

    Alerts and summaries are extras beside the server's output; ``specwatch 2>&1 | head`` or a closed
    stderr must not turn them into a crash or a non-zero exit.
    """

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self.inner = inner
        self.broken = False

    def write(self, s: str) -> int:
        """Write and flush ``s``; after the first failure, drop everything."""
        if not self.broken:
            try:
                self.inner.write(s)
                self.inner.flush()
            except (OSError, ValueError):
                self.broken = True
        return len(s)

    def flush(self) -> None:
        """Already flushed by every write."""

    def isatty(self) -> bool:
        """Whether the real stream is a terminal."""
        try:
            return not self.broken and self.inner.isatty()
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        """The real stream's descriptor (for a child process to inherit)."""
        return self.inner.fileno()

    @property
    def buffer(self) -> BinaryIO:
        """The real stream's bytes, for a supervised server's stderr to pass through undecoded."""
        inner = getattr(self.inner, "buffer", None)
        if inner is None:
            raise AttributeError("buffer")
        return cast(BinaryIO, inner)


def _devnull(mode: str) -> TextIO:
    # A stream the shell closed (``>&-``): Python gives None; use /dev/null so nothing else lands on that fd.
    return cast(TextIO, Path(os.devnull).open(mode))


@dataclass
class Environment:
    """Streams, variables and clock a command may use.

    ``stdin``/``stdout`` are binary because pipe mode must pass bytes through untouched;
    ``stderr`` is text because only specwatch itself writes there.
    """

    stdin: BinaryIO
    stdout: BinaryIO
    stderr: TextIO
    environ: Mapping[str, str] = field(default_factory=dict)
    stdin_isatty: bool = False
    stderr_isatty: bool = False
    stdout_isatty: bool = False
    clock: Callable[[], float] = time.time

    @classmethod
    def from_process(cls) -> Environment:
        """The real environment of this process."""
        stdin = sys.stdin.buffer if sys.stdin is not None else cast(BinaryIO, _devnull("rb"))
        stdout = sys.stdout.buffer if sys.stdout is not None else cast(BinaryIO, _devnull("wb"))
        stderr = QuietText(sys.stderr if sys.stderr is not None else _devnull("w"))
        return cls(
            stdin=stdin,
            stdout=stdout,
            stderr=cast(TextIO, stderr),
            environ=os.environ,
            stdin_isatty=stdin.isatty(),
            stderr_isatty=stderr.isatty(),
            stdout_isatty=stdout.isatty(),
        )

    @property
    def colour(self) -> bool:
        """Whether to colour what goes to stderr (banners, summaries)."""
        return self._colour(self.stderr_isatty)

    @property
    def stdout_colour(self) -> bool:
        """Whether to colour what goes to stdout (``scan``'s report): ``> report.txt`` gets plain text."""
        return self._colour(self.stdout_isatty)

    def _colour(self, isatty: bool) -> bool:
        """Colour only for a human at a terminal, and never when NO_COLOR is set (no-color.org)."""
        if self.environ.get("NO_COLOR"):
            return False
        if self.environ.get("FORCE_COLOR"):
            return True
        return isatty and self.environ.get("TERM") != "dumb"
