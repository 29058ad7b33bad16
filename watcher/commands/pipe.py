"""``specwatch`` with input on stdin: pass every byte through and raise alerts on stderr."""

from __future__ import annotations

import argparse
import contextlib
from typing import TYPE_CHECKING

from watcher import report
from watcher.commands._common import Context, build_context, incidents_at_exit, wire
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher.dispatch import Dispatcher
    from watcher.environment import Environment
    from watcher.pipe import SideAnalysis
    from watcher.pipeline import Analyzer

#: Seconds the analysis gets, after the input ended, to finish its backlog.
CLOSE_WAIT = 30.0


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Copy stdin to stdout; analyse on the side; print a summary of open incidents at EOF.

    Called with its stderr behind the terminal writer (``_common.terminal``, as every command that reads
    logs), so a paused terminal holds up neither the copy nor the store and the notifications.
    """
    from watcher.pipe import Passthrough, is_regular_file, pump, reader

    def on_break(exc: OSError) -> None:
        env.stderr.write(f"specwatch: stdout failed ({exc.strerror or exc}); discarding output, "
                         "still reading and watching\n")

    out = Passthrough(env.stdout, on_break)
    read = reader(env.stdin)
    try:
        ctx = build_context(args, env)
    except Exception as exc:  # noqa: BLE001
        # Even with a broken configuration the server's output must keep flowing.
        env.stderr.write(f"specwatch: not watching: {exc}\n")
        pump(read, out, None)
        return ExitStatus.USAGE
    try:
        disp, analyzer, side = _start(args, ctx, env)
    except Exception as exc:  # noqa: BLE001 - a sink or the analyzer failing to start must not stop the copy
        env.stderr.write(f"specwatch: not watching: {exc!r}\n")
        for sink in ctx.sinks:  # a --probe poller or the metrics endpoint must not outlive "not watching"
            with contextlib.suppress(Exception):
                sink.close()
        pump(read, out, None)
        return ExitStatus.USAGE
    pump(read, out, side, wait=is_regular_file(env.stdin))
    if not side.close(timeout=CLOSE_WAIT):
        # The analysis is stuck (a sink that never returns): the copy is complete, so exit rather than hang.
        return ExitStatus.OK
    disp.close()
    incidents = incidents_at_exit(analyzer.incidents(), disp)
    if not args.quiet_summary:
        # The server's last line may have had no newline: the summary starts on a line of its own.
        lead = "\n" if out.mid_line else ""
        env.stderr.write(lead + report.summary(incidents, env.colour))
    if args.exit_status and any(i.status == "open" for i in incidents):
        return ExitStatus.INCIDENTS
    return ExitStatus.OK


def _start(args: argparse.Namespace, ctx: Context, env: Environment) -> tuple[Dispatcher, Analyzer, SideAnalysis]:
    from watcher.pipe import SideAnalysis

    wiring = wire(ctx, env)
    disp = wiring.dispatcher
    analyzer = wiring.analyzer(args.source or "stdin")
    return disp, analyzer, SideAnalysis(analyzer, disp.tick, env.stderr.write)


def add_pipe_options(p: argparse.ArgumentParser) -> None:
    """Options that only pipe mode has."""
    g = p.add_argument_group("pipe mode")
    g.add_argument("--exit-status", action="store_true",
                   help="exit 1 when incidents are open at EOF (default: always 0, like a transparent pipe)")
    g.add_argument("--no-summary", dest="quiet_summary", action="store_true",
                   help="do not print the summary of open incidents at EOF")
