"""``specwatch scan FILE...``: analyse whole files and print a report (or JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from watcher import report
from watcher.commands._common import UsageError, add_analysis_options, build_context, wire
from watcher.environment import Environment
from watcher.exitstatus import ExitStatus
from watcher.pipeline import Analyzer

READ = 4 * 1024 * 1024


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``scan``."""
    p = sub.add_parser("scan", help="analyse log files and report server runs and incidents",
                       description="Analyse whole log files: server runs (models, slots, speculation, memory), "
                                   "then incidents. Exit 0: nothing wrong; 1: open incidents; 2: usage or input error.")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files ('-' for stdin)")
    p.add_argument("--json", action="store_true", help='print one JSON document {"runs": [...], "incidents": [...]}')
    add_analysis_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Scan every file; each file is its own source with its own state."""
    ctx = build_context(args, env, banner=False)
    wiring = wire(ctx, env)
    disp = wiring.dispatcher
    analyzers = []
    for name in args.files:
        source = args.source or ("stdin" if name == "-" else name)
        a = wiring.analyzer(source)
        try:
            if name == "-":
                _feed(a, env.stdin)
            else:
                with Path(name).open("rb") as fh:
                    _feed(a, fh)
        except OSError as exc:
            raise UsageError(f"{name}: {exc.strerror or exc}") from exc
        a.finish()
        analyzers.append(a)
    disp.close()
    runs = [r for a in analyzers for r in a.stream.runs]
    incidents = [i for a in analyzers for i in a.incidents()]
    if args.json:
        doc = {"runs": [r.as_dict() for r in runs], "incidents": [i.as_dict() for i in incidents]}
        env.stdout.write((json.dumps(doc, indent=2) + "\n").encode())
    else:
        env.stdout.write(report.scan_report(runs, incidents, env.stdout_colour).encode())
    env.stdout.flush()
    return ExitStatus.INCIDENTS if any(i.status == "open" for i in incidents) else ExitStatus.OK


def _feed(a: Analyzer, fh: object) -> None:
    read = getattr(fh, "read")  # noqa: B009 - file objects and stdin alike
    while chunk := read(READ):
        a.feed(chunk)
