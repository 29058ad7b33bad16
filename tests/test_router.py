"""llama-server's router mode (watcher/swap.py with the relay llama-router-child): one state per child, keyed by
the port the router prefixes each child line with, whatever order the children's lines interleave in."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLES
from watcher import catalogue
from watcher.incidents import Incident
from watcher.pipeline import Analyzer

CAT = catalogue.load()
ENGINE = SAMPLES / "engine"


def engine(name: str, **renames: str) -> list[str]:
    """The lines of one real engine log (llama.cpp b11549), model files renamed so two children differ."""
    text = (ENGINE / f"{name}-default.log").read_text()
    for old, new in renames.items():
        text = text.replace(f"/models/{old}.gguf", f"/models/{new}.gguf")
    return text.splitlines()


#: Child "big": its target's KV cache does not fit (main_model_oom), the child exits 1.
BIG = engine("target-kv-oom", **{"wide-kv": "big-70b"})
#: Child "small": target and draft load, speculation works.
SMALL = engine("spec-working", target="small-8b", **{"draft-same": "small-draft"})


def spawn(name: str, port: int) -> list[str]:
    """The router's lines as server-models.cpp prints them when it starts a child (the args block shortened)."""
    return [
        f"0.00.120.001 I srv          load: spawning server instance with name={name} on port {port}",
        "0.00.120.002 I srv          load: spawning server instance with args:",
        "0.00.120.003 I srv          load:   --port",
        f"0.00.120.004 I srv          load:   {port}",
    ]


def child(port: int, lines: list[str]) -> list[str]:
    """A child's lines as the router relays them: LOG("[%5d] %s", port, line)."""
    return [f"[{port:5d}] {line}" for line in lines]


def analyse(lines: list[str], source: str = "router.log") -> Analyzer:
    a = Analyzer(CAT, source=source)
    a.feed(("\n".join(lines) + "\n").encode())
    a.finish()
    return a


def summary(incs: list[Incident]) -> list[tuple[str, str | None, str | None, str]]:
    return sorted((i.kind, i.model, i.draft_model, i.status) for i in incs)


def by_child(a: Analyzer) -> dict[str | None, list[Incident]]:
    out: dict[str | None, list[Incident]] = {}
    for inc in a.incidents():
        out.setdefault(inc.extra.get("swap_model"), []).append(inc)
    return out


def interleave(a: list[str], b: list[str], pattern: list[bool]) -> list[str]:
    """``a`` and ``b`` merged, each kept in order: ``pattern`` says whose line comes next while both have some."""
    out: list[str] = []
    ia, ib = iter(a), iter(b)
    for take_a in itertools.chain(pattern, itertools.repeat(True)):
        nxt = next(ia, None) if take_a else next(ib, None)
        if nxt is None:
            out.extend(ib if take_a else ia)
            return out
        out.append(nxt)
    raise AssertionError("unreachable")


ALONE_BIG = summary(analyse(BIG).incidents())
ALONE_SMALL = summary(analyse(SMALL).incidents())


def test_children_alone_are_what_the_interleaved_log_must_give() -> None:
    """The two children analysed alone: big's target out of memory on big-70b, small healthy (the reference)."""
    assert ALONE_BIG == [("main_model_oom", "/models/big-70b.gguf", None, "open")]
    assert ALONE_SMALL == []


def test_line_by_line_interleaved_children_keep_their_own_failure() -> None:
    """Two children loading side by side, lines alternating: big's out of memory names big-70b and the preset
    'big', never small's model or draft; small has no incident; the router's exit status is big's."""
    lines = [*spawn("big", 8081), *spawn("small", 8082),
             *interleave(child(8081, BIG), child(8082, SMALL), [True, False] * 40),
             "0.03.100.000 I srv    operator(): instance name=big exited with status 1"]
    incs = by_child(analyse(lines))
    assert summary(incs.pop("big")) == ALONE_BIG
    assert not incs, f"incidents of another child or of none: {incs}"
    big = next(i for i in analyse(lines).incidents())
    assert big.server_state == "exited"


def test_children_get_runs_named_by_preset() -> None:
    """Each child is a run of its own, labelled with the router's name for it, with its own target and draft."""
    lines = [*spawn("big", 8081), *spawn("small", 8082),
             *interleave(child(8081, BIG), child(8082, SMALL), [False, True] * 40)]
    runs = {r.source: r for r in analyse(lines).stream.runs}
    assert set(runs) == {"router.log <big>", "router.log <small>"}
    assert (runs["router.log <small>"].target_model, runs["router.log <small>"].draft_model) == (
        "/models/small-8b.gguf", "/models/small-draft.gguf")
    assert runs["router.log <big>"].draft_model is None


def test_excerpt_without_spawn_lines_is_still_split_by_port() -> None:
    """An excerpt that starts after the spawns (only '[port]' lines): each port is still a child of its own."""
    lines = interleave(child(41907, SMALL), child(35801, BIG), [True, False] * 40)
    a = analyse(lines)
    assert summary(a.incidents()) == ALONE_BIG
    assert len(a.stream.runs) == 2 and a.stream.router_ports == [41907, 35801]


def test_router_clean_stop_is_no_failure() -> None:
    """A child the router stops (exit status 0) after serving adds no incident."""
    lines = [*spawn("small", 8082), *child(8082, SMALL),
             "0.09.000.000 I srv    operator(): instance name=small exited with status 0"]
    assert analyse(lines).incidents() == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=0, max_size=60))
def test_any_interleaving_gives_each_child_its_alone_result(pattern: list[bool]) -> None:
    """Whatever order the children's lines interleave in, each child's incidents are those it has alone."""
    lines = [*spawn("big", 8081), *spawn("small", 8082),
             *interleave(child(8081, BIG), child(8082, SMALL), pattern)]
    incs = by_child(analyse(lines))
    assert summary(incs.pop("big", [])) == ALONE_BIG
    assert summary(incs.pop("small", [])) == ALONE_SMALL
    assert not incs



def test_child_exit_after_many_children_still_ends_its_run() -> None:
    """A child's non-zero exit reaches its run even after 20 other children were spawned since (a busy router)."""
    others = [line for n in range(20) for line in spawn(f"m{n}", 9000 + n)]
    lines = [*spawn("small", 8082), *child(8082, SMALL), *others,
             "0.09.000.000 I srv    operator(): instance name=small exited with status 139"]
    run = next(r for r in analyse(lines).stream.runs if r.source == "router.log <small>")
    assert run.phase == "exited"

