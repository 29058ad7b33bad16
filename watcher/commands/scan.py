"""``specwatch scan FILE...``: analyse whole files and print a report (or JSON)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from watcher import report
from watcher.commands._common import add_analysis_options, build_context, wire
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher.environment import Environment
    from watcher.pipeline import Analyzer

READ = 4 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``scan``."""
    p = sub.add_parser("scan", help="analyse log files and report server runs and incidents",
                       description="Analyse whole log files: server runs (models, slots, speculation, memory), "
                                   "then incidents. Exit 0: nothing wrong; 1: open incidents; 2: usage error, or a "
                                   "file that could not be read (the others are still reported). On a terminal, "
                                   "stderr shows progress; a report of more than "
                                   f"{report.RUNS_SHOWN} runs shows the first, the last and the failed ones "
                                   "(--json lists all).")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files ('-' for stdin)")
    p.add_argument("--json", action="store_true", help='print one JSON document {"runs": [...], "incidents": [...]}')
    add_analysis_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Scan every file; each file is its own source with its own state. A file that cannot be read is
    reported on stderr and the others are still scanned; the exit status is then 2."""
    import json

    ctx = build_context(args, env, banner=False)
    wiring = wire(ctx, env)
    disp = wiring.dispatcher
    analyzers = []
    failed = False
    progress = Progress(env.stderr, args.files) if env.stderr_isatty else None
    for n, name in enumerate(args.files):
        source = args.source or ("stdin" if name == "-" else name)
        a = wiring.analyzer(source)
        try:
            if name == "-":
                _feed(a, env.stdin, progress, n)
            else:
                with Path(name).open("rb") as fh:
                    _feed(a, fh, progress, n)
        except OSError as exc:
            if progress is not None:
                progress.clear()
            env.stderr.write(f"specwatch: scan: {name}: {exc.strerror or exc}\n")
            failed = True
            continue
        a.finish()
        analyzers.append(a)
    if progress is not None:
        progress.clear()
    disp.close()
    runs = [r for a in analyzers for r in a.stream.runs]
    incidents = [i for a in analyzers for i in a.incidents()]
    if failed and not analyzers:
        return ExitStatus.USAGE
    if args.json:
        doc = {"runs": [r.as_dict() for r in runs], "incidents": [i.as_dict() for i in incidents]}
        env.stdout.write((json.dumps(doc, indent=2) + "\n").encode())
    else:
        env.stdout.write(report.scan_report(runs, incidents, env.stdout_colour).encode())
    env.stdout.flush()
    if failed:
        return ExitStatus.USAGE
    return ExitStatus.INCIDENTS if any(i.status == "open" for i in incidents) else ExitStatus.OK


class Progress:
    """One line on a terminal's stderr, rewritten as the scan reads: file n of N, MiB read of its size."""

    def __init__(self, stream: TextIO, files: list[str]) -> None:
        self.stream = stream
        self.files = files
        self.shown = False

    def update(self, n: int, done: int) -> None:
        """``done`` bytes of file ``n`` read."""
        name = self.files[n]
        size = 0
        with contextlib.suppress(OSError, ValueError):
            size = 0 if name == "-" else Path(name).stat().st_size
        of = f" of {size / 2**20:.1f} MiB" if size else " MiB"
        files = f" (file {n + 1} of {len(self.files)})" if len(self.files) > 1 else ""
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(f"\r\x1b[Kscanning {Path(name).name}{files}: {done / 2**20:.1f}{of}")
            self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        """Erase the line, so the report and errors start clean."""
        if self.shown:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self.shown = False


def _feed(a: Analyzer, fh: object, progress: Progress | None, n: int) -> None:
    read = getattr(fh, "read")  # noqa: B009 - file objects and stdin alike
    done = 0
    while chunk := read(READ):
        a.feed(chunk)
        done += len(chunk)
        if progress is not None:
            progress.update(n, done)
