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
