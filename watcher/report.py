"""Human-facing text: the stderr banner, the exit summary and the ``scan`` report."""

from __future__ import annotations

import textwrap
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from watcher.incidents import Incident, basename, slot_list

if TYPE_CHECKING:
    from watcher.state import Run

#: A report of more runs than this (a log of a restart loop, a year of LM Studio) is summarised; --json lists all.
RUNS_SHOWN = 20
RUNS_EDGE = 3
RUNS_FAILED = 10
_RED, _YEL, _GRN, _BOLD, _DIM, _OFF = "\x1b[1;97;41m", "\x1b[1;33m", "\x1b[32m", "\x1b[1m", "\x1b[2m", "\x1b[0m"


class Painter:
    """ANSI styling that disappears when colour is off."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, style: str, text: str) -> str:
        return f"{style}{text}{_OFF}" if self.colour else text


def milestone(n: int) -> int:
    """The largest of 1, 2, 5, 10, 20, 50, ... not above ``n``: when a recurring failure is worth a line again."""
    step = 1
    while step * 10 <= n:
        step *= 10
    return max(m for m in (step, 2 * step, 5 * step) if m <= n) if n >= 1 else 0


def banner(inc: Incident, colour: bool, width: int = 100, then: Iterable[Incident] = ()) -> str:
    """A block a person cannot miss among thousands of server lines; ``then``: incidents this one caused."""
    p = Painter(colour)
    sev = inc.severity.upper()
    head = "SPECWATCH " + ("RESOLVED" if inc.status == "resolved" else sev)
    rule = "=" * width
    # Starts with a newline: the server's last line may not have ended when the banner arrives.
    lines = ["", p(_RED if inc.severity == "critical" and inc.status == "open" else _YEL, f"{rule}"),
             p(_BOLD, f"{head}: {inc.title}")]
    lines += _details(inc, width)
    for f in then:
        lines += _wrapped("then", f"{f.title} (run {f.run}, lines {f.first_line}-{f.last_line}, id "
                                  f"{f.key[:8]})", width)
    lines.append(p(_RED if inc.severity == "critical" and inc.status == "open" else _YEL, rule))
    return "\n".join(lines) + "\n"


def _wrapped(label: str, value: Any, width: int) -> list[str]:
    """A labelled banner field wrapped to ``width``; nothing for an empty value."""
    if value in (None, "", []):
        return []
    wrapped = textwrap.wrap(str(value), width - 14, break_on_hyphens=False) or [""]
    return [f"  {label:<11} {wrapped[0]}", *(f"  {'':<11} {w}" for w in wrapped[1:])]


def _details(inc: Incident, width: int) -> list[str]:
    out: list[str] = []

    def field(label: str, value: Any) -> None:
        out.extend(_wrapped(label, value, width))

    field("kind", f"{inc.kind} ({inc.severity}, {inc.confidence})")
    if inc.first_line:
        field("source", f"{inc.source} (run {inc.run}, lines {inc.first_line}-{inc.last_line})")
    else:  # not from a log line: the --probe poller's finding names the URL it asked
        field("source", inc.source)
    field("model", basename(inc.model) or None)
    if inc.extra.get("router_port") is not None:  # a llama-server router's child, named by its spawn line
        field("router", f"{inc.extra.get('swap_model') or '?'} (child on port {inc.extra['router_port']})")
    else:
        field("llama-swap", inc.extra.get("swap_model"))
    field("draft", inc.draft_model)
    field("slots", slot_list(inc.slots) or None)
    if inc.device or inc.mib:
        field("memory", f"{inc.mib:.0f} MiB requested on {inc.device or '?'}" if inc.mib else inc.device)
    field("why", inc.reason)
    if inc.count > 1:
        field("seen", f"{inc.count} times, one per server load (runs {inc.run}-{inc.extra.get('last_run', inc.run)})")
    field("inferred", inc.extra.get("inferred_from"))  # what a finding drawn from partial evidence rests on
    field("server", inc.server_state.replace("_", " "))
    field("what to do", inc.hint)
    if inc.status == "resolved":
        field("resolved", inc.resolution)
    if inc.evidence:
        out.append("  evidence:")
        room = width - 14
        for e in inc.evidence[:6]:
            # Wrapped, not cut: the words that prove the failure ("cudaMalloc failed: out of memory") are often
            # at the end of a long line. Three rows at most, so one huge line cannot bury the banner.
            rows = textwrap.wrap(e.text, room, max_lines=3, placeholder=" …", break_on_hyphens=False) or [""]
            out.append(f"    {e.lineno:>7}: {rows[0]}")
            out.extend(f"    {'':>7}  {row}" for row in rows[1:])
    return out


def summary(incidents: Iterable[Incident], colour: bool) -> str:
    """At exit: what is still wrong, one line each."""
    p = Painter(colour)
    still = [i for i in incidents if i.status == "open"]
    if not still:
        return p(_GRN, "specwatch: no open incidents") + "\n"
    lines = [p(_BOLD, f"specwatch: {len(still)} open incident(s) at exit:")]
    causes, followers = _grouped(still)
    for inc in causes:
        mark = p(_RED, "CRITICAL") if inc.severity == "critical" else p(_YEL, inc.severity.upper())
        seen = f" ({inc.count} times)" if inc.count > 1 else ""
        lines.append(f"  {mark} {inc.title}{seen}")
        if inc.hint:
            lines.append(f"    -> {textwrap.shorten(inc.hint, 180)}")
        lines.extend(f"    then: {f.title}" for f in followers.get(inc.key, []))
    return "\n".join(lines) + "\n"


def scan_report(runs: list[Run], incidents: list[Incident], colour: bool, width: int = 100) -> str:
    """The ``scan`` report: runs first (what the server was), then incidents (what went wrong)."""
    p = Painter(colour)
    out = [p(_BOLD, f"Server runs: {len(runs)}")]
    if len(runs) <= RUNS_SHOWN:
        for run in runs:
            out.extend(_run_lines(run, p))
    else:
        out[0] += " (speculation: " + ", ".join(f"{n} {spec}" for spec, n in Counter(r.speculation for r in runs)
                                                 .most_common()) + ")"
        shown = _runs_shown(runs)
        hidden = 0
        for n, run in enumerate(runs):
            if n not in shown:
                hidden += 1
                continue
            if hidden:
                out.append(p(_DIM, f"  … {hidden} runs not shown"))
                hidden = 0
            out.extend(_run_lines(run, p))
        out.append(p(_DIM, f"  ({len(runs) - len(shown)} of {len(runs)} runs not shown: the first and last "
                           f"{RUNS_EDGE}, and the first {RUNS_FAILED} whose speculation failed, are; "
                           "scan --json lists every run)"))
    out.append("")
    open_n = sum(1 for i in incidents if i.status == "open")
    out.append(p(_BOLD, f"Incidents: {len(incidents)} ({open_n} open)"))
    if not incidents:
        out.append("  none: " + ("speculation looks healthy" if any(r.spec_confirmed for r in runs)
                                 else "nothing wrong recognised"))
    causes, followers = _grouped(incidents)
    if len(causes) <= RUNS_SHOWN:
        for inc in causes:
            out.append(banner(inc, colour, width, followers.get(inc.key, [])).rstrip("\n"))
        return "\n".join(out) + "\n"
    # Many incidents of the same kind and title (one per model, per source...): one banner each, then a count.
    groups: dict[tuple[str, str, str], list[Incident]] = {}
    for inc in causes:
        groups.setdefault((inc.kind, inc.title, inc.status), []).append(inc)
    for n, same in enumerate(groups.values()):
        if n == RUNS_SHOWN:
            out.append(p(_DIM, f"  … {len(groups) - n} more kinds of incident not shown (scan --json lists all)"))
            break
        out.append(banner(same[0], colour, width, followers.get(same[0].key, [])).rstrip("\n"))
        if len(same) > 1:
            runs_of = sorted({i.run for i in same[1:]})
            listed = ", ".join(str(r) for r in runs_of[:8]) + (", …" if len(runs_of) > 8 else "")
            out.append(p(_DIM, f"  and {len(same) - 1} more like it (runs {listed})"))
    return "\n".join(out) + "\n"


def _grouped(incidents: Iterable[Incident]) -> tuple[list[Incident], dict[str, list[Incident]]]:
    """Incidents that stand alone, and those that follow one of them (by its key) listed under it."""
    items = list(incidents)
    keys = {i.key for i in items}
    followers: dict[str, list[Incident]] = {}
    causes = []
    for inc in items:
        cause = str(inc.extra.get("follows") or "")
        if cause in keys and cause != inc.key:
            followers.setdefault(cause, []).append(inc)
        else:
            causes.append(inc)
    return causes, followers


def _runs_shown(runs: list[Run]) -> set[int]:
    """Which runs a long report shows: the first and last few, and the first few that failed."""
    shown = set(range(RUNS_EDGE)) | set(range(len(runs) - RUNS_EDGE, len(runs)))
    failed = [n for n, r in enumerate(runs) if r.speculation == "failed" and n not in shown]
    return shown | set(failed[:RUNS_FAILED])


def _run_lines(run: Run, p: Painter) -> list[str]:
    spec = run.speculation
    colour = {"on": _GRN, "failed": _RED, "off": _YEL}.get(spec, _DIM)
    build = f" build {run.build}" if run.build else ""
    head = f"  run {run.ordinal} ({run.source}, lines {run.first_line}-{run.last_line}{build}): " \
           f"speculation {p(colour, spec)}"
    lines = [head]
    reload_note = " (same as before reload)" if run.inherited_model else ""
    lines.append(f"    target: {basename(run.target_model) or '?'}{reload_note}")
    if run.draft_model or run.spec_mode:
        mode = f" [{run.spec_mode}]" if run.spec_mode else ""
        lines.append(f"    draft:  {basename(run.draft_model) or '-'}{mode}")
    if run.slots:
        parts = []
        for s in sorted(run.slots.values(), key=lambda s: s.id):
            acc = f", acc {s.accepted}/{s.drafted}" if s.drafted else ""
            parts.append(f"{s.id}: n_ctx={s.n_ctx or '?'} spec={s.speculative}{acc}")
        lines.append("    slots:  " + "; ".join(parts))
    if run.tasks_done:
        rate = f", acceptance {run.accepted / run.drafted:.1%} ({run.accepted}/{run.drafted})" if run.drafted else ""
        lines.append(f"    tasks:  {run.tasks_done}{rate}")
    if not run.ledger.empty():
        lines.append("    memory (MiB):")
        table = run.ledger.table()
        # Recurrent state (Mamba/RWKV, hybrid models) gets its own column only where a load has one.
        kinds = ("model", "kv", "rs", "compute") if any(r["target_rs_mib"] or r["draft_rs_mib"] for r in table) \
            else ("model", "kv", "compute")
        cols = "w/kv/rs/compute" if "rs" in kinds else "w/kv/compute"
        lines.append(f"      device       free   target {cols}      draft {cols}   failed")
        for row in table:
            def f(v: Any) -> str:
                return "-" if v is None else f"{v:.0f}"
            t = "/".join(f(row[f"target_{k}_mib"]) for k in kinds)
            d = "/".join(f(row[f"draft_{k}_mib"]) for k in kinds)
            failed = f"{f(row['failed_mib'])} ({row['failed_role']})" if row["failed_mib"] else "-"
            lines.append(f"      {row['device']:<10} {f(row['free_mib']):>6}   {t:>20}   {d:>20}   {failed}")
    return lines
