"""``specwatch budget MODEL...``: would these models fit together, device by device, from measured figures.

Exit 0 when every device has room, 1 when one does not, 2 for a model no recorded load names (or a device
whose memory is known neither from the logs nor from ``--capacity`` / ``[ledger] capacity``).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import TYPE_CHECKING

from watcher import config as cfg
from watcher.exitstatus import ExitStatus

from ._common import UsageError, load_config
from .models import records

if TYPE_CHECKING:
    from watcher.environment import Environment


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``budget``."""
    p = sub.add_parser("budget", help="would these models fit together? (exit 0 yes, 1 no, 2 unknown model)",
                       description="Sums the last measured footprint of each model per device and compares it with "
                                   "the memory the devices reported (or --capacity). Prints the sum, the headroom "
                                   "and, when it does not fit, the cheapest change that makes room (a context that "
                                   "still holds your p99 task, a smaller draft seen before, fewer slots, a shorter "
                                   "context). Exit 0 fits, 1 does not, 2 unknown model or device memory.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="llama-swap model id, or target file name")
    p.add_argument("--capacity", action="append", default=[], metavar="DEVICE=MiB",
                   help="a device's memory (MiB, or with GiB), for a box whose logs do not say it, such as a "
                        "unified-memory APU (repeatable; also [ledger] capacity)")
    p.add_argument("--host", metavar="NAME", help="only loads recorded on this host")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--config", type=Path, metavar="FILE", help="configuration file (its [ledger] capacity)")
    p.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where the store lives (default: $SPECWATCH_STATE_DIR or the user state dir)")
    p.set_defaults(handler=run_budget)


def run_budget(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Print the fit per device; exit 0 fits, 1 does not."""
    import json

    from watcher import fleet, loads

    conf = load_config(args, env)
    try:
        given = {**loads.settings_from(conf).capacity, **loads.parse_capacity(args.capacity)}
    except (ValueError, cfg.ConfigError) as exc:
        raise UsageError(str(exc)) from exc
    try:
        fits = fleet.budget(records(args, env), args.models, given, args.host)
    except fleet.UnknownModelError as exc:
        raise UsageError(str(exc)) from exc
    unknown = [f.device for f in fits if f.capacity_mib is None]
    if unknown:
        raise UsageError(f"no memory size known for {', '.join(unknown)}: give --capacity "
                         f"{unknown[0]}=MiB (the logs of these loads did not report it)")
    ok = all(f.fits for f in fits)
    if args.json:
        env.stdout.write((json.dumps({"fits": ok, "models": args.models, "devices": [f.as_dict() for f in fits]},
                                     indent=2) + "\n").encode())
        return ExitStatus.OK if ok else ExitStatus.INCIDENTS
    out = io.StringIO()
    for f in fits:
        cap = f.capacity_mib or 0.0
        parts = " + ".join(f"{m} {fleet.fmt(v)}" for m, v in f.parts)
        verdict = "fits" if f.fits else "does NOT fit"
        out.write(f"{f.device}: {parts} = {fleet.fmt(f.total_mib)} of {fleet.fmt(cap)}: {verdict}, "
                  f"headroom {fleet.fmt(f.headroom_mib or 0.0)}\n")
        for c in f.changes:
            why = f" ({c['why']})" if c.get("why") else ""
            out.write(f"  make room: {c['model']}: {c['change']} frees {fleet.fmt(c['frees_mib'])}{why}\n")
        freed = sum(c["frees_mib"] for c in f.changes)
        if not f.fits and freed < -(f.headroom_mib or 0.0):
            out.write(f"  the recorded changes free {fleet.fmt(freed)} at most: stop one of these models, or run "
                      "it on another device\n")
    env.stdout.write(out.getvalue().encode())
    return ExitStatus.OK if ok else ExitStatus.INCIDENTS
