"""A supervised child process as a log source: its command line says what speculation was asked for.

The child's stdout and stderr are copied to specwatch's own stdout and stderr byte for byte, and both
feed ONE analysis (llama-server logs to stderr, some wrappers to stdout; the run is one source). Each
stream is cut at line ends before it reaches the analysis so a half line of stdout is never glued to
a line of stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import BinaryIO

from watcher.events import Event
from watcher.incidents import KINDS, Incident
from watcher.pipe import CHUNK, Passthrough
from watcher.state import Stream

#: Incident kinds that mean "the server is not speculating as configured". ``main_model_oom`` is the
#: target's own failure; ``low_acceptance`` and ``draft_on_cpu`` are speculation that runs, badly;
#: ``memory_overcommit`` and ``acceptance_regressed`` are advice about a load, not a failure of it.
FAILURE_KINDS = frozenset(KINDS) - {"main_model_oom", "low_acceptance", "draft_on_cpu", "memory_overcommit",
                                    "acceptance_regressed"}

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_DRAFT_FLAGS = {"-md", "--model-draft", "--spec-draft-model", "-hfd", "-hfrd", "--hf-repo-draft",
                "--spec-draft-hf", "-mdu", "--model-draft-url"}
_DRAFT_TYPES = ("draft", "draft-simple", "draft-eagle3", "draft-mtp", "draft-dflash", "draft-dspark", "mtp",
                "eagle3", "dflash", "dspark")


@dataclass
class SpecArgs:
    """What a llama-server command line asks for, across llama.cpp eras (research catalogue, section 5)."""

    draft: str | None = None
    types: list[str] = field(default_factory=list)
    default: bool = False  # --spec-default: ngram-mod without a draft model

    @property
    def requested(self) -> bool:
        """Speculation of any kind was asked for (``--spec-type none`` alone is not a request)."""
        return bool(self.draft or self.default or [t for t in self.types if t != "none"])

    @property
    def needs_draft_stats(self) -> bool:
        """A draft model drafts on every step; n-gram speculators may legitimately draft nothing."""
        return bool(self.draft) or any(t.startswith(_DRAFT_TYPES) for t in self.types)

    @property
    def describe(self) -> str:
        """The flags in a few words, for incident text."""
        parts = []
        if self.draft:
            parts.append(f"draft {PurePath(self.draft).name}")
        if self.types:
            parts.append("--spec-type " + ",".join(self.types))
        if self.default:
            parts.append("--spec-default")
        return ", ".join(parts) or "no speculation"


def spec_args(argv: Sequence[str]) -> SpecArgs:
    """Parse the speculation flags out of a server command line (``--flag value`` and ``--flag=value``)."""
    out = SpecArgs()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, inline = arg.partition("=")
        if not name.startswith("-"):
            i += 1
            continue
        value: str | None = inline if eq else (args[i + 1] if i + 1 < len(args) else None)
        step = 1 if eq else 2
        if name in _DRAFT_FLAGS and value is not None:
            out.draft = value
        elif name == "--spec-type" and value is not None:
            out.types += [t.strip() for t in value.split(",") if t.strip()]
        elif name == "--spec-default":
            out.default = True
            step = 1
        else:
            step = 1
        i += step
    return out


class SpecExpectation:
    """Raises ``spec_disabled`` when the command line asked for speculation and the log never shows it.

    At llama.cpp's default verbosity (b9151+) the load prints nothing that confirms speculation; the
    first proof is the ``draft acceptance`` line after a task's timings. So the decision is taken when
    the first task's block is complete (the next task starts, or the stream ends) for draft models, and
    after ``absent_stats_tasks`` tasks for n-gram speculators, which may draft nothing on some prompts.
    """

    def __init__(self, spec: SpecArgs, stream: Stream) -> None:
        self.spec = spec
        self.stream = stream
        self.tasks = 0
        self.stats_seen = False
        self.raised: Incident | None = None
        self._pending = False

    def event(self, ev: Event) -> None:
        """See an event before the state applies it."""
        if ev.type in ("draft_acceptance", "spec_statistics", "draft_step_accepted", "spec_ctx_init_ok"):
            self.stats_seen = True
        elif ev.type == "task_timing" and ev.record.text.find("prompt eval time") >= 0:
            self.tasks += 1
            self._pending = True
        elif ev.type in ("build_info", "model_loading"):
            self.tasks, self.stats_seen = 0, False

    def check(self, final: bool = False) -> None:
        """Decide, if enough has been seen (called after each analysed chunk and at the end)."""
        if not self.spec.requested or self.raised is not None or self.stats_seen:
            return
        if not (self._pending or final):
            return
        self._pending = False
        need = 2 if self.spec.needs_draft_stats else self.stream.settings.absent_stats_tasks + 1
        finished = self.tasks - 1 if not final else self.tasks
        if finished < max(need - 1, 1):
            return
        run = self.stream.run
        if run.spec_confirmed or run.phase == "exited":
            return
        if any(i.status == "open" and i.kind in FAILURE_KINDS for i in run.incidents.values()):
            return  # the log already said what went wrong
        no_type = bool(self.spec.draft) and not self.spec.types and not self.spec.default
        # The state draws the conclusion, so the words are those a log alone gets when it says as much.
        self.raised = self.stream.conclude_no_statistics(run, finished, draft=self.spec.draft,
                                                         command_line=self.spec.describe, no_spec_type=no_type)


class LineGate:
    """Passes only complete lines of one stream to the shared analysis; keeps the rest for later."""

    LIMIT = 256 * 1024

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self.put = put
        self.rest = b""

    def feed(self, chunk: bytes) -> None:
        """Forward everything up to the last newline."""
        data = self.rest + chunk
        cut = data.rfind(b"\n")
        if cut < 0 and len(data) < self.LIMIT:
            self.rest = data
            return
        if cut < 0:
            cut = len(data) - 1
        self.put(data[: cut + 1])
        self.rest = data[cut + 1:]

    def close(self) -> None:
        """End of stream: the last partial line, terminated."""
        if self.rest:
            self.put(self.rest + b"\n")
            self.rest = b""


def _copy(pipe: BinaryIO, out: Passthrough, gate: LineGate, exited: threading.Event, wake: int) -> None:
    """Copy one of the child's pipes until EOF, or, once the child has exited, until the pipe is empty.

    When the child has exited every byte it wrote is in the pipe, so reading until the pipe is empty passes
    all of it through, however long the output takes to absorb it; a descendant still holding the pipe is
    copied for as long as it keeps the pipe from running empty, and not waited for after that (docs/run.md).
    ``wake`` becomes readable when ``exited`` is set, so a read blocked on a silent pipe notices the exit.
    """
    fd = pipe.fileno()
    # A selector, not select.select: a server with many open files may give the pipe a number above 1023.
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    sel.register(wake, selectors.EVENT_READ)
    try:
        while True:
            # Read the flag before looking at the pipe: if it was set, the child's last write is already in it.
            finishing = exited.is_set()
            ready = {key.fd for key, _ in sel.select(0 if finishing else None)}
            if fd not in ready:
                if finishing:
                    break
                continue
            try:
                chunk = os.read(fd, CHUNK)
            except InterruptedError:
                continue
            if not chunk:
                break
            out.write(chunk)
            gate.feed(chunk)
    finally:
        sel.close()
        gate.close()
        with contextlib.suppress(OSError):
            pipe.close()


def _die_with_parent() -> None:
    # Linux: if specwatch itself is SIGKILLed, the server must not live on unsupervised.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """The supervised process: started in its own process group so a terminal's Ctrl-C reaches it once,
    through specwatch, instead of twice (llama-server exits hard on a second SIGINT)."""

    def __init__(self, argv: Sequence[str], stdout: Passthrough, stderr: Passthrough,
                 put: Callable[[bytes], None]) -> None:
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 - before any thread runs
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.gates = [LineGate(put), LineGate(put)]
        self.exited = threading.Event()
        self._wake = os.pipe()
        self.threads = [
            threading.Thread(target=_copy, args=(self.proc.stdout, stdout, self.gates[0], self.exited,
                                                 self._wake[0]), daemon=True, name="specwatch-child-stdout"),
            threading.Thread(target=_copy, args=(self.proc.stderr, stderr, self.gates[1], self.exited,
                                                 self._wake[0]), daemon=True, name="specwatch-child-stderr"),
        ]
        for t in self.threads:
            t.start()

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def signal(self, signum: int) -> None:
        """Send a signal unless the child is already gone."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def poll(self, timeout: float) -> int | None:
        """The exit status, waiting at most ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``grace`` seconds."""
        self.signal(signal.SIGTERM)
        rc = self.poll(grace)
        if rc is None:
            self.signal(signal.SIGKILL)
            rc = self.proc.wait()
        return rc

    def drain(self) -> None:
        """After the child has exited: pass through and analyse everything left in its pipes, then stop.

        No time limit: the child's bytes are never dropped, only a slow reader of specwatch's output makes
        this take long. A descendant that holds the pipes open is not waited for once they are empty."""
        self.proc.wait()
        self.exited.set()
        os.write(self._wake[1], b"x")
        for t in self.threads:
            t.join()
        for fd in self._wake:
            os.close(fd)


def shell_status(rc: int) -> int:
    """A child killed by signal N exits a shell with 128+N; specwatch reports it the same way."""
    return 128 - rc if rc < 0 else rc


@contextlib.contextmanager
def forwarding(child: Child) -> Iterator[None]:
    """Forward SIGINT/SIGTERM/SIGHUP to the child while it runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    old = {s: signal.getsignal(s) for s in FORWARDED}
    for s in FORWARDED:
        signal.signal(s, lambda signum, _frame: child.signal(signum))
    try:
        yield None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
