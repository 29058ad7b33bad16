"""``specwatch probe URL``, and ``--probe URL`` for the commands that read logs."""

from __future__ import annotations

import argparse
import contextlib
import json

from watcher import config as cfg
from watcher import probe as pr
from watcher.commands._common import OPTION_HOOKS, SINK_FACTORIES, UsageError
from watcher.dispatch import Dispatcher
from watcher.environment import Environment
from watcher.exitstatus import ExitStatus
from watcher.incidents import Incident


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


def _options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("probe")
    g.add_argument("--probe", metavar="URL", help="also poll this llama-server's /props, /slots, /metrics")
    g.add_argument("--probe-interval", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between polls (default 30)")
    g.add_argument("--probe-allow-remote", action="store_true", help="allow a --probe host that is not loopback")
    g.add_argument("--probe-expect-spec", action="store_true",
                   help="slots without a speculator are a finding even if nothing says speculation is configured")


class ProbeSink:
    """Carries a poller; ``attach`` gives it the dispatcher its findings go through."""

    def __init__(self, url: str, interval: float, expect: bool, env: Environment) -> None:
        self.url, self.interval, self.expect, self.env = url, interval, expect, env
        self.poller: pr.Poller | None = None

    def attach(self, disp: Dispatcher) -> None:
        """Start polling; findings go to ``disp.changed`` like the log's incidents."""
        if self.poller is None:
            self.poller = pr.Poller(self.url, self.interval, disp.changed, self.expect, self._warn)
            self.poller.start()

    def _warn(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.env.stderr.write(f"specwatch: {text}\n")

    def incident(self, inc: Incident, change: str) -> None:
        """Log incidents need nothing from the probe."""

    def close(self) -> None:
        """Stop polling."""
        if self.poller is not None:
            self.poller.stop()


def _factory(args: argparse.Namespace, env: Environment, _conf: cfg.Config) -> ProbeSink | None:
    url = getattr(args, "probe", None)
    if not url:
        return None
    try:
        base = pr.check_url(url, bool(getattr(args, "probe_allow_remote", False)))
    except pr.ProbeError as exc:
        raise UsageError(f"--probe: {exc}") from exc
    return ProbeSink(base, float(getattr(args, "probe_interval", 30.0)),
                     bool(getattr(args, "probe_expect_spec", False)), env)


OPTION_HOOKS.append(_options)
SINK_FACTORIES.append(_factory)
