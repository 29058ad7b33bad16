"""``specwatch notify test|list|flush``: check targets and deliver what is queued."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.config import flag_range
from watcher.exitstatus import ExitStatus
from watcher.notify import sink as notify_sink

from ._common import UsageError, load_config
from .status import open_store

if TYPE_CHECKING:
    from watcher.environment import Environment


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``notify`` and its actions."""
    p = sub.add_parser("notify", help="test, list and flush notification targets",
                       description="test: send a test message to every target and report each result. "
                                   "list: show targets (secrets redacted) and undelivered messages. "
                                   "flush: tell targets added since about incidents still open, then try every "
                                   "queued message now, ignoring the retry backoff (retrying until --wait runs "
                                   "out); lists what stays queued.")
    p.add_argument("action", choices=["test", "list", "flush"])
    p.add_argument("--wait", type=flag_range("--wait"), default=0.0, metavar="SECONDS",
                   help="flush: keep retrying failed deliveries for up to SECONDS (default: one pass)")
    p.add_argument("--config", type=Path, metavar="FILE", help="configuration file")
    notify_sink.add_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Dispatch to the action."""
    from watcher.notify.contract import Delivery
    from watcher.notify.outbox import Outbox
    from watcher.notify.redact import Redactor
    from watcher.notify.targets import labeller
    from watcher.notify.worker import Worker, send

    conf = load_config(args, env)
    targets = notify_sink.targets_from(args, env, conf)
    redact = Redactor(t.url for t in targets)
    if not targets:
        raise UsageError("notify: no targets configured (--notify URL, $SPECWATCH_NOTIFY, [notify] urls)")
    if args.action == "list":
        store = open_store(args, env)
        try:
            pending = Outbox(store).pending()
            unsent = Outbox(store).unsent_for_ack()
        finally:
            store.close()
        shown = labeller(targets, redact)
        by_label: dict[str, int] = {}
        for row in pending:
            by_label[shown(row[1])] = by_label.get(shown(row[1]), 0) + 1
        for t in targets:
            tags = f"  [{','.join(sorted(t.tags))}]" if t.tags else ""
            env.stdout.write(f"{t.label}{tags}  ({by_label.get(t.label, 0)} queued)\n".encode())
        for _rid, label, incident, kind, attempts, _state, due, error in pending:
            env.stdout.write(f"  queued: {kind} {incident[:8]} -> {shown(label)}, {attempts} attempts, next "
                             f"{time.strftime('%H:%M:%S', time.localtime(due))}"
                             f"{': ' + redact(error) if error else ''}\n".encode())
        for label, incident, kind in unsent:
            env.stdout.write(f"  cancelled: {kind} {incident[:8]} -> {shown(label)}: acknowledged before it was "
                             "sent\n".encode())
        return ExitStatus.OK
    if args.action == "test":
        failed = 0
        for t in targets:
            d = Delivery(t.id, "specwatch test", "specwatch can reach this target.", "info", (), redact=redact)
            res = send(t, d.title, d.body, d, redact)
            failed += not res.ok
            env.stdout.write(f"{'ok    ' if res.ok else 'FAILED'}  {t.label}{'' if res.ok else ': ' + res.error}\n"
                             .encode())
        return ExitStatus.INCIDENTS if failed else ExitStatus.OK
    def log(text: str) -> None:
        env.stderr.write(text + "\n")

    open_store(args, env).close()  # a store that cannot be opened is one line and exit 2, before any send
    worker = Worker(notify_sink.db_path(args, env), targets, notify_sink.settings_from(args, conf), env.clock, log)
    deadline = time.monotonic() + args.wait
    try:
        # A target added since an incident opened is told about it; then everything queued is tried now,
        # whatever its backoff said.
        worker.announce_open()
        while True:
            worker.due_now()
            worker.run_once()
            left = worker.pending_count()
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    finally:
        worker.stop()
    env.stdout.write(f"delivered {worker.delivered} message rows, {left} still queued\n".encode())
    store = open_store(args, env)
    try:
        stuck = Outbox(store).pending([t.id for t in targets])
    finally:
        store.close()
    shown = labeller(targets, redact)
    for _rid, label, incident, kind, attempts, _state, _due, error in stuck:
        env.stdout.write(f"  queued: {kind} {incident[:8]} -> {shown(label)}, {attempts} attempts"
                         f"{': ' + redact(error) if error else ''}\n".encode())
    return ExitStatus.INCIDENTS if left else ExitStatus.OK
