"""The config file: values reach the analysis; every mistake names the key and the line."""

from __future__ import annotations

import pytest

from watcher import config


def write(tmp_path, text: str):
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_valid_values_are_read(tmp_path) -> None:
    """Known keys are returned with their values."""
    c = config.load(write(tmp_path, "[analysis]\nlow_acceptance = 0.3\nabsent_stats_tasks = 4\n"))
    assert c.get("analysis", "low_acceptance") == 0.3
    assert c.get("analysis", "absent_stats_tasks") == 4
    assert c.get("analysis", "settle", 1.5) == 1.5


@pytest.mark.parametrize(("text", "needle", "line"), [
    ("[analysis]\n\nlow_acceptance = 'high'\n", "analysis.low_acceptance must be float or int", 3),
    ("[analysis]\nlow_acceptance = 3\n", "between 0 and 1", 2),
    ("[analysis]\nsettle = 1\nunknown_key = 2\n", "unknown key analysis.unknown_key", 3),
    ("[nonsense]\nx = 1\n", "unknown table [nonsense]", 1),
    ("[analysis]\nabsent_stats_tasks = true\n", "must be int", 2),
])
def test_errors_name_key_and_line(tmp_path, text: str, needle: str, line: int) -> None:
    """Each invalid file is rejected with the key and its line number."""
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, text))
    assert needle in str(e.value)
    assert f"config.toml:{line}:" in str(e.value)


def test_toml_syntax_error_has_line(tmp_path) -> None:
    """Broken TOML reports the parser's line and column."""
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, "[analysis]\nsettle = = 1\n"))
    assert "line 2" in str(e.value)


def test_readme_config_table_lists_every_schema_key() -> None:
    """README.md's config table has a row for every key the schema accepts, and none it does not."""
    import re

    import watcher.cli  # noqa: F401 - importing the commands registers every table (metrics adds [metrics])
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `\[(\w+)\] (\w+)` \|", readme, re.MULTILINE))
    schema = {(table, key) for table, keys in config.SCHEMA.items() for key in keys}
    assert schema - documented == set(), "keys missing from README's config table"
    assert documented - schema == set(), "README documents keys the config file does not accept"


NUMERIC = [(table, key) for table, keys in config.SCHEMA.items() for key, (types, _) in keys.items()
           if int in types or float in types]


@pytest.mark.parametrize(("table", "key"), NUMERIC)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e308", "-1", "9999999999"])
def test_every_numeric_key_rejects_non_finite_and_absurd_values(tmp_path, table: str, key: str,
                                                                value: str) -> None:
    """NaN, infinities and values far out of range are errors naming the file, the line and the key."""
    types = config.SCHEMA[table][key][0]
    if float not in types and value in {"nan", "inf", "-inf", "1e308"}:
        value = "9223372036854775807"  # the int keys' absurd value
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, f"# comment\n[{table}]\n{key} = {value}\n"))
    assert f"config.toml:3: key {table}.{key} must be between" in str(e.value)


def test_every_numeric_key_has_a_range_shown_in_the_readme() -> None:
    """A numeric key without a range would take NaN; README's table shows each key's range in its type column."""
    import re

    import watcher.cli  # noqa: F401 - importing the commands registers every table
    from tests.conftest import ROOT

    assert set(NUMERIC) == set(config.RANGES)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for table, key in config.RANGES:
        row = re.search(rf"^\| `\[{table}\] {key}` \| ([^|]+) \|", readme, re.MULTILINE)
        assert row is not None and config.range_text(table, key) in row[1], (table, key)


def test_the_bounds_themselves_are_accepted(tmp_path) -> None:
    """Both ends of every range are valid values."""
    for (table, key), (lo, hi) in config.RANGES.items():
        kind = int if float not in config.SCHEMA[table][key][0] else float
        for v in (lo, hi):
            c = config.load(write(tmp_path, f"[{table}]\n{key} = {kind(v)!r}\n"))
            assert c.get(table, key) == kind(v)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "2592001", "1e308"])
@pytest.mark.parametrize("command", [[], ["scan", "x.log"], ["watch", "x.log"], ["run", "--", "true"]])
def test_repeat_flag_takes_only_the_config_files_range(value: str, command: list[str]) -> None:
    """`--repeat` NaN, infinite, negative or beyond 30 days is a usage error naming the flag, in every command."""
    from watcher.cli import build_parser
    from watcher.errors import UsageError

    with pytest.raises(UsageError) as e:
        build_parser().parse_args([f"--repeat={value}", *command])
    assert str(e.value) == (f"argument --repeat: must be between 0 and 2592000 (the range of [notify] repeat in "
                            f"the config file), not {value}")


def test_repeat_flag_nan_exits_2() -> None:
    """`specwatch --repeat nan` says why on stderr and exits 2; so does a value that is not a number."""
    from tests.conftest import cli

    r = cli("--repeat", "nan", stdin=b"x\n")
    assert (r.status, r.stderr) == (2, "specwatch: argument --repeat: must be between 0 and 2592000 (the range of "
                                       "[notify] repeat in the config file), not nan\n")
    assert cli("--repeat", "soon", stdin=b"x\n").stderr == "specwatch: argument --repeat: not a number: 'soon'\n"


def test_repeat_flag_takes_the_ends_of_the_range() -> None:
    """`--repeat 0` (never) and `--repeat 2592000` (30 days, the file's maximum) are accepted."""
    from watcher.cli import build_parser

    assert build_parser().parse_args(["--repeat", "0"]).repeat == 0
    assert build_parser().parse_args(["watch", "x.log", "--repeat", "2592000"]).repeat == 2592000


def test_backoff_max_below_backoff_is_an_error(tmp_path) -> None:
    """The longest wait between retries cannot be shorter than the first one."""
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, "[notify]\nbackoff = 60\nbackoff_max = 30\n"))
    assert "config.toml:3: key notify.backoff_max must not be less than notify.backoff" in str(e.value)


class TestUnreadableDefaultConfig:
    def test_a_default_config_that_is_not_utf8_is_a_one_line_error(self, monkeypatch, tmp_path) -> None:
        """scan with a binary file at the default config path exits 2 naming the file, without a traceback."""
        from tests.conftest import SEED, cli

        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        (tmp_path / "specwatch").mkdir()
        (tmp_path / "specwatch" / "config.toml").write_bytes(b"\xff\xfe[analysis]\n")
        r = cli("scan", str(SEED))
        assert r.status == 2
        assert r.stderr == f"specwatch: {tmp_path}/specwatch/config.toml: cannot read config: not UTF-8 text " \
                           "(byte 0)\n"

    def test_a_default_config_path_that_cannot_be_looked_at_is_a_one_line_error(self, monkeypatch, tmp_path) -> None:
        """A default config path the system refuses to stat (here: a name too long) is reported, exit 2."""
        from tests.conftest import SEED, cli

        long_dir = tmp_path / ("d" * 300)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(long_dir))
        r = cli("scan", str(SEED))
        assert r.status == 2
        assert r.stderr.startswith(f"specwatch: {long_dir}/specwatch/config.toml: cannot read config: ")
        assert r.stderr.count("\n") == 1


def test_settle_nan_is_exit_2_in_scan_and_in_pipe_mode(tmp_path) -> None:
    """`settle = nan` stops scan with exit 2; pipe mode says why, passes every byte through and exits 2."""
    from tests.conftest import SEED, cli

    conf = write(tmp_path, "[analysis]\nsettle = nan\n")
    r = cli("scan", "--config", str(conf), str(SEED))
    assert (r.status, r.stderr) == (2, f"specwatch: {conf}:2: key analysis.settle must be between 0 and 60, not nan\n")
    p = cli("--config", str(conf), stdin=b"hello\n")
    assert p.status == 2 and p.stdout == b"hello\n" and "analysis.settle must be between 0 and 60" in p.stderr


# Every numeric flag, with the command that takes it: (argv before the flag, the flag, argv after it).
NUMERIC_FLAGS = [
    (["run"], "--grace", ["--", "true"]),
    (["watch", "x.log"], "--interval", []),
    (["watch", "x.log"], "--ignore-older", []),
    (["scan", "x.log"], "--probe-interval", []),
    (["watch", "x.log"], "--probe-interval", []),
    (["notify", "flush"], "--wait", []),
    (["history"], "--since", []),
    (["history"], "--limit", []),
    (["patterns", "audit", "src"], "--fail-under", []),
]


def _numeric_flags(parser, seen: set[str]) -> set[str]:
    import argparse
    from pathlib import Path

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _numeric_flags(sub, seen)
        elif action.option_strings and action.type not in (None, str, Path):
            seen.add(action.option_strings[-1])
    return seen


def test_every_numeric_flag_has_a_range_and_readme_shows_it() -> None:
    """Each option that takes a number (in any command) refuses `nan`, and README's option tables show its range."""
    import re

    from tests.conftest import ROOT
    from watcher.cli import build_parser

    flags = _numeric_flags(build_parser(), set())
    assert flags == set(config.FLAG_RANGES) | {"--repeat"}
    assert {flag for _, flag, _ in NUMERIC_FLAGS} == set(config.FLAG_RANGES)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for flag in config.FLAG_RANGES:
        row = re.search(rf"^\| `[a-z ]*{flag} [A-Z]+` \| ([^|]+) \|", readme, re.MULTILINE)
        assert row is not None and row[1].startswith(config.flag_range_text(flag)), flag


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e308"])
@pytest.mark.parametrize(("before", "flag", "after"), NUMERIC_FLAGS)
def test_numeric_flags_refuse_values_outside_their_range(before: list[str], flag: str, after: list[str],
                                                         value: str) -> None:
    """`nan`, an infinity, a negative or an absurd value is a usage error naming the flag and its range."""
    from watcher.cli import build_parser
    from watcher.errors import UsageError

    lo, hi = config.FLAG_RANGES[flag]
    with pytest.raises(UsageError) as e:
        build_parser().parse_args([*before, f"{flag}={value}", *after])
    whole = flag in config.WHOLE_FLAGS and value in {"nan", "inf", "-inf", "1e308"}
    want = (f"argument {flag}: not a whole number: {value!r}" if whole
            else f"argument {flag}: must be between {config._num(lo)} and {config._num(hi)}, not {value}")
    assert str(e.value).endswith(want)


@pytest.mark.parametrize(("before", "flag", "after"), NUMERIC_FLAGS)
def test_numeric_flags_take_the_ends_of_their_range(before: list[str], flag: str, after: list[str]) -> None:
    """Both ends of each flag's range are accepted as given."""
    from watcher.cli import build_parser

    dest = flag.lstrip("-").replace("-", "_")
    for end in config.FLAG_RANGES[flag]:
        text = config._num(end)
        assert getattr(build_parser().parse_args([*before, flag, text, *after]), dest) == float(text)


def test_grace_nan_exits_2_and_says_why() -> None:
    """`specwatch run --grace nan -- true` exits 2 naming the flag, before anything is started."""
    from tests.conftest import cli

    r = cli("run", "--grace", "nan", "--", "true")
    assert (r.status, r.stderr) == (2, "specwatch: run: argument --grace: must be between 0 and 3600, not nan\n")
    assert r.stdout == b""
