"""docs/watch.md's reliability promises are the fault suite's claims, word for word."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.faults

#: The modules whose tests are the promises of the reliability section.
MODULES = ("test_watch_faults.py", "test_numbering.py", "test_soak.py")


def claims() -> set[str]:
    out = set()
    for name in MODULES:
        tree = ast.parse((Path(__file__).parent / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node)
                assert doc, f"{name}: {node.name} has no docstring"
                out.add(doc)
    return out


def promises() -> set[str]:
    text = (ROOT / "docs" / "watch.md").read_text()
    section = text.split("\n## Reliability\n", 1)[1].split("\n## ", 1)[0]
    return {line[2:] for line in section.splitlines() if line.startswith("- ")}


def test_reliability_promises_are_the_fault_suite_claims() -> None:
    """Every promise in the reliability section is a fault test's claim, and every claim is promised there."""
    assert promises() == claims()
