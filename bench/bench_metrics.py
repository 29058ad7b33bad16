"""Benchmark: pipe mode with and without ``--metrics-listen``, on the same synthetic verbose log.

Uses bench_scan's log (the real engine logs of samples/engine spread through ordinary per-request lines,
SIZE MiB, default 256) and runs ``python -m watcher < log > /dev/null`` three ways, best of REPEAT runs each:
without metrics, with ``--metrics-listen 127.0.0.1:PORT`` and nobody scraping, and with a scraper fetching
/metrics every 0.2 s for the whole run (the scrape runs in specwatch's HTTP thread, so it is counted in the
child's CPU seconds). Prints a Markdown table of child CPU seconds and MiB/s.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_scan import child_cpu, make_log  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scraper(port: int, stop: threading.Event, count: list[int]) -> None:
    while not stop.is_set():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as r:
                r.read()
            count[0] += 1
        except OSError:
            pass
        stop.wait(0.2)


def main() -> int:
    """Measure and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="log size in MiB (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per variant; the best is kept (default 3)")
    args = ap.parse_args()
    data = ROOT / "bench" / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = data / f"verbose-{args.size}.log"
    if not log.exists():
        make_log(log, args.size)
    os.environ.setdefault("SPECWATCH_STATE_DIR", str(data / "state"))
    mib = log.stat().st_size / (1024 * 1024)
    base = [sys.executable, "-m", "watcher", "--no-summary"]

    def best(extra: list[str], scrape: bool = False) -> tuple[float, float, int]:
        runs = []
        scrapes = 0
        for _ in range(args.repeat):
            port = _free_port()
            stop, count = threading.Event(), [0]
            t = threading.Thread(target=_scraper, args=(port, stop, count), daemon=True) if scrape else None
            if t is not None:
                t.start()
            cmd = [*base, *[a.replace("PORT", str(port)) for a in extra]]
            runs.append(child_cpu(cmd, stdin=log))
            stop.set()
            if t is not None:
                t.join()
            scrapes = max(scrapes, count[0])
        cpu = min(r[0] for r in runs)
        wall = min(r[1] for r in runs)
        return cpu, wall, scrapes

    os.chdir(ROOT)
    plain = best([])
    listen = best(["--metrics-listen", "127.0.0.1:PORT"])
    scraped = best(["--metrics-listen", "127.0.0.1:PORT"], scrape=True)
    print(f"log: {mib:.0f} MiB, best of {args.repeat}, python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("| pipe mode, input to /dev/null | CPU s | wall s | MiB/s |")
    print("|---|---:|---:|---:|")
    print(f"| without --metrics-listen | {plain[0]:.2f} | {plain[1]:.2f} | {mib / plain[1]:.0f} |")
    print(f"| with --metrics-listen, not scraped | {listen[0]:.2f} | {listen[1]:.2f} | {mib / listen[1]:.0f} |")
    print(f"| with --metrics-listen, scraped every 0.2 s ({scraped[2]} scrapes) | {scraped[0]:.2f} | "
          f"{scraped[1]:.2f} | {mib / scraped[1]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
