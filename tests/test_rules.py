"""The shipped Prometheus alerting rules: valid, and their unit tests (input series) pass under promtool."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"
PROMTOOL = shutil.which("promtool")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False)


def test_rules_are_valid() -> None:
    """promtool check rules accepts every shipped rule."""
    r = _promtool("check", "rules", "specwatch-rules.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 5 rules found" in r.stdout


def test_rule_unit_tests_pass() -> None:
    """promtool test rules: each alert fires on its input series, and not on the healthy or too-small ones."""
    r = _promtool("test", "rules", "specwatch-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout
