"""``specwatch patterns audit SRC``: which log messages of a llama.cpp source tree the catalogue recognises."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from watcher.commands._common import UsageError
from watcher.config import flag_range
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher import audit
    from watcher.catalogue import Catalogue
    from watcher.environment import Environment


def add_action(actions: argparse._SubParsersAction,  # type: ignore[type-arg]
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the ``audit`` action under ``patterns``."""
    a = actions.add_parser(
        "audit", help="check the catalogue against a llama.cpp source tree",
        description="Extract the log format strings of a llama.cpp source tree (a git checkout, or an unpacked "
                    "source package that vendors llama.cpp, e.g. llama-cpp-python's sdist) on the paths that matter "
                    "to speculative decoding and memory, instantiate each as the line it prints, and report which "
                    "the catalogue recognises, which it misses, and which llama.cpp patterns no longer appear.")
    a.add_argument("src", type=Path, metavar="SRC",
                   help="llama.cpp source tree (or a directory containing vendor/llama.cpp)")
    a.add_argument("--all", action="store_true", help="also list recognised and deliberately ignored messages")
    a.add_argument("--fail-under", type=flag_range("--fail-under"), metavar="PCT",
                   help="exit 1 when coverage is below PCT percent (for CI)")
    common(a)


def run(catalogue: Catalogue, args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Audit and print the report."""
    import json

    from watcher import audit

    if not args.src.is_dir():
        raise UsageError(f"{args.src}: not a directory")
    report = audit.audit(args.src, catalogue)
    if report.files == 0:
        raise UsageError(f"{args.src}: no llama.cpp sources found (expected common/, src/, ggml/ or vendor/llama.cpp)")
    out = env.stdout
    if args.json:
        out.write((json.dumps(report.as_dict(), indent=2) + "\n").encode())
    else:
        out.write(render(report, show_all=args.all).encode())
    if args.fail_under is not None and report.coverage() * 100 < args.fail_under:
        return ExitStatus.INCIDENTS
    return ExitStatus.OK


def render(report: audit.Report, show_all: bool = False) -> str:
    """The human-readable report."""
    rel = len(report.recognised) + len(report.missed)
    lines = [
        f"{report.root}: {report.files} source files, {report.calls} log calls, {rel} relevant "
        f"(+{len(report.ignored)} ignored by design)",
        f"coverage: {len(report.recognised)}/{rel} = {report.coverage():.1%} "
        f"(default verbosity only: {report.coverage(visible_only=True):.1%})",
        "",
    ]
    if report.missed:
        lines.append(f"Missed ({len(report.missed)}): relevant messages no pattern recognises")
        for m in report.missed:
            lines.append(f"  {m.level:<6} {m.file}:{m.line}  {m.lines[0][:150] if m.lines else m.example}")
        lines.append("")
    current = [p for p in report.absent if not p.until]
    retired = [p for p in report.absent if p.until]
    if current:
        lines.append(f"Current patterns with no message in this source ({len(current)}): "
                     "reworded or removed, or printed by other means (exceptions, asserts, vendor code)")
        for p in current:
            lines.append(f"  {p.id:<32} since {p.since or '?'}")
        lines.append("")
    if retired:
        lines.append(f"Retired patterns kept for older builds ({len(retired)}): "
                     + ", ".join(f"{p.id} (until {p.until})" for p in retired))
        lines.append("")
    if report.foreign:
        lines.append(f"Patterns of other programs, not audited ({len(report.foreign)}): "
                     + ", ".join(p.id for p in report.foreign))
        lines.append("")
    if show_all:
        lines.append(f"Recognised ({len(report.recognised)}):")
        for m, pid in report.recognised:
            lines.append(f"  {pid:<28} {m.level:<6} {m.file}:{m.line}  {m.lines[0][:120] if m.lines else ''}")
        lines.append("")
        lines.append(f"Ignored by design ({len(report.ignored)}):")
        for m, why in report.ignored:
            lines.append(f"  [{why}] {m.file}:{m.line}  {m.lines[0][:110] if m.lines else ''}")
        lines.append("")
    else:
        reasons = Counter(why for _, why in report.ignored)
        if reasons:
            lines.append("Ignored by design: " + "; ".join(f"{why} ({n})" for why, n in reasons.most_common()))
            lines.append("(--all lists every message)")
    return "\n".join(lines).rstrip("\n") + "\n"
