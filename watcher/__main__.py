"""Entry point: ``specwatch`` and ``python -m watcher``."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the CLI with the real process environment and map Ctrl-C to its exit status."""
    from watcher.cli import run
    from watcher.environment import Environment
    from watcher.exitstatus import ExitStatus

    try:
        return int(run(sys.argv[1:], Environment.from_process()))
    except KeyboardInterrupt:
        return int(ExitStatus.CTRL_C)


if __name__ == "__main__":
    sys.exit(main())
