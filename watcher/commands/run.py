"""``specwatch run [options] -- COMMAND ARGS...``: supervise a server and refuse to serve degraded."""

from __future__ import annotations

import argparse
import threading
from typing import TYPE_CHECKING, BinaryIO, TextIO

from watcher import report
from watcher.commands._common import UsageError, add_analysis_options, build_context, incidents_at_exit, wire
from watcher.config import flag_range
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher.environment import Environment
    from watcher.events import Event
    from watcher.incidents import Incident


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``run``."""
    p = sub.add_parser(
        "run", help="start a server, pass its output through and watch it (or stop it if speculation fails)",
        description="Start COMMAND, copy its stdout and stderr through unchanged, analyse both, "
                    "forward SIGINT/SIGTERM/SIGHUP, and exit with its status. With --on-spec-failure=exit a "
                    "speculation failure stops the child (SIGTERM, SIGKILL after --grace) and specwatch "
                    "exits 3.",
        epilog="Example: specwatch run --on-spec-failure=exit -- llama-server -m big.gguf -md small.gguf "
               "--spec-type draft-simple")
    p.add_argument("--on-spec-failure", choices=["warn", "exit"], default="warn",
                   help="warn (default): alert and keep serving; exit: stop the server and exit 3")
    p.add_argument("--grace", type=flag_range("--grace"), default=10.0, metavar="SECONDS",
                   help="seconds between SIGTERM and SIGKILL when stopping the child (default 10)")
    p.add_argument("--no-summary", dest="quiet_summary", action="store_true",
                   help="do not print the summary of open incidents when the child exits")
    add_analysis_options(p)
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS",
                   help="the server command line")
    p.set_defaults(handler=run)


class _Binary:
    """A text stream seen as bytes, for environments whose stderr has no binary buffer (tests)."""

    def __init__(self, text: TextIO) -> None:
        self.text = text

    def write(self, data: bytes) -> int:
        self.text.write(data.decode("utf-8", "replace"))
        return len(data)

    def flush(self) -> None:
        self.text.flush()


class _Stopper:
    """A sink that notices the first settled speculation failure."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.fired = threading.Event()

    def incident(self, inc: Incident, change: str) -> None:
        from watcher.sources.child import FAILURE_KINDS

        if change == "opened" and inc.kind in FAILURE_KINDS and not self.fired.is_set():
            self.reason = f"{inc.kind}: {inc.title}"
            self.fired.set()

    def close(self) -> None:
        """Nothing to release."""


def run(args: argparse.Namespace, env: Environment) -> int:
    """Supervise the child; the return value is the child's status, or 3 when specwatch stopped it."""
    from watcher.pipe import Passthrough, SideAnalysis
    from watcher.sinks import underlying
    from watcher.sources.child import Child, SpecExpectation, forwarding, shell_status, spec_args

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("run: give the command after '--', e.g. specwatch run -- llama-server -m model.gguf")
    ctx = build_context(args, env)
    stopper = _Stopper()
    if args.on_spec_failure == "exit":
        ctx.sinks.append(stopper)
    wiring = wire(ctx, env)
    disp = wiring.dispatcher
    source = args.source or argv[0].rsplit("/", 1)[-1]
    spec = spec_args(argv)

    def on_event(ev: Event) -> None:
        # The expectation sees each event before the sinks do; it reads the analyzer's stream, so it is
        # made just below, before the first event can arrive.
        expect.event(ev)

    analyzer = wiring.analyzer(source, on_event=on_event)
    expect = SpecExpectation(spec, analyzer.stream)

    def tick() -> None:
        expect.check()
        disp.tick()

    side = SideAnalysis(analyzer, tick, env.stderr.write)
    # The server's stderr goes straight to the real stream, as bytes: it is the server's output, never to be
    # dropped or held behind specwatch's own messages in the terminal writer's queue.
    real = underlying(env.stderr)
    err_bin: BinaryIO = getattr(real, "buffer", None) or _Binary(real)  # type: ignore[assignment]
    out, err = Passthrough(env.stdout), Passthrough(err_bin)
    try:
        child = Child(argv, out, err, side.put)
    except OSError as exc:
        side.close()
        disp.close()
        raise UsageError(f"run: cannot start {argv[0]}: {exc.strerror or exc}") from exc
    stopped = False
    with forwarding(child):
        while True:
            rc = child.poll(0.1)
            if rc is not None:
                break
            if stopper.fired.is_set():
                stopped = True
                rc = child.stop(args.grace)
                break
    child.drain()
    side.close()
    expect.check(final=True)
    disp.close()
    if not args.quiet_summary:
        lead = "\n" if err.mid_line or out.mid_line else ""
        env.stderr.write(lead + report.summary(incidents_at_exit(analyzer.incidents(), disp), env.colour))
    if stopped:
        env.stderr.write(f"specwatch: stopped {argv[0]} (pid {child.pid}): {stopper.reason}\n")
        env.stderr.flush()
        return int(ExitStatus.SPEC_FAILURE)
    return shell_status(rc)
