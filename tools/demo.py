"""Replay a real log through ``specwatch`` as a live pipe, the way ``llama-server 2>&1 | specwatch`` runs.

The default log is the LM Studio excerpt from the report that started this project
(samples/seed/): a draft whose KV cache did not fit on CUDA1, four slots without speculation.
Lines are written with small delays, like a server loading; watch specwatch pass them through
and then raise one alert. The incidents are recorded in a temporary state directory, removed at the
end, so the demo leaves nothing in your own incident store (``specwatch status``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the replay; returns specwatch's exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", type=Path, default=ROOT / "samples/seed/lmstudio-280-draft-kv-oom.log")
    ap.add_argument("--delay", type=float, default=0.03, help="seconds between lines (default 0.03)")
    args = ap.parse_args()
    print(f"$ replay {args.log.relative_to(ROOT) if args.log.is_relative_to(ROOT) else args.log} | specwatch\n"
          "(incidents go to a temporary state directory, removed at the end: your own store is untouched)\n",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="specwatch-demo-") as state:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "SPECWATCH_STATE_DIR": state}
        proc = subprocess.Popen([sys.executable, "-m", "watcher", "--source", "demo"], stdin=subprocess.PIPE,
                                env=env)
        assert proc.stdin is not None
        try:
            for line in args.log.read_bytes().splitlines(keepends=True):
                proc.stdin.write(line)
                proc.stdin.flush()
                time.sleep(args.delay)
            time.sleep(1.5)  # a live server keeps running: the alert appears before the end of input
        finally:
            proc.stdin.close()
        return proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
