"""Record /props, /slots and /metrics of llama.cpp b11549's server (xllamacpp) for the probe tests.

Run with the engine venv: .venv/bin/python samples/http/record.py
Two scenarios: a working draft (speculation happens) and -md without --spec-type (configured, idle).
Each is recorded before and after two real completions, into samples/http/b11549-<scenario>/.
"""

from __future__ import annotations

import json
import sys
import tempfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.engine.harness import SCENARIOS, _set_param, build_models, show_models  # noqa: E402


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def record(name: str, models_dir: Path) -> None:
    import xllamacpp as xlc

    models = build_models(models_dir)
    sc = SCENARIOS[name]
    params = xlc.CommonParams()
    for key, value in {**sc.params(models, 3), "endpoint_metrics": True, "endpoint_props": True}.items():
        _set_param(params, key, value, xlc)
    server = xlc.Server(params)
    base = server.listening_address
    assert base.startswith("http://127.0.0.1:")
    out = HERE / f"b11549-{name}"
    out.mkdir(exist_ok=True)

    def snap(tag: str) -> None:
        for ep in ("props", "slots", "metrics"):
            status, ctype, body = get(f"{base}/{ep}")
            record = json.dumps({"status": status, "content_type": ctype, "body": body}, indent=1)
            (out / f"{tag}.{ep}").write_text(show_models(record, models_dir))

    snap("idle")
    for prompt in ("the quick brown fox", "a b c d e f"):
        req = urllib.request.Request(base + "/completion", data=json.dumps(
            {"prompt": prompt, "n_predict": 32, "ignore_eos": True, "temperature": 0.0}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
    snap("after")
    del server


if __name__ == "__main__":
    d = Path(tempfile.gettempdir()) / "specwatch-engine-models"
    for n in sys.argv[1:] or ["spec-working", "draft-without-spec-type"]:
        record(n, d)
