"""``specwatch patterns [list|test FILE]``: the catalogue, and which lines of a log it recognises."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from watcher.commands import audit as audit_command
from watcher.commands._common import UsageError, catalogue_for, load_config
from watcher.exitstatus import ExitStatus
from watcher.relevance import NOISE, RELEVANT

if TYPE_CHECKING:
    from watcher.classify import Classifier
    from watcher.environment import Environment


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``patterns`` with its actions ``list`` (the default) and ``test``."""
    p = sub.add_parser("patterns", help="list the pattern catalogue, or test it against a log",
                       description="'patterns' lists the catalogue; 'patterns test FILE' shows which lines match "
                                   "which pattern and which relevant-looking lines match none.")
    _common_options(p)
    p.set_defaults(handler=run)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    ls = actions.add_parser("list", help="list every pattern (default)")
    _common_options(ls)
    t = actions.add_parser("test", help="show which lines of FILE match which pattern, and which match none")
    t.add_argument("file", type=Path, help="log file")
    t.add_argument("--matched", action="store_true", help="also print every matched line")
    _common_options(t)
    audit_command.add_action(actions, _common_options)


def _common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration file whose [patterns] extra is loaded, as by the analysing commands "
                        "(default: $SPECWATCH_CONFIG or the user config dir's specwatch/config.toml)")
    p.add_argument("--patterns", type=Path, action="append", default=[], metavar="PATH",
                   help="extra pattern file or directory, after the config file's (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """List, test or audit the catalogue the analysing commands load (config's extra patterns included)."""
    from watcher.classify import Classifier

    catalogue = catalogue_for(args, load_config(args, env))
    catalogue.slow.say = env.stderr.write  # `patterns test` on a log shows a regex timing out, as scan does
    if args.action == "test":
        return _test(Classifier(catalogue), args, env)
    if args.action == "audit":
        return audit_command.run(catalogue, args, env)
    return _list(catalogue, args, env)


def _out(env: Environment, text: str) -> None:
    env.stdout.write(text.encode())


def _list(catalogue: Any, args: argparse.Namespace, env: Environment) -> ExitStatus:
    import json

    rows = [{"id": p.id, "event": p.event, "origin": p.origin, "since": p.since, "until": p.until,
             "level": p.level, "anchors": list(p.anchors), "examples": len(p.examples)} for p in catalogue.patterns]
    if args.json:
        _out(env, json.dumps({"files": list(catalogue.files), "patterns": rows}, indent=2) + "\n")
        return ExitStatus.OK
    _out(env, f"{len(rows)} patterns from {len(catalogue.files)} files\n")
    _out(env, f"{'id':<32} {'event':<22} {'since':<8} {'until':<8} origin\n")
    for r in rows:
        _out(env, f"{r['id']:<32} {r['event']:<22} {r['since']:<8} {r['until']:<8} {r['origin']}\n")
    return ExitStatus.OK


def _test(classifier: Classifier, args: argparse.Namespace, env: Environment) -> ExitStatus:
    import json

    from watcher.events import Record
    from watcher.framing import Framer

    framer = Framer(None, source=str(args.file))
    counts: dict[str, int] = {p.id: 0 for p in classifier.catalogue.patterns}
    matched: list[tuple[int, list[str], str]] = []
    unmatched: list[tuple[int, str]] = []
    try:
        with args.file.open("rb") as fh:
            records: list[Record] = []
            # Without a selector every line is a record (nothing is tallied).
            while chunk := fh.read(1 << 20):
                records.extend(r for r in framer.feed(chunk) if isinstance(r, Record))
            records.extend(r for r in framer.flush() if isinstance(r, Record))
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from exc
    for rec in records:
        hits = classifier.matches(rec)
        for p in hits:
            counts[p.id] += 1
        if hits:
            matched.append((rec.lineno, [p.id for p in hits], rec.text))
        elif RELEVANT.search(rec.text) and not NOISE.search(rec.text):
            unmatched.append((rec.lineno, rec.text))
    if args.json:
        doc = {"file": str(args.file), "lines": framer.lines,
               "matched": [{"line": n, "patterns": ids, "text": t} for n, ids, t in matched],
               "unmatched_relevant": [{"line": n, "text": t} for n, t in unmatched],
               "counts": {k: v for k, v in counts.items() if v}}
        _out(env, json.dumps(doc, indent=2) + "\n")
        return ExitStatus.OK
    _out(env, f"{args.file}: {framer.lines} lines, {len(matched)} recognised, "
              f"{len(unmatched)} relevant-looking lines matched by no pattern\n\n")
    _out(env, "Pattern hits:\n")
    for pid, n in counts.items():
        if n:
            _out(env, f"  {n:>6}  {pid}\n")
    if args.matched:
        _out(env, "\nRecognised lines:\n")
        for n, ids, text in matched:
            _out(env, f"  {n:>7}  [{', '.join(ids)}] {text.strip()[:160]}\n")
    if unmatched:
        _out(env, "\nRelevant-looking lines no pattern matches (new wording? see 'Adding a pattern' in the README):\n")
        for n, text in unmatched[:200]:
            _out(env, f"  {n:>7}  {text.strip()[:160]}\n")
        if len(unmatched) > 200:
            _out(env, f"  ... and {len(unmatched) - 200} more\n")
    return ExitStatus.OK
