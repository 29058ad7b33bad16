"""Regenerate ``samples/**/<name>.expected.json`` from what specwatch reports today (mtail's golden files).

Run it after a deliberate change in detection, then review the diff: the expected files are the
contract the sample tests hold specwatch to. ``--check`` only reports which files would change.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from watcher import catalogue  # noqa: E402
from watcher.pipeline import Analyzer  # noqa: E402
from watcher.samples import golden, sample_logs  # noqa: E402


def main() -> int:
    """Write (or check) every expected file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if any file would change")
    args = ap.parse_args()
    cat = catalogue.load()
    changed = 0
    for log in sample_logs(ROOT / "samples"):
        a = Analyzer(cat, source=log.name)
        a.feed(log.read_bytes())
        a.finish()
        doc = golden(a)
        path = log.with_suffix(".expected.json")
        text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
        if not path.exists() or path.read_text() != text:
            changed += 1
            print(("would change " if args.check else "wrote ") + str(path.relative_to(ROOT)))
            if not args.check:
                path.write_text(text)
    return 1 if args.check and changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
