"""The configuration file (TOML): defaults, validation, and errors that name the key and the line.

Precedence, lowest first: built-in defaults, the config file, environment variables, flags.
The file is ``--config FILE``, else ``$SPECWATCH_CONFIG``, else ``<user config dir>/specwatch/config.toml``
if it exists.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """Invalid configuration; the message names the file, the key and the line."""


#: Every key the file may hold: table -> key -> (type(s), description).
#: tests/test_config.py checks the README's config table against it, so the two cannot drift apart.
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], str]]] = {
    "analysis": {
        "absent_stats_tasks": ((int,), "tasks finished without draft statistics before speculation is inferred off"),
        "low_acceptance": ((float, int), "acceptance ratio below which low_acceptance opens (0-1)"),
        "acceptance_window": ((int,), "drafted tokens the acceptance ratio is computed over"),
        "settle": ((float, int), "seconds an incident must be quiet before it is reported"),
    },
    "patterns": {
        "extra": ((list,), "extra pattern files or directories, loaded after the shipped catalogue"),
    },
    "notify": {
        "urls": ((list,), "apprise URLs to alert, each optionally 'critical,warning=URL' to filter by severity"),
        "config": ((list,), "apprise configuration files (text or YAML) with more targets and their tags"),
        "repeat": ((float, int), "seconds between repeats of an open, unacknowledged alert (0: never)"),
        "backoff": ((float, int), "seconds before the first retry of a failed delivery (doubles each time)"),
        "backoff_max": ((float, int), "longest wait between delivery retries, in seconds"),
    },
    "metrics": {
        "listen": ((str,), "HOST:PORT to serve Prometheus metrics on (same as --metrics-listen)"),
        "allow_remote": ((bool,), "allow a non-loopback metrics address (same as --metrics-allow-remote)"),
    },
    "ledger": {
        "keep_days": ((float, int), "days a load record is kept (0: no age limit)"),
        "keep_loads": ((int,), "load records kept at most, newest first (0: no count limit)"),
        "capacity": ((list,), "device memory as 'DEVICE=MiB' (or GiB), for devices whose logs do not say it"),
        "regression_ratio": ((float, int), "acceptance_regressed: window acceptance under this share of the baseline"),
        "regression_drop": ((float, int), "acceptance_regressed: and at least this much lower (0-1)"),
        "regression_window": ((int,), "acceptance_regressed: drafted tokens compared (and the least a baseline holds)"),
    },
}


#: The range of every numeric key, inclusive: a NaN, an infinity or an absurd value (``settle = 1e308`` holds
#: every alert back for ever) is an error, not a silent change of behaviour. Every int or float key of SCHEMA
#: must have one (tests/test_config.py checks, and that README's table shows it).
RANGES: dict[tuple[str, str], tuple[float, float]] = {
    ("analysis", "absent_stats_tasks"): (1, 1000),
    ("analysis", "low_acceptance"): (0, 1),
    ("analysis", "acceptance_window"): (1, 10_000_000),
    ("analysis", "settle"): (0, 60),
    ("notify", "repeat"): (0, 30 * 86400),
    ("notify", "backoff"): (0.01, 86400),
    ("notify", "backoff_max"): (0.01, 86400),
    ("ledger", "keep_days"): (0, 36500),
    ("ledger", "keep_loads"): (0, 10_000_000),
    ("ledger", "regression_ratio"): (0, 1),
    ("ledger", "regression_drop"): (0, 1),
    ("ledger", "regression_window"): (1, 10_000_000),
}


@dataclass
class Config:
    """Validated configuration values (only what was set; callers apply defaults)."""

    path: Path | None = None
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, table: str, key: str, default: Any = None) -> Any:
        """A value, or ``default`` when the file does not set it."""
        return self.values.get(table, {}).get(key, default)


def default_path(environ: Mapping[str, str]) -> Path | None:
    """The config file to read when ``--config`` is not given."""
    if environ.get("SPECWATCH_CONFIG"):
        return Path(environ["SPECWATCH_CONFIG"])
    from platformdirs import user_config_dir

    p = Path(user_config_dir("specwatch")) / "config.toml"
    try:
        return p if p.is_file() else None
    except OSError:
        # There but unreadable (a directory we may not search, a name too long): ``load`` says why.
        return p


def load(path: Path | None) -> Config:
    """Read and validate a config file; None gives an empty config."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: not UTF-8 text (byte {exc.start})") from exc
    # Imported only for a file to read: most starts have none, and the parser's import is a good part of one.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    values: dict[str, dict[str, Any]] = {}
    for table, entries in data.items():
        if table not in SCHEMA:
            raise ConfigError(f"{path}:{_line(text, None, table)}: unknown table [{table}] "
                              f"(known: {', '.join(sorted(SCHEMA))})")
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}:{_line(text, None, table)}: {table} must be a table")
        for key, value in entries.items():
            spec = SCHEMA[table].get(key)
            where = f"{path}:{_line(text, table, key)}"
            if spec is None:
                raise ConfigError(f"{where}: unknown key {table}.{key} (known: {', '.join(sorted(SCHEMA[table]))})")
            types, _ = spec
            if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
                names = " or ".join(t.__name__ for t in types)
                raise ConfigError(f"{where}: key {table}.{key} must be {names}, not {type(value).__name__}")
            _check_range(where, table, key, value)
            values.setdefault(table, {})[key] = value
    notify = values.get("notify", {})
    if notify.get("backoff_max", math.inf) < notify.get("backoff", 0):
        raise ConfigError(f"{path}:{_line(text, 'notify', 'backoff_max')}: key notify.backoff_max must not be "
                          f"less than notify.backoff ({notify['backoff']})")
    return Config(path, values)


def _check_range(where: str, table: str, key: str, value: Any) -> None:
    bounds = RANGES.get((table, key))
    if bounds is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    lo, hi = bounds
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{where}: key {table}.{key} must be between {_num(lo)} and {_num(hi)}, not {value!r}")


#: The range of every numeric flag that mirrors no config key, inclusive, for the same reason: ``--grace nan``
#: or ``--interval -1`` is a usage error naming the flag, not a hang or a busy loop. README's option tables show
#: each (tests/test_config.py checks that every numeric flag has a range and that README shows it).
FLAG_RANGES: dict[str, tuple[float, float]] = {
    "--grace": (0, 3600),                   # run: seconds between SIGTERM and SIGKILL
    "--interval": (0.01, 3600),             # watch: seconds between checks of every file
    "--ignore-older": (0, 36500),           # watch: days (100 years, as [ledger] keep_days)
    "--probe-interval": (0.1, 86400),       # seconds between polls of the server (three small GETs each)
    "--wait": (0, 86400),                   # notify flush: seconds of retrying
    "--since": (0, 876000),                 # history: hours (100 years)
    "--limit": (1, 10_000_000),             # history: lines
    "--fail-under": (0, 100),               # patterns audit: percent
}

#: The flags of FLAG_RANGES that take only whole numbers.
WHOLE_FLAGS = frozenset({"--limit"})


def flag_value(table: str, key: str) -> Callable[[str], float]:
    """The argparse ``type`` of a flag that stands for ``table.key`` (``--repeat``: ``notify.repeat``): a
    number in the key's range, so the flag and the file take the same values; anything else (``nan``,
    ``inf``, a negative) is a usage error naming the flag."""
    lo, hi = RANGES[(table, key)]
    return _bounded(lo, hi, f" (the range of [{table}] {key} in the config file)", whole=False)


def flag_range(flag: str) -> Callable[[str], float]:
    """The argparse ``type`` of ``flag``: a number in its FLAG_RANGES range (a usage error naming the flag
    otherwise)."""
    lo, hi = FLAG_RANGES[flag]
    return _bounded(lo, hi, "", whole=flag in WHOLE_FLAGS)


def flag_range_text(flag: str) -> str:
    """A flag's range as README's option tables show it, e.g. ``0-3600``."""
    lo, hi = FLAG_RANGES[flag]
    return f"{_num(lo)}-{_num(hi)}"


def _bounded(lo: float, hi: float, origin: str, *, whole: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            kind = "a whole number" if whole else "a number"
            raise argparse.ArgumentTypeError(f"not {kind}: {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {_num(lo)} and {_num(hi)}{origin}, not {text}")
        return value

    return parse


def range_text(table: str, key: str) -> str:
    """A numeric key's range as README's config table shows it, e.g. ``0-60``."""
    lo, hi = RANGES[(table, key)]
    return f"{_num(lo)}-{_num(hi)}"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def where(conf: Config, table: str, key: str, value: str | None = None) -> str:
    """``FILE:LINE`` of ``table.key`` in the file ``conf`` was read from (the line holding ``value``, when one
    of a list's entries is meant), for an error found after loading; ``FILE`` alone when unknown."""
    if conf.path is None:
        return "config"
    try:
        text = conf.path.read_text(encoding="utf-8")
    except OSError:
        return str(conf.path)
    line = _line(text, table, key)
    if value is not None:
        lines = text.splitlines()
        # A list may span lines: the entry's own line, at or after the key's.
        line = next((n for n in range(line, len(lines) + 1) if value in lines[n - 1]), line)
    return f"{conf.path}:{line}"


def _line(text: str, table: str | None, key: str) -> int:
    """Best-effort line number of ``key`` (inside ``[table]``) for error messages."""
    lines = text.splitlines()
    in_table = table is None
    for n, line in enumerate(lines, 1):
        s = line.strip()
        header = re.match(r"^\[+\s*([\w.-]+)\s*\]+", s)
        if header:
            if table is None and header.group(1) == key:
                return n
            in_table = table is not None and header.group(1) == table
            continue
        if in_table and re.match(rf"^{re.escape(key)}\s*=", s):
            return n
        if table is not None and re.match(rf"^{re.escape(table)}\.{re.escape(key)}\s*=", s):
            return n
    return 1
