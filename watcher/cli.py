"""The ``specwatch`` command line: parse, pick the command, map errors to exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from watcher import __version__
from watcher.commands import budget, models, notify, patterns, pipe, probe, scan, status, watch
from watcher.commands import run as run_command
from watcher.commands._common import UsageError, add_analysis_options, terminal
from watcher.exitstatus import ExitStatus

if TYPE_CHECKING:
    from watcher.environment import Environment

#: Sub-command modules, in the order ``--help`` lists them. Each has ``add_parser(subparsers)``. Pipe mode
#: (no sub-command) is ``watcher.commands.pipe``; the options and sinks every analysing command shares are
#: listed in ``watcher.commands._common.EXTENSIONS``.
COMMANDS: tuple[ModuleType, ...] = (scan, patterns, status, notify, watch, run_command, probe, models,
                                    budget)


class _Commands(argparse._SubParsersAction):  # type: ignore[type-arg]
    """Sub-commands that keep the options given before them.

    argparse parses a sub-command into a fresh namespace and copies it over the parent's, so the
    sub-command's defaults overwrite whatever was given before its name (``specwatch --config FILE scan``
    lost the config). Here the sub-command parses into the parent's namespace: its defaults fill only
    what is not set yet, and repeatable options given before and after add up. An option given before
    the command that the command does not take is a usage error, never silently dropped.
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:  # noqa: ARG002
        assert isinstance(values, list)
        name, rest = values[0], values[1:]
        sub = self._name_parser_map[name]  # argparse has already checked the choice
        for action in parser._actions:
            if not action.option_strings or action.dest == argparse.SUPPRESS or not hasattr(namespace, action.dest):
                continue
            given = action.default == argparse.SUPPRESS or getattr(namespace, action.dest) != action.default
            if given and not any(s in sub._option_string_actions for s in action.option_strings):
                command = sub.prog.removeprefix("specwatch").strip()
                raise UsageError(f"{action.option_strings[0]} is not an option of '{command}'")
        # Whether the command reads logs is the sub-command's own default (set with its analysis options),
        # not the one pipe mode's parser left.
        if hasattr(namespace, "reads_logs"):
            delattr(namespace, "reads_logs")
        if self.dest != argparse.SUPPRESS:
            setattr(namespace, self.dest, name)
        _, extras = sub.parse_known_args(rest, namespace)
        if extras:
            vars(namespace).setdefault(argparse._UNRECOGNIZED_ARGS_ATTR, []).extend(extras)


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)

    def error(self, message: str) -> None:  # type: ignore[override]
        # The caller prefixes "specwatch: "; a sub-command's messages name it ("scan: ...").
        command = self.prog.removeprefix("specwatch").strip()
        raise UsageError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; without a sub-command specwatch runs in pipe mode."""
    p = _Parser(
        prog="specwatch",
        description="Watchdog for llama.cpp-family servers. With input on stdin, passes every byte through "
                    "and alerts on stderr when speculative decoding (the draft model) fails.",
        epilog="Example: llama-server -m big.gguf -md draft.gguf --spec-type draft-simple 2>&1 | specwatch",
    )
    p.add_argument("--version", action="version", version=f"specwatch {__version__}")
    add_analysis_options(p)
    pipe.add_pipe_options(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMANDS:
        module.add_parser(sub)
    return p


def run(argv: Sequence[str], env: Environment) -> int:
    """Run one command; every expected failure becomes a one-line message and an exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(list(argv))
        # Without a sub-command: pipe mode.
        handler = getattr(args, "handler", None) or pipe.run
        if handler is pipe.run and env.stdin_isatty:
            parser.print_usage(env.stderr)
            env.stderr.write("specwatch: pipe a server's output into me, or give a command (see --help)\n")
            return ExitStatus.USAGE
        if not getattr(args, "reads_logs", False):
            return int(handler(args, env))
        # A command that reads logs (it takes the analysis options) runs beside a server: none of its threads
        # may wait for a paused terminal, so its stderr goes through the writer, whichever command it is.
        with terminal(env) as own:
            # Not ExitStatus(...): ``run`` passes the supervised child's own status through, whatever it is.
            return int(handler(args, own))
    except UsageError as exc:
        env.stderr.write(f"specwatch: {exc}\n")
        return ExitStatus.USAGE
    except _loaded("watcher.db", "StoreError") as exc:  # the database failed after it was opened (locked, full)
        env.stderr.write(f"specwatch: incident store {exc}\n")
        return ExitStatus.USAGE
    except _loaded("sqlite3", "Error") as exc:
        env.stderr.write(f"specwatch: incident store: {exc}\n")
        return ExitStatus.USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else ExitStatus.OK


def _loaded(module: str, name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``module.name`` if the command loaded that module, else nothing to catch: the store
    (and sqlite3) load only with the commands that use them, and what was never loaded cannot have raised."""
    mod = sys.modules.get(module)
    return (getattr(mod, name),) if mod is not None else ()
