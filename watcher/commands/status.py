"""``specwatch status``, ``ack`` and ``history``: the incidents a person has not dealt with yet.

``ack`` queues, in the acknowledgement's own transaction, the messages that end the incidents' alerts (for
targets whose plugin wants them: Alertmanager), then sends them at once to the targets it knows from the
same flags, environment and config file as every other command. What it cannot send (a target it does
not know, or one that is down) stays queued: a running watcher with that target sends it within about a
second, retrying while the target is down, or ``specwatch notify flush`` does.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.config import flag_range
from watcher.exitstatus import ExitStatus
from watcher.notify import sink as notify_sink

from ._common import UsageError, load_config

if TYPE_CHECKING:
    from watcher.environment import Environment
    from watcher.notify.targets import Target
    from watcher.store import Store


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``status``, ``ack`` and ``history``."""
    p = sub.add_parser("status", help="show open incidents (exit 1 when some are open)",
                       description="Open and acknowledged incidents in the store. Exit status 0 when none are "
                                   "open, 1 when some are (acknowledged ones do not count).")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    _state(p)
    p.set_defaults(handler=run_status)
    a = sub.add_parser("ack", help="acknowledge incidents: stops their repeats and ends their Alertmanager alerts",
                       description="Acknowledge open incidents by id (or a unique prefix, as status prints it). "
                                   "Stops their repeats and ends their alerts in Alertmanager: sent now to the "
                                   "targets configured here, else by the running watcher (or notify flush).")
    a.add_argument("ids", nargs="*", metavar="ID", help="incident id or unique prefix")
    a.add_argument("--all", action="store_true", help="acknowledge every open incident")
    a.add_argument("--note", default="", metavar="TEXT", help="why, for the history")
    a.add_argument("--config", type=Path, metavar="FILE", help="configuration file (its [notify] targets)")
    a.add_argument("--notify", action="append", metavar="URL", default=[],
                   help="a target to send the acknowledgement to now (also $SPECWATCH_NOTIFY and [notify] urls)")
    a.add_argument("--notify-config", action="append", metavar="FILE", default=[],
                   help="apprise configuration file with more targets (repeatable)")
    _state(a)
    a.set_defaults(handler=run_ack)
    h = sub.add_parser("history", help="recent incident transitions",
                       description="Opened, repeated, acknowledged, reopened and resolved incidents, newest first.")
    h.add_argument("--limit", type=flag_range("--limit"), default=50, metavar="N", help="at most N lines (default 50)")
    h.add_argument("--since", type=flag_range("--since"), metavar="HOURS", help="only the last HOURS hours")
    h.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    _state(h)
    h.set_defaults(handler=run_history)


def _state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where the incident store lives (default: $SPECWATCH_STATE_DIR or the user state dir)")


def open_store(args: argparse.Namespace, env: Environment) -> Store:
    """The incident store of ``--state-dir`` (or the default); one line (exit 2) when it cannot be opened."""
    from watcher import db
    from watcher.store import Store

    try:
        path = notify_sink.db_path(args, env)
    except OSError as exc:
        raise UsageError(f"incident store {db.describe(Path(exc.filename or ''), exc)}") from exc
    try:
        return Store.open(path)
    except db.StoreError as exc:
        raise UsageError(f"incident store {exc}") from exc


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def run_status(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Print the table or JSON; exit 1 when open incidents exist."""
    import json

    store = open_store(args, env)
    try:
        rows = store.open_incidents()
    finally:
        store.close()
    if args.json:
        env.stdout.write((json.dumps([r.as_dict() for r in rows], indent=2) + "\n").encode())
    elif not rows:
        env.stdout.write(b"no open incidents\n")
    else:
        lines = [f"{'ID':8}  {'STATUS':12}  {'SEVERITY':8}  {'COUNT':>5}  {'LAST SEEN':16}  TITLE"]
        for r in rows:
            lines.append(f"{r.key[:8]}  {r.status:12}  {r.severity:8}  {r.count:>5}  {_when(r.last_seen):16}  "
                         f"{r.title}")
            if r.status == "acknowledged" and r.ack_note:
                lines.append(f"{'':8}  note: {r.ack_note}")
        env.stdout.write(("\n".join(lines) + "\n").encode())
    return ExitStatus.INCIDENTS if any(r.status == "open" for r in rows) else ExitStatus.OK


def run_ack(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Acknowledge by id or ``--all``; stops repeats, queues and sends the messages that end the alerts."""
    from watcher.notify.outbox import Outbox
    from watcher.store import AmbiguousIdError

    if bool(args.ids) == bool(args.all):
        raise UsageError("ack: give incident ids or --all (not both)")
    targets = notify_sink.targets_from(args, env, load_config(args, env))
    store = open_store(args, env)
    try:
        keys: list[str] | None = None
        if args.ids:
            keys = []
            for ident in args.ids:
                try:
                    key = store.resolve_id(ident)
                except AmbiguousIdError as exc:
                    raise UsageError(str(exc)) from exc
                if key is None:
                    raise UsageError(f"ack: no incident with id {ident} (see specwatch status)")
                keys.append(key)
        done = Outbox(store).acknowledge(keys, args.note, env.clock())
        for k in done.keys:
            inc = store.get(k)
            env.stdout.write(f"acknowledged {k[:8]}  {inc.title if inc else ''}\n".encode())
    finally:
        store.close()
    if not done.keys:
        env.stdout.write(b"nothing to acknowledge (no matching open incident)\n")
    if done.rows:
        _send_ends(args, env, targets, done.rows)
    return ExitStatus.OK


def _send_ends(args: argparse.Namespace, env: Environment, targets: list[Target],
               rows: list[tuple[int, str, str]]) -> None:
    """Send the queued alert ends to the targets this process knows; say where each one stands."""
    from watcher.notify.targets import Target
    from watcher.notify.worker import Worker

    known = {t.id for t in targets}
    for _rid, target_id, label in rows:
        # A target whose label is its whole URL (nothing secret in it: the desktop's specwatch://) needs no
        # configuration here: the acknowledgement closes its bubbles now.
        if target_id not in known and Target(label).id == target_id:
            targets = [*targets, Target(label)]
            known.add(target_id)
    mine = [r for r in rows if r[1] in known]
    if mine:
        worker = Worker(notify_sink.db_path(args, env), [t for t in targets if t.id in {r[1] for r in mine}],
                        notify_sink.settings_from(args, load_config(args, env)), env.clock)
        try:
            results = {res.target.id: res for res in worker.run_once(only=[r[0] for r in mine])}
        finally:
            worker.stop()
        for target_id, label in dict.fromkeys((r[1], r[2]) for r in mine):
            res = results.get(target_id)
            if res is None:  # a running watcher claimed the row first: it is sending it
                env.stdout.write(f"alert end being sent by a running specwatch: {label}\n".encode())
            elif res.ok:
                env.stdout.write(f"alert ended: {label}\n".encode())
            else:
                env.stdout.write(f"queued: {label}: {res.error} (retried by a running specwatch with this "
                                 f"target, or specwatch notify flush)\n".encode())
    for label in dict.fromkeys(label for _, target, label in rows if target not in known):
        env.stdout.write(f"queued: {label} (sent by the running specwatch with this target, or specwatch "
                         f"notify flush --notify URL)\n".encode())


def run_history(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Recent transitions, newest first."""
    import json

    store = open_store(args, env)
    try:
        since = env.clock() - args.since * 3600 if args.since is not None else None
        rows = store.history(args.limit, since)
    finally:
        store.close()
    out = []
    for at, key, what, note, title in rows:
        if args.json:
            out.append(json.dumps({"at": at, "id": key, "what": what, "note": note, "title": title}))
        else:
            out.append(f"{_when(at)}  {key[:8]}  {what:12}  {title}" + (f"  ({note})" if note else ""))
    env.stdout.write(("\n".join(out) + "\n").encode() if out else b"no history\n")
    return ExitStatus.OK
