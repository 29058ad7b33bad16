"""Every analysing command is wired the same way: its analyzers export metrics and deliveries are counted."""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from tests.conftest import SEED, wait_for
from tests.notify.conftest import Receiver
from tests.test_metrics import Samples, _scrape
from watcher import cli
from watcher.commands import watch
from watcher.environment import Environment


def _endpoint(stderr: io.StringIO) -> str:
    line = wait_for(lambda: [x for x in stderr.getvalue().splitlines() if "metrics on http" in x], "the endpoint")[0]
    return str(line.split("metrics on ", 1)[1])


def _serving(url: str, source: str, lines: int) -> Samples:
    """Scrape until every line of ``source`` was analysed and an incident counted."""
    def done() -> Samples | None:
        s = _scrape(url)
        ok = (s.get("specwatch_lines_total", {}).get((("source", source),)) == lines
              and sum(s.get("specwatch_incidents_total", {}).values()) >= 1)
        return s if ok else None

    return wait_for(done, f"{lines} lines of {source} in /metrics")  # type: ignore[no-any-return]


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(fn()))
    t.start()
    return t, result


def _settle_now(tmp_path: Path) -> Path:
    conf = tmp_path / "c.toml"
    conf.write_text("[analysis]\nsettle = 0\n")
    return conf


def test_run_serves_the_analysis(tmp_path: Path) -> None:
    """run --metrics-listen exports the supervised server's lines, speculation and incidents while it runs."""
    go = tmp_path / "go"
    script = (f"import sys, os, time\nsys.stdout.buffer.write(open({str(SEED)!r}, 'rb').read())\nsys.stdout.flush()\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\n")
    stderr = io.StringIO()
    env = Environment(io.BytesIO(), io.BytesIO(), stderr, environ={"SPECWATCH_STATE_DIR": str(tmp_path)})
    t, result = _in_thread(lambda: cli.run(["run", "--metrics-listen", "127.0.0.1:0", "--config",
                                            str(_settle_now(tmp_path)), "--no-summary", "--source", "server",
                                            "--", sys.executable, "-c", script], env))
    try:
        s = _serving(_endpoint(stderr), "server", SEED.read_bytes().count(b"\n"))
    finally:
        go.touch()
        t.join(30)
    assert result == [0]
    assert s["specwatch_speculation_active"], "per-slot speculation is exported"


def test_watch_serves_the_analysis(tmp_path: Path) -> None:
    """watch --metrics-listen exports each followed file's lines, speculation and incidents."""
    log = tmp_path / "server.log"
    log.write_bytes(SEED.read_bytes())
    stderr = io.StringIO()
    env = Environment(io.BytesIO(), io.BytesIO(), stderr, environ={"SPECWATCH_STATE_DIR": str(tmp_path)})
    args = cli.build_parser().parse_args(["watch", str(log), "--from-start", "--poll", "--metrics-listen",
                                          "127.0.0.1:0", "--config", str(_settle_now(tmp_path))])
    stop = threading.Event()
    t, result = _in_thread(lambda: watch.run(args, env, stop=stop))
    try:
        s = _serving(_endpoint(stderr), "server.log", SEED.read_bytes().count(b"\n"))
    finally:
        stop.set()
        t.join(30)
    assert result == [0]
    assert s["specwatch_speculation_active"], "per-slot speculation is exported"


def test_pipe_counts_notification_deliveries(tmp_path: Path) -> None:
    """specwatch_notifications_total moves when the delivery worker sends an alert (pipe mode)."""
    rec = Receiver()
    r, w = os.pipe()
    stderr = io.StringIO()
    env = Environment(os.fdopen(r, "rb"), io.BytesIO(), stderr, environ={"SPECWATCH_STATE_DIR": str(tmp_path)})
    t, result = _in_thread(lambda: cli.run(["--metrics-listen", "127.0.0.1:0", "--config", str(_settle_now(tmp_path)),
                                            "--no-summary", "--notify", f"json://127.0.0.1:{rec.port}/"], env))
    try:
        url = _endpoint(stderr)
        os.write(w, SEED.read_bytes())
        wait_for(rec.bodies, "the alert to arrive")
        target = f"json://127.0.0.1:{rec.port}"
        s = wait_for(lambda: (x := _scrape(url)).get("specwatch_notifications_total", {}).get(
            (("outcome", "ok"), ("target", target))) and x, "the delivery to be counted")
    finally:
        os.close(w)
        t.join(30)
        rec.down()
    assert result == [0]
    assert s["specwatch_notifications_total"][(("outcome", "ok"), ("target", target))] >= 1
