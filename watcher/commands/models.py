"""``specwatch models`` and ``specwatch drafts``: what each model really costs, and which draft pays.

Both read the load records in the shared store (written by every pipe, ``watch`` and ``run``); nothing here
estimates: every figure is a buffer line, a slot line, a task or a draft statistic some log printed.
"""

from __future__ import annotations

import argparse
import io
from typing import TYPE_CHECKING, Any

from watcher.exitstatus import ExitStatus
from watcher.notify import sink as notify_sink

from ._common import UsageError

if TYPE_CHECKING:
    from watcher.environment import Environment


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``models`` and ``drafts``."""
    p = sub.add_parser("models", help="each model's measured memory (weights/KV/RS/compute, target and draft) and "
                                      "what would free some",
                       description="Per host and device, every model seen in a recorded load: its measured "
                                   "footprint split into weights, KV, recurrent state (RS) and compute for the target "
                                   "and its draft, the KV and RS cost per slot, the KV cost per 1k tokens of "
                                   "context, the largest and p99 task, and the changes that would free memory, "
                                   "computed from those numbers.")
    _common(p)
    p.set_defaults(handler=run_models)
    d = sub.add_parser("drafts", help="draft scorecard: every draft seen with each target, its acceptance and memory",
                       description="Per target, every draft seen with it: loads, tasks, drafted and accepted "
                                   "tokens, acceptance, mean accepted length, generation speed with and without "
                                   "the draft, and the draft's memory (weights + KV). Marks the draft that gives "
                                   "the most for its memory, and drafts that are the target or nearly its size.")
    _common(d)
    d.set_defaults(handler=run_drafts)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table")
    p.add_argument("--host", metavar="NAME", help="only loads recorded on this host")
    p.add_argument("--state-dir", metavar="DIR", default=argparse.SUPPRESS,
                   help="where the store lives (default: $SPECWATCH_STATE_DIR or the user state dir)")


def records(args: argparse.Namespace, env: Environment) -> list[dict[str, Any]]:
    """Every load record in the store, oldest first."""
    from watcher.loads import LoadBook

    try:
        book = LoadBook.open(notify_sink.db_path(args, env))
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"store: {exc}") from exc
    try:
        return book.records()
    finally:
        book.close()


def run_models(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Print the models table or JSON."""
    import json

    from watcher import fleet

    rows = fleet.model_rows(records(args, env), args.host)
    out = io.StringIO()
    if args.json:
        return _done(env, json.dumps(rows, indent=2) + "\n")
    if not rows:
        return _done(env, "no measured loads recorded yet (pipe a server's log through specwatch, or watch/run it)\n")
    last = None
    for r in rows:
        where = f"{r['host']} / {r['device']}"
        if where != last:
            cap = f" ({fleet.fmt(r['device_total_mib'])})" if r["device_total_mib"] else ""
            out.write(f"{where}{cap}\n")
            last = where
        out.write(f"  {r['model']}  {fleet.fmt(r['total_mib'])}\n")
        for role in ("target", "draft"):
            m = r["memory"][role]
            if m:
                rs = f", RS {fleet.fmt(m['rs_mib'])}" if m.get("rs_mib") else ""
                out.write(f"    {role:6} {r[role] or '?'}: weights {fleet.fmt(m['weights_mib'])}, KV "
                          f"{fleet.fmt(m['kv_mib'])}{rs}, compute {fleet.fmt(m['compute_mib'])}\n")
        slots = f"{r['parallel']} slot{'s' if r['parallel'] != 1 else ''}"
        ctx = f" x {r['n_ctx']:,} tokens" if r["n_ctx"] else ""
        if r.get("kv_unified") and r["n_ctx"]:
            ctx = f" sharing {r['n_ctx']:,} tokens"
        # KV per 1k tokens is the attention cache alone: recurrent state does not grow with the context.
        per = []
        if r["kv_per_slot_mib"]:
            per.append(f"KV {fleet.fmt(r['kv_per_slot_mib'])} per slot")
        if r.get("rs_per_slot_mib"):
            per.append(f"RS {fleet.fmt(r['rs_per_slot_mib'])} per slot")
        if r["kv_per_1k_mib"] and per:
            what = "KV " if r.get("rs_per_slot_mib") else ""
            per.append(f"{what}{fleet.fmt(r['kv_per_1k_mib'])} per 1k tokens")
        out.write(f"    {slots}{ctx}{': ' + ', '.join(per) if per else ''}\n")
        if r["tasks"]:
            out.write(f"    {r['tasks']:,} tasks in {r['loads']} load{'s' if r['loads'] != 1 else ''}: largest "
                      f"{r['task_tokens_max']:,} tokens, p99 {r['task_tokens_p99']:,}\n")
        for a in r["advice"]:
            why = f" ({a['why']})" if a.get("why") else ""
            out.write(f"    {a['change']} frees {fleet.fmt(a['frees_mib'])}{why}\n")
    return _done(env, out.getvalue())


def run_drafts(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Print the draft scorecard or JSON."""
    import json

    from watcher import fleet

    rows = fleet.draft_rows(records(args, env), args.host)
    out = io.StringIO()
    if args.json:
        return _done(env, json.dumps(rows, indent=2) + "\n")
    if not rows:
        return _done(env, "no draft seen in a recorded load yet\n")
    last = None
    for r in rows:
        if r["target"] != last:
            out.write(f"{r['target']}\n")
            last = r["target"]
        acc = f"{r['acceptance']:.1%}" if r["acceptance"] is not None else "-"
        mlen = f", mean length {r['mean_len']:.2f}" if r["mean_len"] else ""
        mem = fleet.fmt(r["draft_mib"]) if r["draft_mib"] else "?"
        speed = ""
        if r["tps"]:
            speed = f", {r['tps']:,.1f} tok/s"
            speed += f" vs {r['tps_without']:,.1f} without ({r['speedup']:.2f}x)" if r["speedup"] else ""
        marks = [m for m, on in (("best value for its memory", r["best_value"]),
                                 ("the target itself", r["same_as_target"]),
                                 ("nearly the target's size", r["near_target_size"] and not r["same_as_target"]))
                 if on]
        mark = f"  <- {'; '.join(marks)}" if marks else ""
        out.write(f"  {r['draft']}: {r['loads']} load{'s' if r['loads'] != 1 else ''}, {r['tasks']} tasks, "
                  f"{r['accepted']:,}/{r['drafted']:,} accepted ({acc}){mlen}{speed}, {mem}{mark}\n")
    return _done(env, out.getvalue())


def _done(env: Environment, text: str) -> ExitStatus:
    env.stdout.write(text.encode())
    return ExitStatus.OK


