"""Prometheus metrics: the endpoint parsed with prometheus_client's parser after replaying real logs."""

from __future__ import annotations

import io
import os
import threading
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SEED, wait_for
from watcher import catalogue as cat
from watcher import cli, metrics
from watcher.classify import Classifier
from watcher.commands._common import UsageError
from watcher.dispatch import Wiring
from watcher.environment import Environment
from watcher.exitstatus import ExitStatus
from watcher.framing import Framer, LineSelector
from watcher.pipeline import Analyzer
from watcher.relevance import NOISE, RELEVANT
from watcher.state import Settings

ROOT = Path(__file__).resolve().parent.parent
SEED_LOCAL = ROOT / "samples" / "engine" / "draft-kv-oom-verbose.log"
ACCEPTANCE = ROOT / "samples" / "public" / "llamacpp-pr12603-metal-low-acceptance-annotated.log"

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


def _reference(data: bytes) -> tuple[Analyzer, int]:
    """The analysis of ``data`` as scan does it, and the prefiltered relevant lines no pattern matches."""
    catalogue = cat.load([cat.default_dir()])
    ref = Analyzer(catalogue, source="stdin")
    ref.feed(data)
    classifier = Classifier(catalogue)
    records = Framer(LineSelector(catalogue.anchors)).feed(data)
    unmatched = sum(1 for r in records if classifier.classify(r) is None and RELEVANT.search(r.text)
                    and not NOISE.search(r.text))
    return ref, unmatched


def test_pipe_mode_serves_the_replayed_state(tmp_path: Path) -> None:
    """specwatch --metrics-listen in pipe mode: lines, incidents, speculation and unmatched lines match the log."""
    data = SEED.read_bytes()
    (tmp_path / "c.toml").write_text("[analysis]\nsettle = 0\n")
    r, w = os.pipe()
    stderr = io.StringIO()
    env = Environment(os.fdopen(r, "rb"), io.BytesIO(), stderr, environ={"SPECWATCH_STATE_DIR": str(tmp_path)})
    result: list[ExitStatus] = []
    t = threading.Thread(target=lambda: result.append(cli.run(
        ["--metrics-listen", "127.0.0.1:0", "--config", str(tmp_path / "c.toml"), "--no-summary"], env)))
    t.start()
    try:
        line = wait_for(lambda: [x for x in stderr.getvalue().splitlines() if "metrics on http" in x], "the URL")[0]
        url = line.split("metrics on ", 1)[1]
        os.write(w, data)
        ref, unmatched = _reference(data)
        expected_total = Counter(i.kind for i in ref.incidents())
        newlines = data.count(b"\n")

        def settled() -> Samples | None:
            s = _scrape(url)
            done = (_get(s, "specwatch_lines_total", source="stdin") == newlines and
                    sum(s.get("specwatch_incidents_total", {}).values()) == len(ref.incidents()))
            return s if done else None

        s = wait_for(settled, "the replay to be analysed")
    finally:
        os.close(w)
        t.join(30)
    assert result == [ExitStatus.OK]
    assert expected_total, "the sample must produce incidents"
    for kind, n in expected_total.items():
        assert _get(s, "specwatch_incidents_total", kind=kind) == n
    open_now = Counter((i.kind, i.severity) for i in ref.incidents() if i.status == "open")
    for (kind, severity), n in open_now.items():
        assert _get(s, "specwatch_incidents_open", kind=kind, severity=severity) == n
    assert sum(s["specwatch_incidents_open"].values()) == sum(open_now.values())
    assert _get(s, "specwatch_unmatched_relevant_lines_total", source="stdin") == unmatched
    active = s["specwatch_speculation_active"]
    latest = {metrics.server_label(run.target_model): run for run in ref.stream.runs}
    for server, run in latest.items():
        requested = 1.0 if run.spec_requested or run.spec_expected else 0.0
        assert _get(s, "specwatch_speculation_requested", source="stdin", server=server) == requested
        for slot in run.slots.values():
            want = 1.0 if slot.speculative == "on" or (slot.speculative == "unknown" and run.speculation == "on") \
                else 0.0
            assert _get(s, "specwatch_speculation_active", source="stdin", server=server, slot=str(slot.id)) == want
    # The seed: four slots whose draft context failed (LM Studio), none speculating.
    assert len(active) >= 4
    assert set(active.values()) == {0.0}
    assert _get(s, "specwatch_incidents_total", kind="draft_context_failed") >= 1


def test_acceptance_ratio_and_token_counters() -> None:
    """A log with draft statistics exports its drafted and accepted tokens and their ratio."""
    sink = metrics.start("127.0.0.1", 0)
    try:
        catalogue = cat.load([cat.default_dir()])
        a = Analyzer(catalogue, source="/var/log/llama/metal-2025-03-28.log")
        sink.analyzer(a)
        a.feed(ACCEPTANCE.read_bytes())
        a.finish()
        run = a.stream.runs[-1]
        assert (run.drafted, run.accepted) == (304, 70)  # the sample's own totals
        host, port = sink.address or ("", 0)
        s = _scrape(f"http://{host}:{port}/metrics")
        server = metrics.server_label(run.target_model)
        labels = {"source": "metal.log", "server": server}
        assert _get(s, "specwatch_draft_acceptance_ratio", **labels) == pytest.approx(70 / 304)
        assert _get(s, "specwatch_draft_tokens_drafted_total", **labels) == 304
        assert _get(s, "specwatch_draft_tokens_accepted_total", **labels) == 70
        assert _get(s, "specwatch_speculation_active", slot="all", **labels) == 1
        assert _get(s, "specwatch_lines_total", source="metal.log") == a.lines
    finally:
        sink.close()


@pytest.mark.parametrize("released", ["each restart", "at the end"])
def test_a_restart_loop_is_one_incident_and_every_occurrence(released: str) -> None:
    """200 restarts failing the same way: specwatch_incidents_total says one incident (one alert) and
    specwatch_incident_occurrences_total the 200 failures, whether the dispatcher hands on each recurrence
    or one change that already counts them all."""
    sink = metrics.start("127.0.0.1", 0)
    try:
        wiring = Wiring(cat.load([cat.default_dir()]), Settings(), [sink], settle=0)
        a = wiring.analyzer("/var/log/llama/loop.log")
        for _ in range(200):
            a.feed(SEED_LOCAL.read_bytes())
            if released == "each restart":
                wiring.dispatcher.tick()
        a.finish()
        wiring.dispatcher.flush()
        [inc] = a.incidents()
        assert inc.count == 200
        host, port = sink.address or ("", 0)
        s = _scrape(f"http://{host}:{port}/metrics")
        assert _get(s, "specwatch_incidents_total", kind=inc.kind) == 1
        assert _get(s, "specwatch_incident_occurrences_total", kind=inc.kind) == 200
        assert _get(s, "specwatch_incident_occurrences_total", kind="spec_disabled") == 0
    finally:
        sink.close()


def test_replaced_analyzer_continues_its_counters() -> None:
    """A new analyzer for the same source (rotation, restart) adds to the counters instead of resetting them."""
    m = metrics.Metrics()
    catalogue = cat.load([cat.default_dir()])
    data = SEED_LOCAL.read_bytes()
    first = Analyzer(catalogue, source="server.log")
    m.register(first)
    first.feed(data)
    second = Analyzer(catalogue, source="server.log")
    m.register(second)
    second.feed(data)
    lines = {tuple(s.labels.values()): s.value for fam in m.collect() if fam.name == "specwatch_lines"
             for s in fam.samples}
    assert lines == {("server.log",): 2 * data.count(b"\n")}


def test_delivery_counters_hide_secrets() -> None:
    """Delivery counters are per target, with tokens reduced to a hash and addresses kept."""
    sink = metrics.start("127.0.0.1", 0)
    try:
        sink.delivery("slack://T0SECRET1/B0SECRET2/XXSECRET3", ok=False)
        sink.delivery("slack://T0SECRET1/B0SECRET2/XXSECRET3", ok=True)
        sink.delivery("alertmanager://user:pw123456@10.0.0.5:9093/?ttl=60", ok=True)
        host, port = sink.address or ("", 0)
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        sink.close()
    assert "SECRET" not in text and "pw123456" not in text
    s = {(tuple(sorted(x.labels.items())), x.value) for fam in text_string_to_metric_families(text)
         if fam.name == "specwatch_notifications" for x in fam.samples}
    slack = metrics.target_label("slack://T0SECRET1/B0SECRET2/XXSECRET3")
    assert ((("outcome", "failed"), ("target", slack)), 1.0) in s
    assert ((("outcome", "ok"), ("target", slack)), 1.0) in s
    assert ((("outcome", "ok"), ("target", "alertmanager://10.0.0.5:9093")), 1.0) in s


@given(st.text(alphabet=st.characters(min_codepoint=48, max_codepoint=122).filter(str.isalnum), min_size=8,
               max_size=40))
def test_target_label_never_contains_a_token(token: str) -> None:
    """Whatever part of the URL a token sits in, the label does not contain it."""
    for url in (f"slack://{token}/B1/C1", f"json://user:{token}@host.example/path", f"tgram://{token}/123",
                f"jsons://host.example/{token}?key={token}", f"discord://{token}/{token}"):
        assert token not in metrics.target_label(url)


@given(st.from_regex(r"[a-z]{1,8}-20[0-9]{2}-[01][0-9]-[0-3][0-9](T[0-9]{2}:[0-9]{2}:[0-9]{2})?\.log", fullmatch=True))
def test_source_labels_drop_dates(name: str) -> None:
    """File names with dates map to one label, so a year of daily logs is one series."""
    assert metrics.source_label("/var/log/" + name) == name.split("-", maxsplit=1)[0] + ".log"


def test_listen_addresses() -> None:
    """Loopback by default; any other address only with allow_remote."""
    assert metrics.parse_listen("9808") == ("127.0.0.1", 9808)
    assert metrics.parse_listen(":9808") == ("127.0.0.1", 9808)
    assert metrics.parse_listen("[::1]:9808") == ("::1", 9808)
    assert metrics.parse_listen("localhost:9808") == ("localhost", 9808)
    with pytest.raises(UsageError, match="not a loopback"):
        metrics.parse_listen("0.0.0.0:9808")
    assert metrics.parse_listen("0.0.0.0:9808", allow_remote=True) == ("0.0.0.0", 9808)
    with pytest.raises(UsageError):
        metrics.parse_listen("host:port")


def test_remote_address_refused_on_the_command_line(tmp_path: Path) -> None:
    """Pipe mode with a non-loopback metrics address says why, passes input through, exits 2."""
    stderr, out = io.StringIO(), io.BytesIO()
    env = Environment(io.BytesIO(b"hello\n"), out, stderr, environ={"SPECWATCH_STATE_DIR": str(tmp_path)})
    assert cli.run(["--metrics-listen", "0.0.0.0:0"], env) == ExitStatus.USAGE
    assert "--metrics-allow-remote" in stderr.getvalue()
    assert out.getvalue() == b"hello\n"


def test_memory_by_role_and_pair_acceptance() -> None:
    """A served load exports its measured memory per device, role and kind, and its pair's acceptance."""
    sink = metrics.start("127.0.0.1", 0)
    try:
        catalogue = cat.load([cat.default_dir()])
        a = Analyzer(catalogue, source="chat.log")
        sink.analyzer(a)
        a.feed((ROOT / "samples" / "ledger" / "mid-tiny-np2-c8k.log").read_bytes())
        a.finish()
        host, port = sink.address or ("", 0)
        s = _scrape(f"http://{host}:{port}/metrics")
        base = {"source": "chat.log", "server": "mid.gguf", "device": "CPU"}
        # the log's own buffer lines: target KV 128 MiB for -c 8192, draft weights 0.24 MiB
        assert _get(s, "specwatch_model_memory_mib", role="target", kind="kv", **base) == 128.0
        assert _get(s, "specwatch_model_memory_mib", role="draft", kind="weights", **base) == 0.24
        assert _get(s, "specwatch_pair_acceptance_ratio", source="chat.log", server="mid.gguf",
                    draft="draft-random.gguf") == 0.0
    finally:
        sink.close()
