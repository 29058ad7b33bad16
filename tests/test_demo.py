"""tools/demo.py: the replay runs specwatch as a real pipe and leaves the user's state alone."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT, SEED


def test_demo_records_nothing_in_the_users_state_dir(tmp_path) -> None:
    """The demo's incidents go to a temporary state dir, so 'specwatch status' is clean afterwards."""
    state = tmp_path / "state"
    env = {**os.environ, "SPECWATCH_STATE_DIR": str(state), "XDG_STATE_HOME": str(tmp_path / "xdg"),
           "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), str(SEED), "--delay", "0"], env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "SPECWATCH CRITICAL" in r.stderr and "temporary state directory" in r.stdout
    assert not state.exists() and not (tmp_path / "xdg").exists()
