"""Shared fixtures: the catalogue, an in-memory CLI runner, the sample tree."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from watcher import catalogue
from watcher.cli import run
from watcher.environment import Environment

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
SEED = SAMPLES / "seed" / "lmstudio-280-draft-kv-oom.log"


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test touches the user's real state directory or config."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SPECWATCH_STATE_DIR", str(state))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(state / "config"))
    # Environments built with their own ``environ`` (no SPECWATCH_STATE_DIR) fall back to the XDG state dir.
    monkeypatch.setenv("XDG_STATE_HOME", str(state / "xdg-state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(state / "cache"))
    monkeypatch.delenv("SPECWATCH_NOTIFY", raising=False)
    monkeypatch.delenv("SPECWATCH_CONFIG", raising=False)


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


def cli(*argv: str, stdin: bytes = b"", environ: dict[str, str] | None = None, tty: bool = False,
        stdout_tty: bool = False, stderr_tty: bool = False) -> Result:
    """Run ``specwatch`` in-process with an injected environment (httpie's MockEnvironment idea).

    ``tty``: stdin is a terminal; ``stdout_tty``/``stderr_tty``: that stream is one (colour needs
    ``environ={"NO_COLOR": ""}`` too).
    """
    out, err = io.BytesIO(), io.StringIO()
    import os

    base = {"NO_COLOR": "1", "SPECWATCH_STATE_DIR": os.environ.get("SPECWATCH_STATE_DIR", "")}
    env = Environment(stdin=io.BytesIO(stdin), stdout=out, stderr=err, environ={**base, **(environ or {})},
                      stdin_isatty=tty, stderr_isatty=stderr_tty, stdout_isatty=stdout_tty)
    status = run(list(argv), env)
    return Result(int(status), out.getvalue(), err.getvalue())


def wait_for(cond: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
    """Poll ``cond`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")
