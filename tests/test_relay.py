"""The relay stage: wrappers around llama.cpp's lines (docker compose, journald, LocalAI, ollama, Jan...) are
stripped before classification, so a relayed log reads exactly like the plain one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLES
from watcher import catalogue as cat
from watcher.classify import Classifier
from watcher.events import Record
from watcher.pipeline import Analyzer
from watcher.relay import escape, unescape
from watcher.samples import golden, sample_logs

CATALOGUE = cat.load()
RELAYS = CATALOGUE.relays
#: The catalogue with the relays' marks cleared. A mark adds meaning on purpose (ollama's "process has
#: terminated: X" says X killed the process), which holds for the one line a host says it of, not for every
#: line wrapped the same way: the wrapping properties compare stripping alone.
UNMARKED = dataclasses.replace(CATALOGUE, relays=tuple(dataclasses.replace(r, mark="") for r in RELAYS))
LOGS = [*sample_logs(SAMPLES), *sorted((SAMPLES.parent / "tests" / "corpus").glob("*.log"))]
EXAMPLES = [(r, ex) for r in RELAYS for ex in r.examples]
NEAR = [(r, nm) for r in RELAYS for nm in r.near_misses]


def _analyse(data: bytes, catalogue: cat.Catalogue = CATALOGUE) -> dict:  # type: ignore[type-arg]
    a = Analyzer(catalogue, source="x")
    a.feed(data)
    a.finish()
    return golden(a)


def _wrap(data: bytes, *relays: cat.Relay) -> bytes:
    out = []
    for line in data.decode("utf-8", "replace").split("\n"):
        body = line.rstrip("\r")
        if body.strip():
            for r in relays:
                body = r.wrapped(body)
        out.append(body)
    return "\n".join(out).encode()


_PLAIN = {log: _analyse(log.read_bytes(), UNMARKED) for log in LOGS}


def test_the_shipped_relays_cover_the_hosts_of_issue_13() -> None:
    """docker compose, journald, kubectl, LocalAI, ollama, Jan/cortex and llama-box are all relays."""
    ids = {r.id for r in RELAYS}
    assert {"docker-compose", "journald", "kubectl-prefix", "localai-grpc-stderr", "logfmt-line", "logfmt-error",
            "ollama-runner-terminated", "jan-nitro-stderr", "cortex-trantor", "llama-box-timestamp"} <= ids


@pytest.mark.parametrize("item", EXAMPLES, ids=[f"{r.id}:{i}" for i, (r, _) in enumerate(EXAMPLES)])
def test_example_gives_its_inner_line(item: tuple[cat.Relay, cat.RelayExample]) -> None:
    """Each real wrapped example comes out as the llama.cpp line inside it."""
    relay, ex = item
    assert relay.strip(ex.line) == ex.inner


@pytest.mark.parametrize("item", NEAR, ids=[f"{r.id}:{i}" for i, (r, _) in enumerate(NEAR)])
def test_near_miss_is_left_alone(item: tuple[cat.Relay, str]) -> None:
    """llama.cpp's own lines that look like a wrapper (slot lines with ' | ', pid prefixes) are not cut."""
    _, line = item
    assert CATALOGUE.relay.unwrap(line) == line


def _wrappable(relay: cat.Relay) -> list[Path]:
    """The logs this relay can really have printed: a router's child is never a router itself (server-models.cpp
    removes --models-dir and --models-preset from its arguments), so logs already holding router children's
    lines are not wrapped in a router's prefix again."""
    if "channel" not in relay.regex.groupindex:
        return LOGS
    return [log for log in LOGS if not any(relay.strip(line) for line in log.read_text(errors="replace").splitlines())]


@pytest.mark.parametrize("relay", RELAYS, ids=[r.id for r in RELAYS])
def test_every_sample_wrapped_in_this_relay_gives_the_same_analysis(relay: cat.Relay) -> None:
    """Every sample and corpus log, each line wrapped by this relay, yields the same runs and incidents."""
    differ = [log.name for log in _wrappable(relay)
              if _analyse(_wrap(log.read_bytes(), relay), UNMARKED) != _PLAIN[log]]
    assert not differ, differ


def test_wrapping_changes_the_analysis_without_the_relay_stage() -> None:
    """The property above is not vacuous: without relays a wrapped log loses findings."""
    bare = dataclasses.replace(CATALOGUE, relays=())
    log = SAMPLES / "public" / "khoj-1127-cpu-kv-oom-no-draft-2025.log"
    journald = next(r for r in RELAYS if r.id == "journald")
    assert _analyse(_wrap(log.read_bytes(), journald), bare) != _PLAIN[log]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=st.sampled_from(LOGS), stack=st.lists(st.sampled_from(RELAYS), min_size=2, max_size=3))
def test_nested_relays_give_the_same_analysis(log: Path, stack: list[cat.Relay]) -> None:
    """A relay inside another (LocalAI in docker compose in journald) is unwrapped to the same analysis."""
    routers = [r for r in stack if "channel" in r.regex.groupindex]
    assume(len(routers) <= 1 and all(log in _wrappable(r) for r in routers))
    assert _analyse(_wrap(log.read_bytes(), *stack), UNMARKED) == _PLAIN[log]


@given(st.text())
def test_go_escaping_round_trips(text: str) -> None:
    """What a Go/JSON-quoting relay escapes, the relay stage unescapes to the same text."""
    assert unescape(escape(text)) == text


@given(st.text(max_size=200))
def test_any_text_unwraps_without_error(text: str) -> None:
    """The relay stage never fails on arbitrary input, and a line without any relay anchor is returned as is."""
    out = CATALOGUE.relay.unwrap(text)
    assert isinstance(out, str)
    if not any(a in text for r in RELAYS for a in r.anchors):
        assert out is text


def test_classifier_events_carry_the_inner_line() -> None:
    """An event read from a relayed line holds llama.cpp's line, so evidence and fields are the inner ones."""
    c = Classifier(CATALOGUE)
    ev = c.classify(Record("Sep 04 13:22:14 FORGE ollama[1461072]: llama_kv_cache_init: failed to allocate buffer "
                           "for kv cache", 7))
    assert ev is not None and ev.pattern == "llama.kv_alloc_failed"
    assert ev.record.text == "llama_kv_cache_init: failed to allocate buffer for kv cache" and ev.record.lineno == 7


RELAY_GOOD = '''
[[relay]]
id = "r.one"
anchor = "| "
regex = '^x \\| (?P<inner>.*)$'
wrap = "x | {line}"
examples = [{ line = "x | hello", inner = "hello" }]
'''


@pytest.mark.parametrize(("body", "key"), [
    (RELAY_GOOD.replace("(?P<inner>.*)", "(.*)"), "regex"),
    (RELAY_GOOD.replace('wrap = "x | {line}"', 'wrap = "x"'), "wrap"),
    (RELAY_GOOD.replace('examples = [{ line = "x | hello", inner = "hello" }]', "examples = []"), "examples"),
    (RELAY_GOOD.replace('anchor = "| "', 'anchor = "|"'), "anchor"),
    (RELAY_GOOD + 'escape = "rot13"\n', "escape"),
])
def test_bad_relay_names_file_relay_and_key(tmp_path: Path, body: str, key: str) -> None:
    """A broken relay is refused with a message naming the file, the relay id and the key."""
    f = tmp_path / "broken.toml"
    f.write_text(body)
    with pytest.raises(cat.CatalogueError) as err:
        cat.load([f])
    msg = str(err.value)
    assert "broken.toml" in msg and "r.one" in msg and key in msg


def test_a_marked_relay_passes_its_meaning_on() -> None:
    """ollama's 'process has terminated: <cause>' marks the inner line as what killed the process: a draft head's
    missing target context, which the fitting probe prints as normal, is then the real failure."""
    line = ("llama-server process has terminated: llama_init_from_model: failed to initialize the context: "
            "Gemma4Assistant requires ctx_other to be set (this warning is normal during memory fitting)")
    ev = Classifier(CATALOGUE).classify(Record(line, 1))
    assert ev is not None and ev.type == "fit_probe_note" and ev.get("relayed_as") == "exit_cause"
    got = _analyse(line.encode() + b"\n")
    assert [(i["kind"], i["server_state"]) for i in got["incidents"]] == [("draft_context_failed", "exited")]
    assert _analyse(line.encode() + b"\n", UNMARKED)["incidents"] == []
