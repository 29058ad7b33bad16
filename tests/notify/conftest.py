"""A real HTTP receiver on 127.0.0.1 that can go down and come back on the same port."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from watcher.environment import Environment
from watcher.incidents import Evidence, Incident


class Receiver:
    """Records every POST (path, headers, parsed body); ``down()``/``up()`` simulate an outage."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], Any]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode()
                with rec.lock:
                    rec.posts.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def bodies(self, path: str | None = None) -> list[Any]:
        with self.lock:
            return [b for p, _, b in self.posts if path is None or p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    if r.server is not None:
        r.down()


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def make_env(environ: dict[str, str], stdin: bytes = b"") -> tuple[Environment, io.BytesIO, io.StringIO]:
    out, err = io.BytesIO(), io.StringIO()
    return Environment(stdin=io.BytesIO(stdin), stdout=out, stderr=err, environ=environ), out, err


def incident(n: int = 0, kind: str = "draft_context_failed", severity: str = "critical", **kw: Any) -> Incident:
    """A realistic incident (the OOM of the issue's example title)."""
    inc = Incident(kind=kind, severity=severity, source=f"llama-server-{n}", run=1, model="/m/big.gguf",
                   draft_model=f"/m/draft-{n}.gguf", slots=[0, 1, 2, 3], device="CUDA1", mib=7168.0,
                   reason="failed to allocate", hint="Lower --ctx-size-draft or move the draft: -devd CUDA0.",
                   server_state="serving_without_speculation", **kw)
    inc.evidence = [Evidence(10, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 7168.00 MiB on device 1: "
                                 "cudaMalloc failed: out of memory"),
                    Evidence(11, "llama_init_from_model: failed to initialize the context")]
    return inc
