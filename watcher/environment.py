"""The process environment, injected so that every command can be tested without touching ``sys``."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO


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
    clock: Callable[[], float] = time.time

    @classmethod
    def from_process(cls) -> Environment:
        """The real environment of this process."""
        return cls(
            stdin=sys.stdin.buffer,
            stdout=sys.stdout.buffer,
            stderr=sys.stderr,
            environ=os.environ,
            stdin_isatty=sys.stdin.isatty(),
            stderr_isatty=sys.stderr.isatty(),
        )

    @property
    def colour(self) -> bool:
        """Colour only for a human at a terminal, and never when NO_COLOR is set (no-color.org)."""
        if self.environ.get("NO_COLOR"):
            return False
        if self.environ.get("FORCE_COLOR"):
            return True
        return self.stderr_isatty and self.environ.get("TERM") != "dumb"
