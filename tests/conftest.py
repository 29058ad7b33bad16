"""Shared fixtures: the catalogue, an in-memory CLI runner, the sample tree."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from watcher import catalogue
from watcher.cli import run
from watcher.environment import Environment

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SEED = SAMPLES / "seed" / "lmstudio-280-draft-kv-oom.log"


@pytest.fixture(scope="session")
def cat() -> catalogue.Catalogue:
    """The shipped catalogue, loaded once."""
    return catalogue.load()


@dataclass
class Result:
    """What a CLI run produced."""

    status: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def cli(*argv: str, stdin: bytes = b"", environ: dict[str, str] | None = None, tty: bool = False) -> Result:
    """Run ``specwatch`` in-process with an injected environment (httpie's MockEnvironment idea)."""
    out, err = io.BytesIO(), io.StringIO()
    env = Environment(stdin=io.BytesIO(stdin), stdout=out, stderr=err, environ=environ or {"NO_COLOR": "1"},
                      stdin_isatty=tty, stderr_isatty=False)
    status = run(list(argv), env)
    return Result(int(status), out.getvalue(), err.getvalue())
