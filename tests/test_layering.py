"""Layering: the library never reaches up into the command line, and nothing is registered by importing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "watcher"
#: The command layer, and the entry point that starts it.
CLI_LAYER = ("watcher.commands", "watcher.cli")
ENTRY_POINTS = {"watcher.__main__"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, relative imports resolved."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _library() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py"))
            if not _module(p).startswith(CLI_LAYER) and _module(p) not in ENTRY_POINTS]


def test_library_modules_never_import_the_command_layer() -> None:
    """No module outside watcher/commands and watcher/cli.py imports either of them."""
    bad = {_module(p): sorted(i for i in _imports(p) if i.startswith(CLI_LAYER)) for p in _library()}
    assert {m: i for m, i in bad.items() if i} == {}


def test_nothing_is_registered_by_importing_a_library_module() -> None:
    """Library modules run no statements at import besides definitions: no registry is filled as a side effect."""
    def registers(stmt: ast.stmt) -> bool:
        # A bare call at module level (``HOOKS.append(f)``, ``SCHEMA.setdefault(...)``) changes shared state.
        return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)

    found = {_module(p): [s.lineno for s in ast.parse(p.read_text(encoding="utf-8")).body if registers(s)]
             for p in _library()}
    assert {m: lines for m, lines in found.items() if lines} == {}


def test_the_plugin_contract_does_not_import_its_plugins() -> None:
    """watcher.notify.contract imports none of the plugins that implement it."""
    imported = _imports(PACKAGE / "notify" / "contract.py")
    assert not {i for i in imported if i.startswith(("watcher.notify.desktop", "watcher.notify.alertmanager"))}


def test_the_alertmanager_plugin_loads_no_analysis() -> None:
    """Importing the Alertmanager plugin (for its labels) loads neither the analysis nor the metrics."""
    code = ("import sys, watcher.notify.alertmanager; "
            "print(sorted(m for m in sys.modules if m in ('watcher.pipeline', 'watcher.state', 'watcher.metrics', "
            "'watcher.classify', 'watcher.commands')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
