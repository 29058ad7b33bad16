"""``specwatch probe URL``: ask a running server whether it speculates (``--probe`` lives in watcher.probe)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from watcher import probe as pr
from watcher.commands._common import UsageError
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher.environment import Environment


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``probe``."""
    p = sub.add_parser("probe", help="ask a running llama-server whether it really speculates",
                       description="Read URL's /props, /slots and /metrics and report speculation that is "
                                   "configured but not happening. Exit 0: fine or not configured; 1: "
                                   "speculation configured (or --expect-spec) but not happening; 2: usage or "
                                   "no endpoint answered.")
    p.add_argument("url", metavar="URL", help="base URL of the server, e.g. http://127.0.0.1:8080")
    p.add_argument("--allow-remote", action="store_true", help="allow a host that is not loopback")
    p.add_argument("--expect-spec", action="store_true",
                   help="the server should speculate: slots without a speculator are a finding")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Probe once and report."""
    import json

    try:
        base = pr.check_url(args.url, args.allow_remote)
        v = pr.judge(pr.fetch(base), args.expect_spec)
    except pr.ProbeError as exc:
        raise UsageError(f"probe: {exc}") from exc
    if args.json:
        env.stdout.write((json.dumps(v.as_dict(), indent=2) + "\n").encode())
    else:
        lines = [f"{base}: speculation {v.status}: {v.reason}"]
        if v.counters:
            rate = f" ({v.accepted / v.drafted:.1%} accepted)" if v.drafted and v.accepted is not None else ""
            lines.append(f"  generated {v.generated or 0:.0f}, drafted {v.drafted or 0:.0f}, "
                         f"accepted {v.accepted or 0:.0f}{rate}")
        env.stdout.write(("\n".join(lines) + "\n").encode())
    env.stdout.flush()
    return ExitStatus.INCIDENTS if v.finding else ExitStatus.OK
