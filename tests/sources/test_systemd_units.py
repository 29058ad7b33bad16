"""The shipped systemd units pass ``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.fixture
def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return tool


@pytest.mark.parametrize(("unit", "instance"), [
    ("specwatch-lmstudio.service", "specwatch-lmstudio.service"),
    ("specwatch-journal@.service", "specwatch-journal@llama-swap.service"),
])
def test_unit_verifies(analyze: str, tmp_path: Path, unit: str, instance: str) -> None:
    """Each unit (a template as one instance) verifies as a user unit without warnings."""
    true = shutil.which("true")
    assert true is not None
    # verify checks that ExecStart's binary exists; the installed specwatch path is not there in CI.
    text = (UNITS / unit).read_text().replace("%h/.local/bin/specwatch", true)
    (tmp_path / instance).write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    proc = subprocess.run([analyze, "--user", "verify", str(tmp_path / instance)], capture_output=True, check=False,
                          text=True, env={"XDG_RUNTIME_DIR": str(runtime), "PATH": "/usr/bin:/bin",
                                          "HOME": str(tmp_path)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert instance not in proc.stderr, proc.stderr
