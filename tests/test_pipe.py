"""Pipe mode: every byte passes through unchanged whatever it is, alerts go to stderr, and a vanished
reader downstream never turns into SIGPIPE for the server upstream."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, SEED, cli
from watcher import pipe
from watcher.pipe import SideAnalysis

SPECWATCH = [sys.executable, "-m", "watcher"]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}


@pytest.fixture(autouse=True)
def _child_state(_isolated_state: None) -> None:
    """The specwatch processes these tests start get the test's own state and config dirs, never the user's."""
    for key in ("SPECWATCH_STATE_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        ENV[key] = os.environ[key]
    for key in ("SPECWATCH_NOTIFY", "SPECWATCH_CONFIG"):
        ENV.pop(key, None)


class TestPassthrough:
    @settings(max_examples=100, deadline=None)
    @given(st.binary(max_size=4096))
    def test_any_bytes_pass_through_unchanged(self, data: bytes) -> None:
        """stdout is byte-identical to stdin for arbitrary input."""
        r = cli(stdin=data)
        assert r.status == 0
        assert r.stdout == data

    def test_seed_log_passes_through_and_alerts_on_stderr(self) -> None:
        """The seed log comes out unchanged on stdout; the banner and summary are on stderr only."""
        data = SEED.read_bytes()
        p = subprocess.run(SPECWATCH, input=data, capture_output=True, env=ENV, timeout=60, check=False)
        assert p.returncode == 0
        assert p.stdout == data
        err = p.stderr.decode()
        assert "SPECWATCH CRITICAL: Speculative decoding OFF: draft Qwen3-30B-A3B-Instruct-2507-Q3_K_L.gguf out of " \
               "memory on CUDA1 (7168 MiB), slots 0-3" in err
        assert "open incident(s) at exit" in err
        assert b"SPECWATCH" not in p.stdout

    def test_exit_status_flag(self) -> None:
        """--exit-status makes open incidents at EOF exit 1; without it the pipe exits 0."""
        r = cli("--exit-status", stdin=SEED.read_bytes())
        assert r.status == 1

    def test_hundred_megabyte_line_without_newline(self) -> None:
        """A 100 MB line with no newline passes through whole; specwatch neither crashes nor balloons."""
        size = 100 * 1024 * 1024
        p = subprocess.Popen([*SPECWATCH, "--no-summary"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ENV)
        block = b"draft " + b"x" * (1024 * 1024 - 6)

        def feed() -> None:
            assert p.stdin is not None
            for _ in range(size // len(block)):
                p.stdin.write(block)
            p.stdin.close()

        import threading

        t = threading.Thread(target=feed)
        t.start()
        assert p.stdout is not None
        received = 0
        while chunk := p.stdout.read(1 << 20):
            received += len(chunk)
        t.join()
        assert p.wait(timeout=60) == 0
        assert received == size


class TestDownstreamGoesAway:
    def test_upstream_keeps_writing_after_reader_exits(self) -> None:
        """After `| head` exits, specwatch keeps reading (no SIGPIPE upstream) and still alerts."""
        p = subprocess.Popen(SPECWATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=ENV)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(b"first line\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"first line\n"
        p.stdout.close()  # the downstream reader is gone
        # The writer (the "server") must be able to keep writing: a broken specwatch would exit and make
        # these writes fail with EPIPE.
        for _ in range(200):
            p.stdin.write(b"filler line of a busy server\n" * 100)
        p.stdin.write(SEED.read_bytes())
        p.stdin.close()
        assert p.wait(timeout=60) == 0
        assert p.stderr is not None
        assert b"draft_context_failed" in p.stderr.read()

    def test_sigpipe_is_not_raised_by_a_closed_stdout(self) -> None:
        """specwatch does not die of SIGPIPE when its stdout closes."""
        p = subprocess.Popen(SPECWATCH, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             env=ENV)
        assert p.stdin is not None and p.stdout is not None
        p.stdout.close()
        for _ in range(50):
            p.stdin.write(b"x" * 65536)
        p.stdin.close()
        assert p.wait(timeout=30) != -signal.SIGPIPE


class TestLiveLatency:
    def test_a_line_comes_out_before_the_next_one_is_written(self) -> None:
        """Passthrough is line by line: no buffering waits for more input."""
        p = subprocess.Popen([*SPECWATCH, "--no-summary"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=ENV)
        assert p.stdin is not None and p.stdout is not None
        for i in range(5):
            line = f"line {i}\n".encode()
            p.stdin.write(line)
            p.stdin.flush()
            assert p.stdout.readline() == line
        p.stdin.close()
        assert p.wait(timeout=30) == 0

    def test_banner_appears_while_the_server_is_still_running(self) -> None:
        """The alert is printed once the failure burst settles, without waiting for EOF."""
        p = subprocess.Popen(SPECWATCH, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             env=ENV)
        assert p.stdin is not None and p.stderr is not None
        p.stdin.write(SEED.read_bytes())
        p.stdin.flush()
        os.set_blocking(p.stderr.fileno(), False)
        seen = b""
        deadline = time.monotonic() + 20
        while b"SPECWATCH CRITICAL" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
            seen += p.stderr.read() or b""
        assert b"SPECWATCH CRITICAL" in seen
        p.stdin.close()
        p.wait(timeout=30)


def test_bad_config_still_passes_everything_through(tmp_path) -> None:
    """A broken config file is reported on stderr, and the server's output flows on regardless."""
    conf = tmp_path / "c.toml"
    conf.write_text("[analysis]\nlow_acceptance = 7\n")
    r = cli("--config", str(conf), stdin=b"hello\n")
    assert r.stdout == b"hello\n"
    assert r.status == 2
    assert "low_acceptance" in r.stderr and ":2:" in r.stderr


class _SlowAnalyzer:
    """Stands in for an Analyzer that is slower than the copy (the real one is too fast to fall behind here)."""

    def __init__(self) -> None:
        self.fed: list[bytes] = []
        self.finished = False

    def feed(self, chunk: bytes) -> None:
        time.sleep(0.01)
        self.fed.append(chunk)

    def finish(self) -> None:
        self.finished = True


class TestBacklog:
    said: list[str]

    def _run(self, monkeypatch, wait: bool) -> tuple[SideAnalysis, _SlowAnalyzer, bytes]:
        monkeypatch.setattr(pipe, "MAX_BACKLOG", 4096)
        analyzer = _SlowAnalyzer()
        self.said = []
        side = SideAnalysis(analyzer, lambda: None, self.said.append)  # type: ignore[arg-type]
        chunks = [bytes([65 + i % 26]) * 1024 + b"\n" for i in range(40)]
        for c in chunks:
            side.put(c, wait)
        side.close(timeout=30)
        return side, analyzer, b"".join(chunks)

    def test_regular_file_input_waits_instead_of_skipping(self, monkeypatch) -> None:
        """With nobody upstream to stall, a slow analysis still sees every byte, in order."""
        side, analyzer, data = self._run(monkeypatch, wait=True)
        assert side.skipped == 0
        assert b"".join(analyzer.fed) == data
        assert analyzer.finished

    def test_pipe_input_skips_when_the_analysis_falls_behind(self, monkeypatch) -> None:
        """From a live pipe, a slow analysis loses input rather than hold up the copy."""
        side, analyzer, data = self._run(monkeypatch, wait=False)
        assert side.skipped > 0
        assert sum(map(len, analyzer.fed)) + side.skipped == len(data)
        assert self.said == ["specwatch: analysis fell behind; skipping input (output is unaffected)\n"]

    def test_queued_chunks_are_analysed_together(self, monkeypatch) -> None:
        """Chunks that pile up while the analysis is busy reach it as fewer, larger pieces."""
        _, analyzer, _ = self._run(monkeypatch, wait=True)
        assert len(analyzer.fed) < 40
        assert max(map(len, analyzer.fed)) > 1025


def test_regular_file_is_recognised(tmp_path) -> None:
    """stdin redirected from a file counts as regular; a pipe does not."""
    f = tmp_path / "log"
    f.write_bytes(b"x\n")
    with f.open("rb") as fh:
        assert pipe.is_regular_file(fh)
    r, w = os.pipe()
    with os.fdopen(r, "rb") as fh, os.fdopen(w, "wb"):
        assert not pipe.is_regular_file(fh)


def test_a_stuck_analysis_does_not_stop_the_copy_of_a_file(monkeypatch) -> None:
    """Even from a regular file, an analysis that makes no progress is given up on and input skipped."""
    import threading

    monkeypatch.setattr(pipe, "MAX_BACKLOG", 4096)
    monkeypatch.setattr(pipe, "STALL", 0.3)
    release = threading.Event()

    class Stuck(_SlowAnalyzer):
        def feed(self, chunk: bytes) -> None:
            release.wait(30)
            self.fed.append(chunk)

    analyzer = Stuck()
    side = SideAnalysis(analyzer, lambda: None, lambda text: None)  # type: ignore[arg-type]
    for _ in range(20):
        side.put(b"x" * 1024 + b"\n", wait=True)
    assert side.skipped > 0
    release.set()
    side.close(timeout=30)
    assert sum(map(len, analyzer.fed)) + side.skipped == 20 * 1025


class TestClosedStreams:
    def _sh(self, redirect: str) -> subprocess.CompletedProcess[bytes]:
        cmd = f'"{sys.executable}" -m watcher {redirect}'
        return subprocess.run(["sh", "-c", cmd], input=SEED.read_bytes(), env=ENV, capture_output=True,
                              timeout=60, check=False)

    def test_closed_stdout(self) -> None:
        """With stdout closed by the shell (>&-), the input is still read and analysed, and the exit is 0."""
        r = self._sh(">&-")
        assert r.returncode == 0, r.stderr[-500:]
        assert b"SPECWATCH CRITICAL" in r.stderr

    def test_closed_stderr(self) -> None:
        """With stderr closed (2>&-), alerts are dropped silently and the bytes still pass through."""
        r = self._sh("2>&-")
        assert r.returncode == 0
        assert r.stdout == SEED.read_bytes()

    def test_stderr_into_a_reader_that_left(self) -> None:
        """specwatch 2>&1 | head -1: the broken stderr ends neither the copy nor the exit status."""
        cmd = f'"{sys.executable}" -m watcher 2>&1 | head -c 10 >/dev/null; echo "status=${{PIPESTATUS[0]}}"'
        r = subprocess.run(["bash", "-c", cmd], input=SEED.read_bytes() * 50,
                           env=ENV, capture_output=True, timeout=60, check=False)
        assert b"status=0" in r.stdout, r.stdout + r.stderr


class TestFailingStreams:
    NONBLOCK = ("import fcntl, os, sys\n"
                "for fd in (0, 1):\n"
                "    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'watcher'])\n")

    def _bash(self, script: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "-c", script], env=ENV, capture_output=True, text=True, timeout=120,
                              check=False)

    def test_full_disk_on_stdout_keeps_reading(self) -> None:
        """stdout failing with ENOSPC is reported once; the input is still read to the end and upstream lives."""
        r = self._bash(f'seq 1 300000 | "{sys.executable}" -m watcher > /dev/full; echo "status=${{PIPESTATUS[*]}}"')
        assert "status=0 0" in r.stdout, r.stdout + r.stderr
        assert r.stderr.count("stdout failed (No space left on device)") == 1

    def test_non_blocking_stdin_and_stdout_lose_nothing(self) -> None:
        """O_NONBLOCK set on both pipes (by a process sharing them) is waited on, not a crash: every byte arrives."""
        r = self._bash(f'(sleep 0.5; seq 1 300000) | "{sys.executable}" -c "{self.NONBLOCK}" | (sleep 1; md5sum); '
                       f'echo "status=${{PIPESTATUS[*]}}"; seq 1 300000 | md5sum')
        lines = r.stdout.splitlines()
        assert "status=0 0 0" in lines, r.stdout + r.stderr
        assert lines[0] == lines[-1]


def test_a_sink_that_cannot_start_still_passes_everything_through(tmp_path) -> None:
    """An --events file that cannot be opened stops the watching, never the copy."""
    r = cli("--events", str(tmp_path / "missing-dir" / "events.jsonl"), stdin=b"hello\n")
    assert r.stdout == b"hello\n"
    assert r.status == 2
    assert "not watching" in r.stderr


class TestSummaryLine:
    def test_summary_starts_a_new_line_after_an_unfinished_last_line(self) -> None:
        """Input ending without a newline: the exit summary on stderr starts on a line of its own."""
        r = cli(stdin=b"hello\n    Issue actions")
        assert r.stdout == b"hello\n    Issue actions"
        assert r.stderr == "\nspecwatch: no open incidents\n"

    def test_no_blank_line_after_a_finished_last_line(self) -> None:
        """Input ending with a newline (or no input at all): the summary follows directly."""
        assert cli(stdin=b"hello\n").stderr == "specwatch: no open incidents\n"
        assert cli(stdin=b"").stderr == "specwatch: no open incidents\n"

    def test_passthrough_remembers_its_last_byte(self) -> None:
        """Passthrough.last is the last byte written, b'' before any; an empty write changes nothing."""
        out = pipe.Passthrough(io.BytesIO())
        assert out.last == b""
        out.write(b"abc\n")
        out.write(b"")
        assert out.last == b"\n"
        out.write(b"x")
        assert out.last == b"x"


def test_without_targets_apprise_is_never_loaded(tmp_path) -> None:
    """Pipe mode with incidents but no notification target never imports apprise (a third of its CPU)."""
    code = ("import io, sys\n"
            "from watcher.cli import run\n"
            "from watcher.environment import Environment\n"
            "env = Environment(stdin=io.BytesIO(open(sys.argv[1], 'rb').read()), stdout=io.BytesIO(),\n"
            "                  stderr=io.StringIO(), environ={'SPECWATCH_STATE_DIR': sys.argv[2]})\n"
            "run([], env)\n"
            "print('SPECWATCH CRITICAL' in env.stderr.getvalue(), 'apprise' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(SEED), str(tmp_path)], env=ENV, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.stdout.split() == ["True", "False"], r.stdout + r.stderr


def test_a_failed_write_does_not_count_as_output(tmp_path) -> None:
    """Bytes that never went out do not decide where the summary starts."""
    r, w = os.pipe()
    os.close(r)
    with os.fdopen(w, "wb") as fh:
        out = pipe.Passthrough(fh)
        out.write(b"no newline")
        assert out.broken and out.last == b""


def test_a_watcher_that_fails_to_start_closes_what_it_started(monkeypatch) -> None:
    """When the analysis cannot start, the metrics endpoint already listening is closed, and bytes still flow."""
    import socket

    from watcher import metrics, pipeline

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("analyzer broke")

    started: list[tuple[str, int]] = []
    real_start = metrics.start

    def spy(host: str, port: int) -> metrics.MetricsSink:
        sink = real_start(host, port)
        assert sink.address is not None
        started.append(sink.address)
        return sink

    monkeypatch.setattr(metrics, "start", spy)
    monkeypatch.setattr(pipeline, "Analyzer", broken)  # what dispatch.Wiring builds every analyzer with
    r = cli("--metrics-listen", "127.0.0.1:0", stdin=b"hello\n")
    assert r.stdout == b"hello\n" and "not watching" in r.stderr
    with socket.socket() as s:
        assert s.connect_ex(started[0]) != 0


def test_a_stuck_analysis_does_not_keep_specwatch_from_exiting(monkeypatch) -> None:
    """If the analysis never finishes (its stderr blocked), specwatch still exits once all input is copied."""
    import threading

    from watcher.commands import pipe as pipe_command
    from watcher.pipeline import Analyzer

    release = threading.Event()
    monkeypatch.setattr(pipe_command, "CLOSE_WAIT", 0.5)
    monkeypatch.setattr(Analyzer, "finish", lambda self: release.wait(30))
    try:
        r = cli(stdin=SEED.read_bytes())
    finally:
        release.set()
    assert r.status == 0 and r.stdout == SEED.read_bytes()
