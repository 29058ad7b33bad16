"""Options and set-up shared by the commands that analyse logs."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO, cast

from watcher import metrics, probe
from watcher.dispatch import Extension
from watcher.errors import UsageError
from watcher.notify import sink as notify_sink

if TYPE_CHECKING:
    from watcher import catalogue as cat
    from watcher import config as cfg
    from watcher import loads
    from watcher.dispatch import Dispatcher, Sink, Wiring
    from watcher.environment import Environment
    from watcher.incidents import Incident
    from watcher.state import Settings

__all__ = ["EXTENSIONS", "TERMINAL_WAIT", "Context", "UsageError", "add_analysis_options", "build_context",
           "catalogue_for", "incidents_at_exit", "load_catalogue", "load_config", "terminal", "wire"]

#: The optional parts of every command that reads logs, in the order --help shows their options and the
#: dispatcher feeds their sinks: the metrics endpoint, the store and notifications, the probe poller.
EXTENSIONS: tuple[Extension, ...] = (metrics.EXTENSION, notify_sink.EXTENSION, probe.EXTENSION)

#: Seconds the exit waits for stderr to take the last banners and the summary (a paused terminal may never).
TERMINAL_WAIT = 5.0


def add_analysis_options(p: argparse.ArgumentParser) -> None:
    """Options of every command that reads logs."""
    g = p.add_argument_group("analysis")
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="configuration file (default: $SPECWATCH_CONFIG or the user config dir's "
                        "specwatch/config.toml)")
    g.add_argument("--patterns", type=Path, action="append", default=[], metavar="PATH",
                   help="extra pattern file or directory, after the shipped catalogue (repeatable)")
    g.add_argument("--events", metavar="FILE",
                   help="write every recognised event and incident as JSON lines to FILE ('-' for stderr)")
    g.add_argument("--source", metavar="NAME", help="name of this log source in incidents (default: stdin / the file)")
    for ext in EXTENSIONS:
        ext.add_options(p)
    # The command line layer gives a command that takes these options its stderr through ``terminal``.
    p.set_defaults(reads_logs=True)


@contextlib.contextmanager
def terminal(env: Environment, wait: float = TERMINAL_WAIT) -> Iterator[Environment]:
    """``env`` with its stderr behind a :class:`TerminalWriter`, for a command that reads logs.

    Such a command runs beside a server: its banners, notices, retry lines, ``--events -`` and summary are
    written from the analysis, copy and notification threads, and a terminal paused with Ctrl-S (or a stderr
    pipe nobody reads) must hold up none of them, nor the store, the targets or the server's output. At the
    end the writer gets ``wait`` seconds to write what is queued; whatever is left then is dropped.
    """
    from watcher.sinks import TerminalWriter

    term = TerminalWriter(env.stderr)
    try:
        with term.thread_exceptions():
            yield dataclasses.replace(env, stderr=cast(TextIO, term))
    finally:
        term.drain(wait)
        term.close()


def _ledger_defaults() -> loads.Settings:
    """The memory ledger's default settings (its module loads only when a command analyses)."""
    from watcher import loads

    return loads.Settings()


@dataclass
class Context:
    """What an analysing command needs, built once from flags, config and environment."""

    catalogue: cat.Catalogue
    settings: Settings
    config: cfg.Config
    settle: float
    sinks: list[Sink] = field(default_factory=list)
    ledger: loads.Settings = field(default_factory=_ledger_defaults)


def load_config(args: argparse.Namespace, env: Environment) -> cfg.Config:
    """The config file named by the flag, the environment, or the default location."""
    from watcher import config as cfg

    path = getattr(args, "config", None) or cfg.default_path(env.environ)
    try:
        return cfg.load(path)
    except cfg.ConfigError as exc:
        raise UsageError(str(exc)) from exc


def load_catalogue(extra: list[Path]) -> cat.Catalogue:
    """The shipped catalogue plus the user's extra pattern files."""
    from watcher import catalogue as cat
    from watcher import paths

    try:
        return cat.load([cat.default_dir(), *extra], cache=paths.catalogue_cache())
    except cat.CatalogueError as exc:
        raise UsageError(f"bad pattern: {exc}") from exc


def catalogue_for(args: argparse.Namespace, conf: cfg.Config) -> cat.Catalogue:
    """The catalogue a command works with: shipped, then the config's ``[patterns] extra``, then ``--patterns``."""
    extra = [Path(p) for p in conf.get("patterns", "extra", [])] + list(getattr(args, "patterns", []))
    return load_catalogue(extra)


def build_context(args: argparse.Namespace, env: Environment, banner: bool = True) -> Context:
    """Catalogue, settings and sinks for an analysing command."""
    from watcher import config as cfg
    from watcher import loads
    from watcher.sinks import BannerSink, EventLogSink
    from watcher.state import Settings

    conf = load_config(args, env)
    catalogue = catalogue_for(args, conf)
    catalogue.slow.say = env.stderr.write  # a pattern hitting the regex timeout is never silent
    defaults = Settings()
    settings = Settings(
        absent_stats_tasks=conf.get("analysis", "absent_stats_tasks", defaults.absent_stats_tasks),
        low_acceptance=float(conf.get("analysis", "low_acceptance", defaults.low_acceptance)),
        acceptance_window=conf.get("analysis", "acceptance_window", defaults.acceptance_window),
    )
    try:
        ledger = loads.settings_from(conf)
    except cfg.ConfigError as exc:
        raise UsageError(str(exc)) from exc
    ctx = Context(catalogue, settings, conf, float(conf.get("analysis", "settle", 1.0)), ledger=ledger)
    if banner:
        ctx.sinks.append(BannerSink(env.stderr, env.colour))
    events = getattr(args, "events", None)
    if events:
        ctx.sinks.append(EventLogSink(*_open_events(events, env)))
    for ext in EXTENSIONS:
        sink = ext.build(args, env, conf)
        if sink is not None:
            ctx.sinks.append(sink)
    return ctx


def _open_events(target: str, env: Environment) -> tuple[TextIO, bool]:
    if target == "-":
        return env.stderr, False
    try:
        # Closed by the sink that owns it.
        return Path(target).open("a", encoding="utf-8", buffering=1), True
    except OSError as exc:
        raise UsageError(f"--events {target}: {exc.strerror or exc}") from exc


def incidents_at_exit(own: list[Incident], disp: Dispatcher) -> list[Incident]:
    """The analyser's incidents, then those other producers (the ``--probe`` poller) fed the dispatcher."""
    mine = {id(i) for i in own}
    return [*own, *(i for i in disp.all.values() if id(i) not in mine)]


def wire(ctx: Context, env: Environment) -> Wiring:
    """The dispatcher over the context's sinks (reporting a failing sink on stderr, once per sink), and the
    factory every analysing command builds its analyzers with."""
    from watcher.dispatch import Wiring

    warned: set[int] = set()

    def on_error(sink: Sink, exc: BaseException) -> None:
        if id(sink) in warned:
            return
        warned.add(id(sink))
        with contextlib.suppress(OSError, ValueError):
            env.stderr.write(f"specwatch: {type(sink).__name__} failed: {exc}\n")

    return Wiring(ctx.catalogue, ctx.settings, ctx.sinks, settle=ctx.settle, on_error=on_error, ledger=ctx.ledger)
