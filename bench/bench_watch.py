"""Benchmark of ``specwatch watch``'s follower: detection latency, idle CPU, restart completeness.

    python bench/bench_watch.py                      # full run (200 trials each, 60 s idle)
    python bench/bench_watch.py --trials 50 --idle 5 # quick run
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from watcher import catalogue as cat
from watcher.checkpoints import Checkpoints
from watcher.events import Event
from watcher.pipeline import Analyzer
from watcher.sources.tail import Follower, run_loop, specs

CATALOGUE = cat.load([cat.default_dir()])


def failure(n: int) -> bytes:
    return f"srv    load_model: failed to load draft model, '/m/d{n}.gguf'\n".encode()


class Seen:
    def __init__(self) -> None:
        self.numbers: list[int] = []
        self.cond = threading.Condition()

    def make(self, source: str) -> Analyzer:
        def on_event(ev: Event) -> None:
            if ev.type == "draft_load_failed":
                with self.cond:
                    self.numbers.append(int(Path(ev.get("model")).stem[1:]))
                    self.cond.notify_all()
        return Analyzer(CATALOGUE, source=source, on_event=on_event)


def latency(trials: int, poll: bool, interval: float) -> list[float]:
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "server.log"
        log.write_bytes(b"")
        seen = Seen()
        f = Follower(specs([log]), seen.make)
        f.step()
        stop, wake = threading.Event(), threading.Event()
        obs = None if poll else f.observe(wake)
        t = threading.Thread(target=run_loop, args=([f.step], stop, wake, interval), daemon=True)
        t.start()
        out = []
        fh = log.open("ab", buffering=0)
        for i in range(trials):
            time.sleep(random.uniform(0, interval if poll else 0.02))  # random phase of the poll cycle
            t0 = time.perf_counter()
            fh.write(failure(i))
            with seen.cond:
                seen.cond.wait_for(lambda i=i: i in seen.numbers, timeout=30)
            out.append(time.perf_counter() - t0)
        fh.close()
        stop.set()
        wake.set()
        t.join()
        if obs is not None:
            obs.stop()
            obs.join()
        return out


def idle_cpu(files: int, seconds: float, poll: bool, interval: float) -> float:
    with tempfile.TemporaryDirectory() as d:
        for i in range(files):
            (Path(d) / f"f{i}.log").write_bytes(b"x\n" * 100)
        f = Follower(specs([d]), Seen().make)
        f.step()
        stop, wake = threading.Event(), threading.Event()
        obs = None if poll else f.observe(wake)
        t = threading.Thread(target=run_loop, args=([f.step], stop, wake, interval), daemon=True)
        c0, w0 = time.process_time(), time.perf_counter()
        t.start()
        time.sleep(seconds)
        c1, w1 = time.process_time(), time.perf_counter()
        stop.set()
        wake.set()
        t.join()
        if obs is not None:
            obs.stop()
            obs.join()
        assert len(f.streams) == files
        return 100 * (c1 - c0) / (w1 - w0)


def restart(total: int, rounds: int) -> tuple[int, int, int, float]:
    """Write ``total`` failures across ``rounds`` stop/start cycles, each with a rotation while stopped."""
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "server.log"
        log.write_bytes(b"")
        store = Checkpoints.open(Path(d) / "state.db")
        seen = Seen()
        n = 0
        per = total // rounds
        f = Follower(specs([log]), seen.make, checkpoints=store)
        f.step()
        catchup = 0.0
        for r in range(rounds):
            for _ in range(per // 2):  # while running
                with log.open("ab") as fh:
                    fh.write(failure(n))
                n += 1
            f.step()
            if r % 2:
                del f  # kill -9: no close, the last step's checkpoint counts
            else:
                f.close()
            for _ in range(per // 4):  # while stopped, before the rotation
                with log.open("ab") as fh:
                    fh.write(failure(n))
                n += 1
            log.rename(Path(d) / "server.log.1")
            for _ in range(per - per // 2 - per // 4):  # while stopped, in the new file
                with log.open("ab") as fh:
                    fh.write(failure(n))
                n += 1
            t0 = time.perf_counter()
            f = Follower(specs([log]), seen.make, checkpoints=store)
            f.step()
            catchup = max(catchup, time.perf_counter() - t0)
        f.close()
        store.close()
        once = sum(1 for k in range(n) if seen.numbers.count(k) == 1)
        twice = sum(1 for k in range(n) if seen.numbers.count(k) > 1)
        return n, once, twice, catchup


def fmt(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(0.99 * len(xs)))]
    return f"median {1000 * statistics.median(xs):.1f} ms, p99 {1000 * p99:.1f} ms, max {1000 * xs[-1]:.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle following measured")
    ap.add_argument("--files", type=int, default=50)
    ap.add_argument("--interval", type=float, default=1.0, help="periodic check with native events")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"latency native ({args.trials} trials): {fmt(latency(args.trials, False, args.interval))}")
    print(f"latency --poll {args.poll_interval}s ({args.trials} trials): "
          f"{fmt(latency(args.trials, True, args.poll_interval))}")
    print(f"idle CPU, {args.files} files, {args.idle:.0f} s, native: "
          f"{idle_cpu(args.files, args.idle, False, args.interval):.2f}% of one core")
    print(f"idle CPU, {args.files} files, {args.idle:.0f} s, --poll: "
          f"{idle_cpu(args.files, args.idle, True, args.poll_interval):.2f}% of one core")
    n, once, twice, catchup = restart(1000, 10)
    print(f"restart: {n} failures over 10 restarts (half kill -9), each with a rotation while stopped: "
          f"{once} detected once, {twice} twice, {n - once - twice} missed; slowest catch-up {1000 * catchup:.1f} ms")


if __name__ == "__main__":
    main()
