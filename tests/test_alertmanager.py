"""The alertmanager:// target against a real Alertmanager (Debian's prometheus-alertmanager) on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result, cli, wait_for
from watcher import catalogue as cat
from watcher.environment import Environment
from watcher.incidents import Incident
from watcher.notify import alertmanager as am
from watcher.notify.sink import StoreSink
from watcher.notify.targets import Target
from watcher.notify.worker import Settings
from watcher.pipeline import Analyzer

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "engine" / "draft-kv-oom-verbose.log"
BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
CONFIG = "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Alertmanager:
    """A throw-away Alertmanager process: own config, own data dir, no clustering."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert BINARY is not None
        (self.tmp / "am.yml").write_text(CONFIG)
        (self.tmp / "data").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={self.tmp / 'am.yml'}", f"--storage.path={self.tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(self.tmp / "am.log").open("ab"))
        wait_for(self._ready, "Alertmanager to become ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "/api/v2/alerts?active=true&silenced=true&inhibited=true",
                                    timeout=2) as r:
            return list(json.load(r))


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    if BINARY is None:
        pytest.skip("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    a = Alertmanager(tmp_path, _free_port())
    a.start()
    try:
        yield a
    finally:
        a.stop()


def _replay(path: Path) -> list[Incident]:
    analyzer = Analyzer(cat.load([cat.default_dir()]), source=str(path))
    analyzer.feed(path.read_bytes())
    analyzer.finish()
    return analyzer.incidents()


def _sink(tmp: Path, url: str) -> StoreSink:
    env = Environment(io.BytesIO(), io.BytesIO(), io.StringIO(), environ={})
    return StoreSink(tmp / "state.db", [Target(url)], Settings(repeat=0, backoff=0.2, backoff_max=0.5), env,
                     exit_grace=5.0)


def _firing(a: Alertmanager, kind: str) -> list[dict[str, Any]]:
    return [x for x in a.alerts() if x["labels"].get("kind") == kind and x["status"]["state"] == "active"]


def test_replayed_sample_fires_then_resolves(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """A real draft-KV-OOM log becomes one firing alert with stable labels; its resolution ends it."""
    incidents = _replay(SAMPLE)
    assert [i.kind for i in incidents] == ["draft_context_failed"]
    inc = incidents[0]
    sink = _sink(tmp_path, f"alertmanager://127.0.0.1:{alertmanager.port}")
    try:
        sink.incident(inc, "opened")
        alert = wait_for(lambda: _firing(alertmanager, "draft_context_failed"), "the alert")[0]
        assert alert["labels"] == {
            "alertname": "SpecwatchDraftContextFailed", "kind": "draft_context_failed", "severity": "critical",
            "instance": socket.gethostname(), "source": "draft-kv-oom-verbose.log", "model": "target.gguf",
            "draft_model": "wide-kv.gguf"}
        assert alert["annotations"]["title"] == inc.title
        assert alert["annotations"]["specwatch_id"] == inc.key
        assert "failed" in alert["annotations"]["evidence"]
        assert alert["annotations"]["hint"]
        inc.status, inc.resolution = "resolved", "server restarted without the draft"
        sink.incident(inc, "resolved")
        wait_for(lambda: not _firing(alertmanager, "draft_context_failed"), "the alert to resolve")
    finally:
        sink.close()


def test_outage_loses_nothing(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """An incident raised while Alertmanager is down reaches it once it is back (the outbox retries)."""
    inc = _replay(SAMPLE)[0]
    alertmanager.stop()
    sink = _sink(tmp_path, f"alertmanager://127.0.0.1:{alertmanager.port}")
    try:
        sink.incident(inc, "opened")
        assert sink.worker is not None
        wait_for(lambda: any(not r.ok for r in sink.worker.run_once()) or sink.worker.pending_count(),
              "a failed attempt")
        assert sink.worker.pending_count() == 1
        alertmanager.start()
        alert = wait_for(lambda: _firing(alertmanager, "draft_context_failed"), "the alert after the outage")[0]
        assert alert["annotations"]["specwatch_id"] == inc.key
        wait_for(lambda: sink.worker is not None and sink.worker.pending_count() == 0, "the outbox to drain")
    finally:
        sink.close()


def test_acknowledged_incident_ends_the_alert(alertmanager: Alertmanager) -> None:
    """Posting an acknowledged incident sets endsAt to the acknowledgement, so Alertmanager resolves it."""
    inc = _replay(SAMPLE)[0]
    item = {**inc.as_dict(), "host": "box1", "message": "opened", "opened_at": time.time() - 60,
            "details": {"model": inc.model, "draft_model": inc.draft_model}}
    am.post(alertmanager.url, am.alerts_payload([item]))
    wait_for(lambda: _firing(alertmanager, "draft_context_failed"), "the alert")
    acked = {**item, "status": "acknowledged", "acked_at": time.time(), "message": "repeat"}
    am.post(alertmanager.url, am.alerts_payload([acked]))
    wait_for(lambda: not _firing(alertmanager, "draft_context_failed"), "the acknowledged alert to end")


def test_repost_is_one_alert(alertmanager: Alertmanager) -> None:
    """Re-posting an open incident refreshes the same alert (same label set), never adds one."""
    inc = _replay(SAMPLE)[0]
    item = {**inc.as_dict(), "host": "box1", "message": "opened", "details": {"model": inc.model}}
    for message in ("opened", "repeat", "repeat"):
        am.post(alertmanager.url, am.alerts_payload([{**item, "message": message}]))
    alerts = wait_for(lambda: _firing(alertmanager, "draft_context_failed"), "the alert")
    assert len(alerts) == 1
    assert alerts[0]["labels"]["instance"] == "box1"


def test_unreachable_alertmanager_raises() -> None:
    """A refused connection is an AlertmanagerError (the plugin returns False and the outbox retries)."""
    with pytest.raises(am.AlertmanagerError):
        am.post(f"http://127.0.0.1:{_free_port()}", am.alerts_payload([{"kind": "spec_disabled"}]), timeout=2)


def test_payload_times_and_labels() -> None:
    """Firing alerts end ttl after the post; resolved ones at their resolution; labels never carry paths."""
    now = 1_700_000_000.0
    firing = am.alerts_payload([{"kind": "spec_disabled", "severity": "warning", "host": "h",
                                 "source": "/var/log/llama/server-2024-05-01.log", "opened_at": now - 10,
                                 "details": {"model": "/models/big.gguf"}}], now=now, ttl=600)[0]
    assert firing["labels"]["source"] == "server.log"
    assert firing["labels"]["model"] == "big.gguf"
    assert firing["startsAt"] == am.rfc3339(now - 10)
    assert firing["endsAt"] == am.rfc3339(now + 600)
    resolved = am.alerts_payload([{"kind": "spec_disabled", "status": "resolved", "resolved_at": now - 1,
                                   "opened_at": now - 10}], now=now)[0]
    assert resolved["endsAt"] == am.rfc3339(now - 1)


def test_acknowledged_payload_ends_at_the_ack() -> None:
    """An acknowledged message ends the alert at the acknowledgement's time and carries the note."""
    now = 1_700_000_000.0
    alert = am.alerts_payload([{"kind": "spec_disabled", "message": "acknowledged", "status": "acknowledged",
                                "acked_at": now - 5, "ack_note": "swapping the draft", "opened_at": now - 60}],
                              now=now)[0]
    assert alert["endsAt"] == am.rfc3339(now - 5)
    assert alert["annotations"]["ack_note"] == "swapping the draft"


def test_alertmanager_plugin_wants_acknowledgements() -> None:
    """The alertmanager and desktop plugins declare acknowledged messages (they end an alert, close a bubble);
    other targets keep the default set."""
    from watcher.notify import plugins

    assert plugins.wants("alertmanager://127.0.0.1:9093", "acknowledged")
    assert plugins.wants("alertmanagers://u:****@am.example/", "acknowledged")
    assert plugins.wants("specwatch://", "acknowledged")
    for url in ("json://127.0.0.1/hook", "mmost://host/token", "nosuchscheme://x"):
        assert not plugins.wants(url, "acknowledged")
        assert plugins.wants(url, "resolved") and plugins.wants(url, "opened")


def test_apprise_knows_the_schemes() -> None:
    """alertmanager:// and alertmanagers:// are apprise URLs; the password never shows in the privacy URL."""
    import apprise

    ap = apprise.Apprise()
    assert ap.add("alertmanager://127.0.0.1:9093")
    assert ap.add("alertmanagers://user:s3cretpass@am.example:443/prefix?ttl=60")
    shown = [s.url(privacy=True) for s in ap]
    assert not any("s3cretpass" in u for u in shown)
    assert ap[1].base_url == "https://am.example:443/prefix"
    assert ap[1].ttl == 60


# -- acknowledgements end the alert ------------------------------------------------------------------------------

SEED = ROOT / "samples" / "seed" / "lmstudio-280-draft-kv-oom.log"
SEED_KINDS = {"draft_context_failed", "spec_disabled"}


class Gate:
    """An HTTP forwarder in front of Alertmanager: ``close()`` makes it unreachable while it keeps its alerts."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = _free_port()
        self.server: ThreadingHTTPServer | None = None
        self.open()

    def open(self) -> None:
        upstream = self.upstream

        class Forward(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                req = urllib.request.Request(upstream + self.path, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    status, reply = r.status, r.read()
                self.send_response(status)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Forward)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class Watcher:
    """``specwatch`` in pipe mode as its own process, fed the seed log, kept running (stdin stays open)."""

    def __init__(self, tmp: Path, url: str) -> None:
        conf = tmp / "watcher.toml"
        conf.write_text("[notify]\nrepeat = 0\nbackoff = 0.2\nbackoff_max = 0.5\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "watcher", "--config", str(conf), "--notify", url,
                                      "--no-summary"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=(tmp / "watcher.err").open("wb"), env=env)
        assert self.proc.stdin is not None
        self.proc.stdin.write(SEED.read_bytes())
        self.proc.stdin.flush()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _active(a: Alertmanager) -> set[str]:
    return {x["labels"]["kind"] for x in a.alerts() if x["status"]["state"] == "active"}


def _ack(*argv: str) -> Result:
    res = cli("ack", *argv)
    assert res.status == 0, res.stderr
    return res


def test_ack_ends_the_alert_through_the_running_watcher(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """The seed fires two alerts; `specwatch ack --all` with no targets of its own ends both within seconds."""
    watcher = Watcher(tmp_path, f"alertmanager://127.0.0.1:{alertmanager.port}")
    try:
        wait_for(lambda: _active(alertmanager) == SEED_KINDS, "the seed's two alerts")
        res = _ack("--all", "--note", "swapping the draft")
        started = time.monotonic()
        assert res.out.count("acknowledged ") == 2
        assert "queued: alertmanager://127.0.0.1:" in res.out  # this process knows no target: the watcher sends
        wait_for(lambda: not _active(alertmanager), "the acknowledged alerts to end", limit=10)
        assert time.monotonic() - started < 5
    finally:
        watcher.stop()


def test_ack_without_a_watcher_ends_the_alert_itself(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """With no watcher running, `specwatch ack ID --notify URL` posts the end itself before it returns."""
    url = f"alertmanager://127.0.0.1:{alertmanager.port}"
    watcher = Watcher(tmp_path, url)
    wait_for(lambda: _active(alertmanager) == SEED_KINDS, "the seed's two alerts")
    watcher.stop()
    key = next(x["annotations"]["specwatch_id"] for x in alertmanager.alerts()
               if x["labels"]["kind"] == "draft_context_failed")
    res = _ack(key[:8], "--notify", url)
    assert f"acknowledged {key[:8]}" in res.out and f"alert ended: {url}" in res.out
    assert _active(alertmanager) == {"spec_disabled"}  # already ended when ack returned
    assert cli("notify", "list", "--notify", url).out.count("queued:") == 0


def test_ack_while_alertmanager_is_down_is_delivered_later(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """An ack while Alertmanager is unreachable is queued, and the watcher ends the alert once it is back, once."""
    gate = Gate(alertmanager.url)
    url = f"alertmanager://127.0.0.1:{gate.port}?cto=1&rto=2"
    watcher = Watcher(tmp_path, url)
    try:
        wait_for(lambda: _active(alertmanager) == SEED_KINDS, "the seed's two alerts")
        gate.close()
        res = _ack("--all", "--notify", url, "--config", str(tmp_path / "watcher.toml"))
        assert "queued: alertmanager://127.0.0.1:" in res.out and "cannot reach Alertmanager" in res.out
        time.sleep(1.5)  # the watcher retries meanwhile, and fails too
        assert _active(alertmanager) == SEED_KINDS
        gate.open()
        wait_for(lambda: not _active(alertmanager), "the alerts to end once Alertmanager is back", limit=15)
    finally:
        gate.close()
        watcher.stop()
    rows = sqlite3.connect(Path(os.environ["SPECWATCH_STATE_DIR"]) / "specwatch.db").execute(
        "SELECT state, attempts FROM outbox WHERE kind = 'acknowledged'").fetchall()
    assert len(rows) == 2  # one per incident, each sent once after failing at least once
    assert all(state == "sent" and attempts >= 2 for state, attempts in rows)


def test_recurrence_after_ack_fires_again(alertmanager: Alertmanager, tmp_path: Path) -> None:
    """The same failure piped after an ack by a new specwatch process (a pipe's new server start) fires again."""
    url = f"alertmanager://127.0.0.1:{alertmanager.port}"
    first = Watcher(tmp_path, url)
    wait_for(lambda: _active(alertmanager) == SEED_KINDS, "the seed's two alerts")
    first.stop()
    _ack("--all", "--notify", url)
    assert not _active(alertmanager)
    again = Watcher(tmp_path, url)
    try:
        wait_for(lambda: _active(alertmanager) == SEED_KINDS, "the alerts to fire again")
        assert "open" in cli("status").out
    finally:
        again.stop()
