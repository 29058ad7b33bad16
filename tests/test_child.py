"""The supervisor: real child processes replaying real llama.cpp logs, signals, exit statuses."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher.cli import build_parser
from watcher.cli import run as cli_run
from watcher.commands import run as run_cmd
from watcher.environment import Environment
from watcher.sources.child import LineGate, shell_status, spec_args

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "samples" / "engine"

# Replays a log to stderr line by line with small delays (as a server writes it), one line to stdout,
# then optionally lingers (a server that keeps serving), optionally ignoring SIGTERM.
REPLAY = r'''
import signal, sys, time
log, status, linger, stubborn = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
if stubborn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
def on_sig(signum, frame):
    sys.stdout.write(f"child got {signum}\n"); sys.stdout.flush(); sys.exit(0)
if not stubborn:
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_sig)
with open(log, "rb") as fh:
    for line in fh:
        sys.stderr.buffer.write(line); sys.stderr.flush(); time.sleep(0.001)
sys.stdout.write("ready\n"); sys.stdout.flush()
time.sleep(linger)
sys.exit(status)
'''


@pytest.fixture()
def replay(tmp_path: Path) -> Path:
    p = tmp_path / "replay.py"
    p.write_text(REPLAY)
    return p


class _Bytes(io.BytesIO):
    def fileno(self) -> int:  # force the non-fd path of Passthrough
        raise OSError("no fd")


def _config(tmp_path: Path) -> str:
    p = tmp_path / "config.toml"
    p.write_text("[analysis]\nsettle = 0.2\n")
    return str(p)


def _env(tmp_path: Path) -> tuple[Environment, _Bytes, io.StringIO]:
    out, err = _Bytes(), io.StringIO()
    env = Environment(stdin=io.BytesIO(), stdout=out, stderr=err,
                      environ={"SPECWATCH_CONFIG": _config(tmp_path)})
    return env, out, err


def _run(env: Environment, *argv: str) -> int:
    args = build_parser().parse_args(["run", *argv])
    return run_cmd.run(args, env)


def test_passes_both_streams_and_returns_child_status(tmp_path: Path, replay: Path) -> None:
    """stdout and stderr reach their own streams unchanged, and the child's exit status is returned."""
    env, out, err = _env(tmp_path)
    log = ENGINE / "spec-working-default.log"
    rc = _run(env, "--no-summary", "--", sys.executable, str(replay), str(log), "7", "0", "0",
              "-md", "draft.gguf", "--spec-type", "draft-simple")
    assert rc == 7
    assert out.getvalue() == b"ready\n"
    assert err.getvalue().startswith(log.read_text())
    assert "SPECWATCH" not in err.getvalue()


def test_draft_flag_without_stats_is_a_finding(tmp_path: Path, replay: Path) -> None:
    """-md given, no draft statistics after a task: spec_disabled (inferred), kept running."""
    env, _, err = _env(tmp_path)
    log = ENGINE / "draft-without-spec-type-default.log"
    rc = _run(env, "--", sys.executable, str(replay), str(log), "0", "0", "0", "-md", "draft-same.gguf")
    assert rc == 0
    text = err.getvalue()
    assert "spec_disabled (critical, inferred)" in text
    assert "add --spec-type draft-simple" in text


def test_exit_policy_stops_child_with_sigterm(tmp_path: Path, replay: Path) -> None:
    """--on-spec-failure=exit stops a still-serving child and exits 3 with a one-line reason."""
    env, out, err = _env(tmp_path)
    log = ENGINE / "draft-vocab-type-mismatch-default.log"
    rc = _run(env, "--on-spec-failure=exit", "--grace", "5", "--", sys.executable, str(replay), str(log),
              "0", "60", "0")
    assert rc == 3
    assert b"child got 15" in out.getvalue()
    last = err.getvalue().rstrip("\n").splitlines()[-1]
    assert last.startswith("specwatch: stopped ") and "draft_incompatible" in last


def test_exit_policy_kills_after_grace(tmp_path: Path, replay: Path) -> None:
    """A child that ignores SIGTERM is SIGKILLed after the grace period; specwatch still exits 3."""
    env, _, err = _env(tmp_path)
    log = ENGINE / "draft-vocab-type-mismatch-default.log"
    t0 = time.monotonic()
    rc = _run(env, "--on-spec-failure=exit", "--grace", "0.3", "--no-summary", "--", sys.executable,
              str(replay), str(log), "0", "60", "1")
    assert rc == 3
    assert time.monotonic() - t0 < 30  # bounded: the 60 s linger did not run out
    assert "specwatch: stopped" in err.getvalue()


def test_child_exit_wins_over_policy_when_server_exits_itself(tmp_path: Path, replay: Path) -> None:
    """A server that exits on its own (draft missing, exit 1) keeps its own status."""
    env, _, err = _env(tmp_path)
    rc = _run(env, "--on-spec-failure=exit", "--", sys.executable, str(replay),
              str(ENGINE / "draft-missing-default.log"), "1", "0", "0", "-md", "/nonexistent.gguf")
    assert rc == 1
    assert "draft_load_failed" in err.getvalue()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded(tmp_path: Path, replay: Path, sig: signal.Signals) -> None:
    """SIGINT/SIGTERM/SIGHUP sent to specwatch reach the child once; specwatch exits with its status."""
    env = dict(os.environ, SPECWATCH_CONFIG=_config(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "run", "--no-summary", "--", sys.executable,
                             str(replay), str(ENGINE / "no-draft-default.log"), "0", "60", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=30)
    assert rest == f"child got {int(sig)}\n".encode()
    assert proc.returncode == 0


def test_shell_status_for_signals() -> None:
    """A child killed by a signal maps to 128+N like a shell."""
    assert shell_status(-9) == 137 and shell_status(0) == 0 and shell_status(42) == 42


def test_missing_command_is_usage_error(tmp_path: Path) -> None:
    """`run` without a command is a usage error (exit 2)."""
    env, _, err = _env(tmp_path)
    assert cli_run(["run"], env) == 2
    assert "give the command" in err.getvalue()


@pytest.mark.parametrize(("argv", "draft", "types", "requested"), [
    (["llama-server", "-m", "a.gguf", "-md", "d.gguf"], "d.gguf", [], True),
    (["llama-server", "--model-draft=d.gguf", "--spec-type", "draft-simple"], "d.gguf", ["draft-simple"],
     True),
    (["llama-server", "--spec-draft-model", "d.gguf"], "d.gguf", [], True),
    (["llama-server", "-hfd", "org/repo"], "org/repo", [], True),
    (["llama-server", "--spec-type", "ngram-mod,ngram-simple"], None, ["ngram-mod", "ngram-simple"], True),
    (["llama-server", "--spec-type", "none"], None, ["none"], False),
    (["llama-server", "-m", "a.gguf", "-c", "4096"], None, [], False),
])
def test_spec_args_across_eras(argv: list[str], draft: str | None, types: list[str], requested: bool) -> None:
    """Speculation flags of every era are recognised, in both --flag value and --flag=value forms."""
    s = spec_args(argv)
    assert (s.draft, s.types, s.requested) == (draft, types, requested)


def test_spec_default_is_ngram() -> None:
    """--spec-default asks for speculation without a draft model (no draft stats required per task)."""
    s = spec_args(["llama-server", "--spec-default", "-m", "a.gguf"])
    assert s.requested and s.default and not s.needs_draft_stats


@given(st.lists(st.binary(max_size=50), max_size=30))
def test_line_gate_passes_whole_lines_only(chunks: list[bytes]) -> None:
    """Whatever the chunking, the analysis sees the same bytes, each piece ending at a newline."""
    seen: list[bytes] = []
    gate = LineGate(seen.append)
    for c in chunks:
        gate.feed(c)
    gate.close()
    joined = b"".join(chunks)
    assert all(p.endswith(b"\n") for p in seen)
    assert b"".join(seen) in (joined, joined + b"\n")


def test_summary_starts_a_new_line_after_an_unfinished_last_line(tmp_path: Path) -> None:
    """A child whose output ends mid-line: the exit summary starts on a line of its own."""
    env, out, err = _env(tmp_path)
    assert _run(env, "--", sys.executable, "-c", "import sys; sys.stdout.write('no newline')") == 0
    assert out.getvalue() == b"no newline"
    assert err.getvalue() == "\nspecwatch: no open incidents\n"


def test_child_stderr_bytes_pass_through_undecoded(tmp_path: Path) -> None:
    """A UTF-8 character split across two writes and invalid bytes reach specwatch's stderr byte for byte."""
    child = "printf 'x\\342\\202' >&2; sleep 0.3; printf '\\254y \\377\\n' >&2"
    r = subprocess.run([sys.executable, "-m", "watcher", "run", "--no-summary", "--", "sh", "-c", child],
                       env={**os.environ, "SPECWATCH_STATE_DIR": str(tmp_path)}, capture_output=True, timeout=60,
                       check=False)
    assert r.returncode == 0
    assert r.stderr == b"x\xe2\x82\xacy \xff\n"


class _SlowReader(_Bytes):
    """specwatch's stdout read by something slow (a paused pager, a congested log shipper): the first write
    blocks for longer than the old drain limit of 5 s."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
        self.calls += 1
        if self.calls == 1:
            time.sleep(5.5)
        return super().write(data)


def test_output_left_in_the_pipe_at_exit_is_passed_through_and_analysed(tmp_path: Path) -> None:
    """A child that exits while a slow reader still holds back its output: every byte still reaches stdout, in
    order, and the draft failure in its last lines is analysed, however long the reader takes."""
    log = (ENGINE / "draft-missing-default.log").read_bytes()
    padding = b"".join(b"srv  log_server_r: request: GET /health 127.0.0.1 200 %5d\n" % i for i in range(600))
    child = ("import sys, time; o = sys.stdout.buffer; o.write(b'first\\n'); o.flush(); time.sleep(0.2); "
             f"o.write({padding + log!r}); o.flush()")
    slow, err = _SlowReader(), io.StringIO()
    env = Environment(stdin=io.BytesIO(), stdout=slow, stderr=err, environ={"SPECWATCH_CONFIG": _config(tmp_path)})
    assert len(padding + log) < 60_000  # it all fits in the pipe: the child exits without waiting for the reader
    assert _run(env, "--", sys.executable, "-c", child) == 0
    assert slow.getvalue() == b"first\n" + padding + log
    assert "draft_load_failed" in err.getvalue()


def test_a_descendant_holding_the_pipes_open_is_not_waited_for(tmp_path: Path) -> None:
    """A background process that inherited the child's pipes and stays silent does not keep `run` alive after
    the child exits; what it wrote before the exit is passed through."""
    marker = tmp_path / "pid"
    child = (f"sh -c 'echo from-descendant; echo $$ > {marker}; exec sleep 60' & "
             f"until [ -s {marker} ]; do sleep 0.01; done; echo done")
    try:
        r = subprocess.run([sys.executable, "-m", "watcher", "run", "--no-summary", "--", "sh", "-c", child],
                           env={**os.environ, "SPECWATCH_STATE_DIR": str(tmp_path)}, capture_output=True,
                           timeout=30, check=False)
    finally:
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGTERM)
    assert r.returncode == 0
    assert r.stdout == b"from-descendant\ndone\n"
