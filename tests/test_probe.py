"""The probe against a real HTTP server on 127.0.0.1 serving recorded llama-server b11549 responses."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import wait_for
from watcher import probe as pr
from watcher.cli import run as cli_run
from watcher.dispatch import Dispatcher
from watcher.environment import Environment
from watcher.incidents import Incident

HTTP = Path(__file__).resolve().parent.parent / "samples" / "http"


def _load(scenario: str, tag: str, strip_counters: bool = False) -> dict[str, tuple[int, str, str]]:
    out = {}
    for ep in ("props", "slots", "metrics"):
        d = json.loads((HTTP / scenario / f"{tag}.{ep}").read_text())
        body = d["body"]
        if strip_counters and ep == "metrics":
            # The older era: builds that export no spec_decode_* counters.
            body = "".join(line for line in body.splitlines(True) if "spec_decode" not in line)
        out[f"/{ep}"] = (d["status"], d["content_type"], body)
    return out


class _Server:
    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, str]] = {}
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, ctype, body = routes.get(self.path, (404, "text/plain", "Not Found"))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


def _env() -> tuple[Environment, io.BytesIO, io.StringIO]:
    out, err = io.BytesIO(), io.StringIO()
    return Environment(stdin=io.BytesIO(), stdout=out, stderr=err, environ={}), out, err


def test_working_draft_is_on_with_counters(server: _Server) -> None:
    """b11549 with a working draft: slots speculative, drafted tokens counted, probe exits 0."""
    server.routes.update(_load("b11549-spec-working", "after"))
    v = pr.judge(pr.fetch(server.url))
    assert v.status == "on" and v.counters and v.drafted and v.drafted > 0
    env, out, _ = _env()
    assert cli_run(["probe", server.url], env) == 0
    assert b"speculation on" in out.getvalue()


def test_draft_without_spec_type_is_off_when_expected(server: _Server) -> None:
    """-md without --spec-type: /slots says speculative false; with --expect-spec that is a finding (exit 1)."""
    server.routes.update(_load("b11549-draft-without-spec-type", "after"))
    env, out, _ = _env()
    assert cli_run(["probe", "--expect-spec", "--json", server.url], env) == 1
    doc = json.loads(out.getvalue())
    assert doc["status"] == "off" and doc["plain_slots"] == [0] and doc["drafted"] == 0


def test_attached_but_idle_with_counters(server: _Server) -> None:
    """A speculator attached whose counters stay at zero after real generation is 'idle' (a finding)."""
    routes = _load("b11549-spec-working", "after")
    status, ctype, body = routes["/metrics"]
    zeroed = "\n".join(
        (line.rsplit(" ", 1)[0] + " 0") if line.startswith("llamacpp:spec_decode") else line
        for line in body.splitlines())
    routes["/metrics"] = (status, ctype, zeroed)
    server.routes.update(routes)
    v = pr.judge(pr.fetch(server.url))
    assert v.status == "idle" and v.finding


def test_older_build_without_counters(server: _Server) -> None:
    """Without spec_decode counters the /slots flag decides: attached is 'on', and nothing is counted."""
    server.routes.update(_load("b11549-spec-working", "after", strip_counters=True))
    v = pr.judge(pr.fetch(server.url))
    assert v.status == "on" and not v.counters and v.drafted is None
    server.routes.update(_load("b11549-draft-without-spec-type", "after", strip_counters=True))
    assert pr.judge(pr.fetch(server.url), expect=True).status == "off"


def test_missing_endpoints_are_tolerated(server: _Server) -> None:
    """/metrics disabled (501) still leaves /slots to judge from."""
    routes = _load("b11549-spec-working", "idle")
    routes["/metrics"] = (501, "application/json", '{"error":{"code":501}}')
    server.routes.update(routes)
    snap = pr.fetch(server.url)
    assert snap.metrics is None and "metrics" in snap.errors
    assert pr.judge(snap).status == "on"


def test_nothing_answers_is_usage_error(server: _Server) -> None:
    """No endpoint answering is exit 2 with a one-line reason."""
    env, _, err = _env()
    assert cli_run(["probe", server.url], env) == 2
    assert "no endpoint answered" in err.getvalue()


@pytest.mark.parametrize(("url", "ok"), [
    ("http://127.0.0.1:8080", True), ("http://localhost:8080/", True), ("http://[::1]:8080", True),
    ("http://127.3.4.5:1", True), ("http://192.168.1.5:8080", False), ("http://example.com", False),
])
def test_loopback_only_by_default(url: str, ok: bool) -> None:
    """Only loopback hosts are probed unless --allow-remote is given."""
    if ok:
        assert pr.check_url(url, False) == url.rstrip("/")
    else:
        with pytest.raises(pr.ProbeError, match="allow-remote"):
            pr.check_url(url, False)
        assert pr.check_url(url, True)


def test_poller_feeds_dispatcher_and_resolves(server: _Server) -> None:
    """The --probe poller opens an incident through the dispatcher, and resolves it when drafting starts."""
    seen: list[tuple[str, str]] = []

    class Sink:
        def incident(self, inc: Incident, change: str) -> None:
            seen.append((inc.kind, change))

        def close(self) -> None:
            pass

    disp = Dispatcher([Sink()], settle=0)
    poller = pr.Poller(server.url, 60, disp.changed, expect=True)
    server.routes.update(_load("b11549-draft-without-spec-type", "after"))
    assert poller.poll_once() is not None
    disp.tick()
    server.routes.update(_load("b11549-spec-working", "after"))
    poller.poll_once()
    disp.tick()
    assert seen == [("spec_disabled", "opened"), ("spec_disabled", "resolved")]


def test_probe_option_registered_for_analysing_commands() -> None:
    """--probe is an option of the commands that read logs (one of the listed extensions)."""
    from watcher.cli import build_parser

    args = build_parser().parse_args(["scan", "--probe", "http://127.0.0.1:1", "x.log"])
    assert args.probe == "http://127.0.0.1:1" and args.probe_interval == 30.0


def test_pipe_mode_summary_and_exit_status_include_probe_incidents(server: _Server) -> None:
    """In pipe mode a --probe finding is in the exit summary and --exit-status, and its banner names the URL."""
    server.routes.update(_load("b11549-draft-without-spec-type", "after"))
    r, w = os.pipe()
    err = io.StringIO()
    stdin = os.fdopen(r, "rb")
    env = Environment(stdin=stdin, stdout=io.BytesIO(), stderr=err,
                      environ={"NO_COLOR": "1", "SPECWATCH_STATE_DIR": os.environ["SPECWATCH_STATE_DIR"]})

    def feed() -> None:
        os.write(w, b"server starting\n")
        wait_for(lambda: "SPECWATCH CRITICAL" in err.getvalue(), "the probe's banner")
        os.close(w)

    writer = threading.Thread(target=feed)
    writer.start()
    status = cli_run(["--probe", server.url, "--probe-expect-spec", "--probe-interval", "0.2", "--exit-status"], env)
    writer.join()
    stdin.close()
    text = err.getvalue()
    assert status == 1
    assert "specwatch: 1 open incident(s) at exit:" in text and "no open incidents" not in text
    assert f"source      probe {server.url}\n" in text
    assert "lines 0-0" not in text
