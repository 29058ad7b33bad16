"""Fault: stderr is a terminal paused with Ctrl-S (a pty whose output is suspended, so every write to it
blocks). The server's output must keep flowing, and incidents must still reach the store and the targets:
only the banners wait (or are dropped, with a count) for the terminal. Pipe mode, ``watch`` and ``run``
alike: every command that reads logs writes its stderr through the same writer."""

from __future__ import annotations

import contextlib
import io
import os
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, SEED, cli, wait_for
from tests.notify.conftest import Receiver
from tests.sources.helpers_tail import failure
from watcher.sinks import TerminalWriter

#: Filler after the seed log: far more than the analysis backlog (8 MiB) and a pty's buffer.
CHATTER_MB = 40


#: No byte on stdout for this long is a stall (a paused terminal holding the pipe up stops it for good).
STALL = 20.0


def flows_to_the_end(progress: Callable[[], int], total: int) -> None:
    """Wait while bytes keep arriving until ``total`` have; fail only on a stall. A loaded machine may copy
    40 MB slowly, but never stops: what the fault blocks, it blocks for good."""
    seen, since = progress(), time.monotonic()
    while (now := progress()) != total:
        if now != seen:
            seen, since = now, time.monotonic()
        elif time.monotonic() - since > STALL:
            raise AssertionError(f"the output stalled after {now} of {total} bytes")
        time.sleep(0.05)


@pytest.fixture
def paused_pty() -> Iterator[int]:
    """The slave end of a pty with output suspended (as Ctrl-S does); its master is never read."""
    master, slave = os.openpty()
    termios.tcflow(slave, termios.TCOOFF)
    yield slave
    termios.tcflow(slave, termios.TCOON)
    os.close(slave)
    os.close(master)


def test_a_paused_terminal_stops_neither_the_output_nor_the_recording(paused_pty: int, tmp_path: Path) -> None:
    """With stderr paused, 40 MB still flow to stdout, and the seed's incident is stored and delivered."""
    receiver = Receiver()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    conf = tmp_path / "config.toml"
    # No settling: the banner is due (and blocks, before the fix) while most of the chatter is still to come.
    conf.write_text("[analysis]\nsettle = 0\n")
    proc = subprocess.Popen([sys.executable, "-m", "watcher", "--config", str(conf),
                             "--notify", f"json://127.0.0.1:{receiver.port}/hook"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=paused_pty, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    seed = SEED.read_bytes()
    line = b"srv  log_server_r: request: POST /completion 127.0.0.1 200 " + b"." * 960 + b"\n"
    chatter = line * (1024 * 1024 // len(line))
    sent = len(seed) + CHATTER_MB * len(chatter)
    received = 0

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):  # specwatch killed after a failed assertion
            stdin.write(seed)
            stdin.flush()
            for _ in range(CHATTER_MB):
                stdin.write(chatter)
            stdin.flush()

    def drain() -> None:
        nonlocal received
        while chunk := stdout.read1(1 << 20):
            received += len(chunk)

    feeder = threading.Thread(target=feed, daemon=True)
    reader = threading.Thread(target=drain, daemon=True)
    feeder.start()
    reader.start()
    try:
        flows_to_the_end(lambda: received, sent)
        feeder.join(STALL)
        assert not feeder.is_alive(), f"the server upstream stalled after {received} bytes"
        posts = wait_for(receiver.bodies, "the incident at the HTTP target")
        assert "Speculative decoding OFF" in str(posts[0])
        history = wait_for(lambda: "out of memory on CUDA1" in cli("history").out, "the incident in the store")
        assert history
        stdin.close()
        # The exit waits a bounded time for the terminal, never forever.
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        receiver.down()


def _specwatch(*argv: str, stderr: int, tmp_path: Path, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    """specwatch as a process with no settling (a banner is due at once), its state in the test's state dir."""
    conf = tmp_path / "config.toml"
    conf.write_text("[analysis]\nsettle = 0\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    return subprocess.Popen([sys.executable, "-m", "watcher", *argv, "--config", str(conf)], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=stderr, env=env)


def test_watch_records_a_failure_while_its_terminal_is_paused(paused_pty: int, tmp_path: Path) -> None:
    """``watch`` with stderr paused: a failure written to a followed file reaches ``history``; SIGTERM ends it."""
    log = tmp_path / "server.log"
    # --from-start: the file is read from its start whether it appears before or after watch looks.
    proc = _specwatch("watch", "--from-start", str(log), stderr=paused_pty, tmp_path=tmp_path)
    try:
        log.write_bytes(failure(1))
        wait_for(lambda: "d1.gguf" in cli("history").out, "the failure in the store", limit=30)
        proc.send_signal(signal.SIGTERM)
        # The exit waits a bounded time for the terminal, never forever.
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_run_keeps_the_server_output_flowing_and_records_while_its_terminal_is_paused(
        paused_pty: int, tmp_path: Path) -> None:
    """``run`` with stderr paused: the server's 40 MB of stdout all come through, its failure is stored, and
    specwatch exits with the server's status."""
    child = ("import sys; out = sys.stdout.buffer; out.write(open(sys.argv[1], 'rb').read()); "
             "line = b'srv  log_server_r: request: POST /completion 127.0.0.1 200 ' + b'.' * 964 + b'\\n'; "
             f"[out.write(line * 1024) for _ in range({CHATTER_MB})]; out.flush(); sys.exit(7)")
    proc = _specwatch("run", "--", sys.executable, "-c", child, str(SEED), stderr=paused_pty, tmp_path=tmp_path)
    assert proc.stdout is not None
    stdout = proc.stdout
    received = 0

    def drain() -> None:
        nonlocal received
        while chunk := stdout.read1(1 << 20):
            received += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sent = len(SEED.read_bytes()) + CHATTER_MB * 1024 * 1024
    try:
        flows_to_the_end(lambda: received, sent)
        wait_for(lambda: "out of memory on CUDA1" in cli("history").out, "the incident in the store", limit=30)
        assert proc.wait(timeout=30) == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_events_to_a_paused_stderr_are_dropped_and_counted(tmp_path: Path) -> None:
    """``--events -`` shares the writer: with stderr paused the input flows and the incident is stored; once the
    terminal takes output again, the events that did not fit the queue are counted in one line."""
    master, slave = os.openpty()
    termios.tcflow(slave, termios.TCOOFF)
    timing = b"slot print_timing: id  0 | task 17 | prompt eval time =       0.26 ms /     9 tokens\n"
    data = SEED.read_bytes() + timing * 10_000  # some 2 MB of JSON events: more than the 1 MiB queue
    proc = _specwatch("--events", "-", stderr=slave, tmp_path=tmp_path, stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdin = proc.stdin

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError):  # specwatch killed after a failed assertion
            stdin.write(data)
            stdin.flush()

    threading.Thread(target=feed, daemon=True).start()
    try:
        assert proc.stdout.read(len(data)) == data
        wait_for(lambda: "out of memory on CUDA1" in cli("history").out, "the incident in the store", limit=30)
        termios.tcflow(slave, termios.TCOON)
        shown = b""

        def counted() -> bool:
            nonlocal shown
            if select.select([master], [], [], 0.1)[0]:
                shown += os.read(master, 1 << 16)
            return b" message(s) to stderr dropped: it was not taking output (a paused terminal?)" in shown

        wait_for(counted, "the count of dropped events", limit=30)
        assert b'"event": "incident"' in shown or b'"event": "event"' in shown
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)


@pytest.mark.parametrize(("argv", "through_writer"), [
    ([], True), (["scan", "x.log"], True), (["watch", "x.log"], True), (["run", "--", "llama-server"], True),
    (["status"], False), (["history"], False), (["patterns", "list"], False), (["notify", "list"], False),
    (["probe", "http://127.0.0.1:8080"], False),
])
def test_the_commands_that_read_logs_are_the_ones_given_the_writer(argv: list[str], through_writer: bool) -> None:
    """Pipe mode and every command taking the analysis options run with their stderr behind the writer (a new
    one gets it with those options); one-shot commands keep a plain stderr, not inherited from pipe mode's."""
    from watcher.cli import build_parser

    assert bool(getattr(build_parser().parse_args(argv), "reads_logs", False)) is through_writer


class TestTerminalWriter:
    def test_writes_in_order_and_flushes_on_close(self) -> None:
        """Everything written reaches the stream, in order, once ``close`` returns."""
        out = io.StringIO()
        w = TerminalWriter(out)
        for n in range(100):
            w.write(f"line {n}\n")
        assert w.drain(10)
        assert out.getvalue() == "".join(f"line {n}\n" for n in range(100))

    def test_close_ends_the_thread_and_drops_later_writes(self) -> None:
        """After drain and close, the writer thread is gone and a late message (a retry line) is dropped."""
        out = io.StringIO()
        w = TerminalWriter(out)
        w.write("last\n")
        assert w.drain(10)
        w.close()
        wait_for(lambda: not w.running, "the writer thread to end")
        w.write("late\n")
        assert out.getvalue() == "last\n"

    def test_a_stuck_terminal_never_blocks_the_writer_and_drops_are_counted(self, paused_pty: int) -> None:
        """Writes to a paused pty return at once; past the bound they are dropped and counted; close gives up."""
        with open(paused_pty, "w", closefd=False) as stream:
            w = TerminalWriter(stream, limit=4096)
            for _ in range(1000):
                w.write("x" * 99 + "\n")
            assert 0 < w.dropped <= 1000
            assert not w.drain(0.2)

    def test_after_drops_the_count_is_reported_once_the_terminal_takes_output_again(self) -> None:
        """Once the terminal moves again, the writer says how many messages it dropped."""
        m, s = os.openpty()
        termios.tcflow(s, termios.TCOOFF)
        try:
            with open(s, "w", closefd=False) as stream:
                w = TerminalWriter(stream, limit=1024)
                for n in range(100):
                    w.write(f"message {n:03d}\n")
                dropped = w.dropped
                assert dropped > 0
                termios.tcflow(s, termios.TCOON)
                got = b""

                def seen() -> bool:
                    nonlocal got
                    if select.select([m], [], [], 0.1)[0]:
                        got += os.read(m, 65536)
                    return f"{dropped} message(s) to stderr dropped".encode() in got

                wait_for(seen, "the count of dropped messages")
                assert w.drain(10)
        finally:
            os.close(s)
            os.close(m)


#: A command's stderr behind the writer, a background thread that fails, then (told on stdin that the terminal
#: takes output again) the end of the command, which writes what is queued.
THREAD_FAILS = """
import io, sys, threading
from watcher.commands._common import terminal
from watcher.environment import Environment

env = Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=sys.stderr, environ={})
with terminal(env, wait=30):
    t = threading.Thread(target=lambda: 1 / 0, name="specwatch-notify")
    t.start()
    t.join(10)
    print("blocked" if t.is_alive() else "ended", flush=True)
    sys.stdin.readline()
"""


def test_a_thread_that_fails_on_a_paused_terminal_does_not_block_and_its_traceback_comes_later() -> None:
    """An uncaught exception in a background thread while stderr is paused: the thread ends at once (its
    traceback is queued by the writer, not written by Python straight to the terminal), and the traceback is
    shown once the terminal takes output again."""
    master, slave = os.openpty()
    termios.tcflow(slave, termios.TCOOFF)
    # Fill what the pty takes before a write blocks, as a chatty server would have.
    os.set_blocking(slave, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(slave, b"." * 4096)
    os.set_blocking(slave, True)
    proc = subprocess.Popen([sys.executable, "-c", THREAD_FAILS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=slave, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ended\n"
        termios.tcflow(slave, termios.TCOON)
        proc.stdin.write(b"go on\n")
        proc.stdin.flush()
        shown = b""

        def traceback_shown() -> bool:
            nonlocal shown
            if select.select([master], [], [], 0.1)[0]:
                shown += os.read(master, 1 << 16)
            return b"ZeroDivisionError" in shown

        wait_for(traceback_shown, "the thread's traceback on the terminal", limit=30)
        assert b"Exception in thread specwatch-notify:" in shown
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)


def test_a_runner_hook_still_hears_of_a_thread_exception_routed_through_the_writer() -> None:
    """With the writer's hook installed, a hook installed before it (pytest's, which fails the test) still gets
    the exception, the traceback is queued on the writer, and leaving restores the earlier hook."""
    heard: list[type[BaseException]] = []
    before = threading.excepthook

    def runner_hook(args: threading.ExceptHookArgs) -> None:
        heard.append(args.exc_type)

    out = io.StringIO()
    term = TerminalWriter(out)
    threading.excepthook = runner_hook
    try:
        with term.thread_exceptions():
            t = threading.Thread(target=lambda: 1 / 0, name="worker")
            t.start()
            t.join()
        assert threading.excepthook is runner_hook
    finally:
        threading.excepthook = before
    assert term.drain(10)
    term.close()
    assert heard == [ZeroDivisionError]
    assert out.getvalue().startswith("Exception in thread worker:\nTraceback")
    assert "ZeroDivisionError: division by zero" in out.getvalue()
