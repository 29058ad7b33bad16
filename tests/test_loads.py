"""Load records: what each server run is remembered by, built from real logs and kept in the real store."""

from __future__ import annotations

import io
import json
import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import SAMPLES, cli
from watcher import catalogue as cat_mod
from watcher import db, paths
from watcher.environment import Environment
from watcher.loads import History, LoadBook, Settings, footprint, parse_capacity, percentile, record_of
from watcher.notify import worker
from watcher.notify.sink import StoreSink
from watcher.pipeline import Analyzer

ENGINE = SAMPLES / "engine"
SWAP = SAMPLES / "swap"


def analyse(cat: cat_mod.Catalogue, *paths_: Path, settings: Settings | None = None,
            history: History | None = None, text: str | None = None) -> tuple[Analyzer, dict[str, dict[str, Any]]]:
    """Every record the analyser hands over for these logs (or ``text``; one source), newest version per load."""
    recs: dict[str, dict[str, Any]] = {}
    a = Analyzer(cat, source="log", on_load=lambda r: recs.__setitem__(r["key"], r), host="box",
                 history=(lambda: history), ledger=settings)
    for p in paths_:
        a.feed(p.read_bytes())
    if text is not None:
        a.feed(text.encode())
    a.finish()
    return a, recs


def buffer_sum(path: Path) -> float:
    """MiB of every model/KV/compute/output buffer line in a log, summed independently of the patterns."""
    import re

    total = 0.0
    for line in path.read_text().splitlines():
        m = re.search(r"(?:model|KV|RS|compute|output) buffer size =\s*([\d.]+) MiB", line)
        if m:
            total += float(m.group(1))
    return total


def test_record_of_a_parallel_speculative_run(cat: cat_mod.Catalogue) -> None:
    """A served run with a draft records both models, slots, device memory, tasks, acceptance and speed."""
    log = ENGINE / "spec-parallel-4-verbose.log"
    _, recs = analyse(cat, log)
    (rec,) = recs.values()
    assert rec["target"]["file"] == "target.gguf" and rec["draft"]["file"] == "draft-same.gguf"
    assert rec["target"]["arch"] == "llama" and rec["target"]["file_mib"] == 0.24
    assert rec["n_slots"] == 4 and rec["n_ctx_slot"] == 512
    assert rec["devices"]["CPU"]["total_mib"] == 24105.0
    assert rec["ended"] == "stopped" and rec["speculation"] == "on"
    assert rec["tasks"] == 4 and sorted(rec["task_tokens"]) == [25, 25, 31, 31]
    assert (rec["drafted"], rec["accepted"]) == (44, 44) and rec["mean_len"] == 3.75
    assert rec["gen_tps"] is not None and rec["gen_tps"] > 0
    total = sum(r["weights_mib"] + r["kv_mib"] + r["compute_mib"] for r in rec["memory"])
    assert total == pytest.approx(buffer_sum(log), abs=0.02)
    roles = {r["role"] for r in rec["memory"]}
    assert roles == {"target", "draft"}


def test_failed_load_is_recorded_as_failed(cat: cat_mod.Catalogue) -> None:
    """A draft whose KV cache did not fit ends 'failed' and keeps the failed allocation."""
    _, recs = analyse(cat, ENGINE / "draft-kv-oom-verbose.log")
    (rec,) = recs.values()
    assert rec["ended"] == "failed"
    assert rec["failures"] and rec["failures"][0]["role"] == "draft"


def test_llama_swap_records_name_each_model(cat: cat_mod.Catalogue) -> None:
    """Under llama-swap each upstream's load is recorded under llama-swap's model id."""
    _, recs = analyse(cat, SWAP / "llamaswap-debug-draft-oom-exit-then-swap.log")
    by = {r["swap_model"]: r for r in recs.values()}
    assert set(by) == {"qwen3-spec-wide", "qwen3-spec"}
    assert by["qwen3-spec-wide"]["ended"] == "failed"
    assert by["qwen3-spec"]["ended"] == "stopped" and by["qwen3-spec"]["task_tokens"] == [31, 25]


def test_footprint_splits_roles_and_kinds(cat: cat_mod.Catalogue) -> None:
    """Weights, KV and compute (with the output buffer) per device and role, as the buffer lines say."""
    a, _ = analyse(cat, ENGINE / "spec-working-verbose.log")
    rows = {(r["device"], r["role"]): r for r in footprint(a.stream.runs[0])}
    assert rows[("CPU", "target")] == {"device": "CPU", "role": "target", "weights_mib": 0.24, "kv_mib": 0.06,
                                        "rs_mib": 0.0, "compute_mib": 1.64}


def test_percentile_is_a_real_task_size() -> None:
    """p99 is nearest-rank: a size some task really had."""
    assert percentile([], 99) is None
    sizes = list(range(1, 101))
    assert percentile(sizes, 99) == 99
    assert percentile([5, 2532, 7], 99) == 2532


def rec(key: str, model: str = "m", **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"key": key, "host": "box", "source": "s", "model": model, "build": 1,
                            "target": {"file": "t.gguf"}, "draft": None, "ended": "serving", "memory": []}
    base.update(kw)
    return base


def test_book_upserts_and_prunes_by_age_and_count(tmp_path: Path) -> None:
    """One row per load key; old rows go by age, then the oldest beyond the count."""
    book = LoadBook.open(tmp_path / "db.sqlite")
    book.put(rec("a", ended="loading"), now=100.0)
    book.put(rec("a", ended="serving"), now=200.0)
    assert [(r["key"], r["ended"], r["started_at"], r["updated_at"]) for r in book.records()] == \
        [("a", "serving", 100.0, 200.0)]
    for i, key in enumerate("bcd"):
        book.put(rec(key), now=1000.0 + i)
    assert book.prune(now=1000.0 + 86400 * 2, keep_days=2, keep_loads=0) == 1  # "a" is older than 2 days
    assert book.prune(now=1003.0, keep_days=0, keep_loads=2) == 1
    assert [r["key"] for r in book.records()] == ["c", "d"]


def test_book_is_a_migrated_component(tmp_path: Path) -> None:
    """The loads table has its own schema version beside the incident store's."""
    path = tmp_path / "db.sqlite"
    LoadBook.open(path).close()
    conn = db.connect(path)
    assert conn.execute("SELECT version FROM schema_versions WHERE component = 'loads'").fetchone() == (1,)


def test_pipe_mode_remembers_every_load() -> None:
    """Piping a llama-swap log records one load per upstream run in the shared store."""
    res = cli(stdin=(SWAP / "llamaswap-debug-draft-oom-exit-then-swap.log").read_bytes())
    assert res.status == 0
    book = LoadBook.open(paths.db_path(os.environ))
    assert sorted(r["model"] for r in book.records()) == ["qwen3-spec", "qwen3-spec-wide"]


def env_for(tmp_path: Path) -> Environment:
    return Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=io.StringIO(), environ={})


def test_a_locked_store_never_holds_up_the_analysis(tmp_path: Path) -> None:
    """While another process holds the database, load records queue (one per load, the newest snapshot); they
    are written once it lets go."""
    path = tmp_path / "db.sqlite"
    sink = StoreSink(path, [], worker.Settings(), env_for(tmp_path))
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the recorder's write now waits; the caller must not
    sink.load(rec("x", ended="loading"))  # returns at once: waiting would deadlock with this thread's lock
    sink.load(rec("y"))
    sink.load(rec("x", ended="serving"))  # a newer snapshot of x, while the older one still waits
    written = other.execute("SELECT name FROM sqlite_master WHERE name = 'loads'").fetchall()
    assert not written or other.execute("SELECT count(*) FROM loads").fetchone() == (0,)
    other.execute("COMMIT")
    other.close()
    sink.close()
    got = {r["key"]: r["ended"] for r in LoadBook.open(path).records()}
    assert got == {"x": "serving", "y": "serving"}  # two loads kept apart, each at its newest


def test_history_is_read_back_for_the_tracker(tmp_path: Path) -> None:
    """A new sink reads the earlier loads, so baselines and footprints survive a restart."""
    path = tmp_path / "db.sqlite"
    book = LoadBook.open(path)
    book.put(rec("old", model="embed"), now=time.time())
    book.close()
    sink = StoreSink(path, [], worker.Settings(), env_for(tmp_path))
    sink.close()
    hist = sink.history()
    assert hist is not None and [r["key"] for r in hist.records] == ["old"]


def test_bad_capacity_in_config_is_a_usage_error(tmp_path: Path) -> None:
    """A capacity that is not DEVICE=MiB exits 2 naming the file, the line and the key."""
    conf = tmp_path / "c.toml"
    conf.write_text('[ledger]\ncapacity = ["ROCm0 is big"]\n')
    res = cli("--config", str(conf), "scan", str(ENGINE / "spec-working-default.log"))
    assert res.status == 2
    assert f"{conf}:2: key ledger.capacity: 'ROCm0 is big' is not DEVICE=MiB" in res.stderr


def test_record_of_carries_the_swap_name(cat: cat_mod.Catalogue) -> None:
    """record_of names a llama-swap model by its id and a plain one by target+draft file."""
    a, recs = analyse(cat, ENGINE / "spec-working-default.log")
    (r,) = recs.values()
    assert r["model"] == "target.gguf+draft-same.gguf" and r["swap_model"] is None
    assert record_of(a.stream.runs[0], a.loads._extra[id(a.stream.runs[0])], "h")["host"] == "h"


LEDGER = SAMPLES / "ledger"
OVERCOMMIT = SWAP / "llamaswap-debug-three-models-overcommit.log"


def test_overcommit_warns_before_the_failing_load(cat: cat_mod.Catalogue) -> None:
    """chat's second start, beside resident coder, is flagged on llama-swap's start line, before it fails."""
    a, _ = analyse(cat, OVERCOMMIT, settings=Settings(capacity={"CPU": 1536.0}))
    kinds = {i.kind: i for i in a.incidents()}
    inc = kinds["memory_overcommit"]
    assert inc.first_line == 1302 and "Executing start command" in inc.evidence[0].text
    assert inc.first_line < kinds["draft_context_failed"].first_line
    assert inc.model == "chat" and inc.device == "CPU"
    assert [r["model"] for r in inc.extra["resident"]] == ["coder"]
    assert inc.extra["needed_mib"] == pytest.approx(393.9, abs=0.1)
    assert inc.extra["total_mib"] == pytest.approx(393.9 + 1165.9, abs=0.2)


def test_no_overcommit_where_the_models_fit(cat: cat_mod.Catalogue) -> None:
    """With the memory the logs report (24,105 MiB) nothing is flagged, and summarise beside coder fits 1.5 GiB."""
    a, _ = analyse(cat, OVERCOMMIT)
    assert "memory_overcommit" not in {i.kind for i in a.incidents()}
    a, _ = analyse(cat, OVERCOMMIT, settings=Settings(capacity={"CPU": 1536.0}))
    assert [i.model for i in a.incidents() if i.kind == "memory_overcommit"] == ["chat"]


def test_overcommit_from_loads_recorded_earlier(tmp_path: Path) -> None:
    """A footprint measured by an earlier specwatch process warns a later one (pipe mode, config capacity)."""
    conf = tmp_path / "c.toml"
    conf.write_text('[ledger]\ncapacity = ["CPU=1536"]\n')
    log = OVERCOMMIT.read_text().splitlines(keepends=True)
    first, rest = "".join(log[:422]), "".join(log[422:])  # chat's first load; then coder, summarise, chat again
    assert cli("--config", str(conf), stdin=first.encode()).status == 0
    res = cli("--config", str(conf), "--exit-status", stdin=rest.encode())
    assert "Memory overcommit on CPU: chat needs 394 MiB" in res.stderr


def test_budget_agrees_with_the_overcommit_warning() -> None:
    """budget says chat and coder do not fit in 1,536 MiB (exit 1), and fit in the reported 24,105 MiB."""
    cli(stdin=OVERCOMMIT.read_bytes())
    res = cli("budget", "chat", "coder", "--capacity", "CPU=1536")
    assert res.status == 1, res.stderr
    assert "CPU: chat 394 MiB + coder 1,166 MiB = 1,560 MiB of 1,536 MiB: does NOT fit, headroom -24 MiB" in res.out
    assert "make room: coder: context per slot 4,096 -> 2,048" in res.out
    assert cli("budget", "chat", "coder").status == 0


def test_budget_unknown_model_exits_2() -> None:
    """A model no load record names is a usage error listing the known ones."""
    cli(stdin=OVERCOMMIT.read_bytes())
    res = cli("budget", "chat", "nope")
    assert res.status == 2 and "'nope'" in res.stderr and "coder" in res.stderr


def test_acceptance_regression_between_two_loads_of_one_pair() -> None:
    """The same target and draft accepting 100%, then ~75% over a full window, raises acceptance_regressed."""
    assert cli(stdin=(LEDGER / "pair-greedy.log").read_bytes()).status == 0
    res = cli(stdin=(LEDGER / "pair-hot.log").read_bytes())
    assert "Draft acceptance regressed: mid.gguf with draft mid-draft-same.gguf accepts" in res.stderr
    assert "down from 100.0% on b0" in res.stderr


def test_no_regression_without_a_baseline_or_when_acceptance_holds() -> None:
    """The first load of a pair has nothing to regress from; the same acceptance again raises nothing."""
    res = cli(stdin=(LEDGER / "pair-hot.log").read_bytes())
    assert "regressed" not in res.stderr
    res = cli(stdin=(LEDGER / "pair-hot.log").read_bytes())
    assert "regressed" not in res.stderr


def fill(*logs: Path) -> None:
    for log in logs:
        assert cli(stdin=log.read_bytes()).status in (0, 1)


def test_models_json_carries_the_measured_footprint() -> None:
    """models --json: per model and device, weights/KV/compute per role, slots, context, task sizes, advice."""
    fill(OVERCOMMIT)
    rows = {r["model"]: r for r in json.loads(cli("models", "--json").out)}
    coder = rows["coder"]
    assert coder["device"] == "CPU" and coder["draft"] == "mid-draft-same.gguf" and coder["host"]
    assert coder["memory"]["target"] == {"weights_mib": 52.91, "kv_mib": 512.0, "rs_mib": 0.0, "compute_mib": 18.02}
    assert coder["memory"]["draft"]["kv_mib"] == 512.0
    assert (coder["parallel"], coder["n_ctx"]) == (8, 4096)
    assert coder["kv_per_slot_mib"] == 128.0 and coder["kv_per_1k_mib"] == 31.25  # 1,024 MiB / 32,768 cells
    # eight tasks, the longest prompt 1,050 tokens + 16 generated: nearest-rank p99 of 8 is the largest
    assert (coder["tasks"], coder["task_tokens_max"], coder["task_tokens_p99"]) == (8, 1066, 1066)
    changes = {a["kind"]: a["frees_mib"] for a in coder["advice"]}
    # p99 1,066 tokens fits 2,048 per slot: the halved context is that same change, listed once
    assert changes == {"p99_context": 512.0, "parallel": 512.0}
    assert "summarise" in rows and rows["summarise"]["draft"] is None
    # chat's last load failed: its footprint is the load before, which served
    assert rows["chat"]["memory"]["draft"]["kv_mib"] == 128.0 and rows["chat"]["loads"] == 2


def test_models_text_names_what_frees_memory() -> None:
    """The table shows each role's split and the computed changes with the memory they free."""
    fill(OVERCOMMIT)
    out = cli("models").out
    assert "    target mid.gguf: weights 53 MiB, KV 512 MiB, compute 18 MiB" in out
    assert "--parallel 8 -> 4 (-c 32,768 -> 16,384, 4,096 per slot) frees 512 MiB" in out


def test_draft_scorecard_compares_two_drafts_of_one_target() -> None:
    """drafts --json: the identical draft (100%) and the random one (0%) side by side; on 2 CPU cores both make
    generation slower than the target alone, so neither is marked the best value for its memory."""
    fill(LEDGER / "mid-same-np4-c8k.log", LEDGER / "mid-tiny-np2-c8k.log", LEDGER / "mid-np1-c4k.log")
    rows = {r["draft"]: r for r in json.loads(cli("drafts", "--json").out)}
    same, tiny = rows["mid-draft-same.gguf"], rows["draft-random.gguf"]
    assert same["target"] == tiny["target"] == "mid.gguf"
    assert (same["acceptance"], tiny["acceptance"]) == (1.0, 0.0)
    assert tiny["drafted"] == 78 and tiny["accepted"] == 0
    assert same["speedup"] < 1 and tiny["speedup"] < 1
    assert not same["best_value"] and not tiny["best_value"]
    assert same["near_target_size"] and not tiny["near_target_size"]  # identical weights: as big as the target
    assert same["draft_mib"] == pytest.approx(52.91 + 128.0, abs=0.01)
    assert same["tps_without"] is not None  # the target's load without a draft
    text = cli("drafts").out
    assert "<- nearly the target's size" in text and "best value" not in text


@given(st.dictionaries(st.from_regex(r"[A-Za-z][\w.-]{0,12}", fullmatch=True),
                       st.integers(min_value=1, max_value=1 << 22), min_size=1, max_size=4),
       st.booleans())
def test_capacity_round_trips(caps: dict[str, int], gib: bool) -> None:
    """Every DEVICE=MiB (or GiB) item parses to the MiB it says."""
    items = [f"{d}={v}GiB" if gib else f"{d} = {v}" for d, v in caps.items()]
    assert parse_capacity(items) == {d: float(v * 1024 if gib else v) for d, v in caps.items()}


@given(st.one_of(st.text(max_size=20).filter(lambda s: "=" not in s),
                 st.sampled_from(["=100", "CUDA0=", "CUDA0=big", "CUDA0=-5", "CUDA0=5TiB", "CUDA 0=5"])))
def test_capacity_rejects_what_is_not_device_equals_size(item: str) -> None:
    """Anything without DEVICE=size is a ValueError that quotes the item."""
    with pytest.raises(ValueError, match="is not DEVICE=MiB"):
        parse_capacity([item])


@given(st.lists(st.integers(min_value=0, max_value=1 << 20), min_size=1, max_size=300))
def test_p99_is_a_task_at_least_99_percent_fit_in(sizes: list[int]) -> None:
    """The p99 is one of the sizes, and at least 99% of the tasks are no larger."""
    p = percentile(sizes, 99)
    assert p in sizes
    assert sum(1 for s in sizes if s <= p) >= 0.99 * len(sizes)


def test_plain_server_start_is_checked_against_its_last_footprint(tmp_path: Path) -> None:
    """Without llama-swap, a server starting a model that needed more than the device last time is flagged."""
    conf = tmp_path / "c.toml"
    conf.write_text('[ledger]\ncapacity = ["CPU=300"]\n')
    log = (LEDGER / "mid-np4-c16k.log").read_bytes()  # 327 MiB measured
    assert "overcommit" not in cli("--config", str(conf), stdin=log).stderr  # nothing measured before it
    res = cli("--config", str(conf), stdin=log)
    assert "Memory overcommit on CPU: mid.gguf needs 327 MiB (last measured) beside nothing else resident" in res.stderr


def test_overcommit_uses_this_hosts_memory_not_another_boxs(cat: cat_mod.Catalogue) -> None:
    """A bigger box's CPU total recorded in the store does not hide this box's 1,536 MiB from the warning."""
    text = OVERCOMMIT.read_text().replace("24105 MiB", "1536 MiB")  # this box reports 1.5 GiB
    lines = text.splitlines(keepends=True)
    first = SAMPLES / "ledger" / "mid-same-np4-c8k.log"
    _, earlier = analyse(cat, first)
    (chat,) = earlier.values()
    chat = dict(chat, model="chat", swap_model="chat")
    chat["devices"] = {"CPU": {"total_mib": 1536.0, "free_mib": None}}
    other = rec("o", host="big-box", devices={"CPU": {"total_mib": 196608.0, "free_mib": None}})
    a = Analyzer(cat, source="llama-swap", on_load=lambda r: None, host="box",
                 history=lambda: History([other, chat]))
    a.feed("".join(lines[422:]).encode())
    a.finish()
    assert [i.model for i in a.incidents() if i.kind == "memory_overcommit"] == ["chat"]


def _health_after_listening(text: str, model: str) -> str:
    """An upstream's log with llama-swap's info-level health line after the server starts listening."""
    lines = text.splitlines(keepends=True)
    i = next(n for n, line in enumerate(lines) if "listening on" in line)
    port = lines[i].rsplit(":", 1)[1].strip()
    health = f"[INFO] <{model}> Health check passed on http://127.0.0.1:{port}/health\n"
    return "".join([*lines[: i + 1], health, *lines[i + 1:]])


def test_a_server_that_shut_down_is_not_resident(cat: cat_mod.Catalogue) -> None:
    """At llama-swap's info level (no stop line) a model whose server cleaned up and exited holds no memory."""
    chat = (LEDGER / "mid-same-np4-c8k.log").read_text()
    _, earlier = analyse(cat, LEDGER / "mid-same-np4-c8k.log")
    # summarise: another target (renamed so the two models are told apart), stopped before chat starts.
    summarise = (LEDGER / "mid-np4-c16k.log").read_text().replace("/models/mid.gguf", "/models/summ.gguf")
    log = _health_after_listening(summarise, "summarise") + _health_after_listening(chat, "chat")
    a, recs = analyse(cat, settings=Settings(capacity={"CPU": 600.0}), history=History(list(earlier.values())),
                      text=log)
    assert [i.kind for i in a.incidents() if i.kind == "memory_overcommit"] == []
    by = {r["swap_model"]: r for r in recs.values()}
    assert by["summarise"]["ended"] == "stopped" and by["chat"]["ended"] == "stopped"
    # The same log without the shutdown lines: summarise may still hold its 327 MiB, and 327 + 394 > 600.
    kept = "".join(line for line in log.splitlines(keepends=True) if "cleaning up before exit" not in line)
    a, _ = analyse(cat, settings=Settings(capacity={"CPU": 600.0}), history=History(list(earlier.values())),
                   text=kept)
    assert [i.model for i in a.incidents() if i.kind == "memory_overcommit"] == ["mid.gguf+mid-draft-same.gguf"]


HYBRID = Path(__file__).parent / "fixtures" / "hybrid" / "hilbertraum-318-qwen-hybrid-vulkan-np4.log"


def test_recurrent_state_is_kept_apart_from_kv(cat: cat_mod.Catalogue) -> None:
    """A hybrid model's RS buffer (HilbertRaum#318) is its own column: KV holds only the attention cache."""
    _, recs = analyse(cat, HYBRID)
    (rec,) = recs.values()
    rows = {(r["device"], r["role"]): r for r in rec["memory"]}
    target, draft = rows[("Vulkan0", "target")], rows[("Vulkan0", "draft")]
    assert (target["kv_mib"], target["rs_mib"]) == (512.0, 1795.5)
    assert (draft["kv_mib"], draft["rs_mib"]) == (32.0, 0.0)
    # The recurrent size line's 4 cells are sequences: they never replace the KV cache's cells.
    assert rec["kv_cells"].get("target") != 4
    total = sum(r["weights_mib"] + r["kv_mib"] + r["rs_mib"] + r["compute_mib"] for r in rec["memory"])
    # Every model/KV/RS/compute line is counted once (the catalogue has no pattern for output buffers yet).
    assert total == pytest.approx(buffer_sum(HYBRID) - 2 * 3.79, abs=0.02)


def test_hybrid_advice_frees_kv_with_context_and_rs_with_slots(cat: cat_mod.Catalogue) -> None:
    """HilbertRaum#318's hybrid (4 slots sharing -c 8,192): -c frees only KV, --parallel only each slot's RS."""
    from watcher import fleet

    _, recs = analyse(cat, HYBRID)
    # The excerpt stops before the server's ready line, so the record says 'loading'; it served a task.
    rec = dict(next(iter(recs.values())), ended="stopped", started_at=0.0, updated_at=0.0)
    (row,) = [r for r in fleet.model_rows([rec]) if r["device"] == "Vulkan0"]
    assert row["memory"]["target"]["rs_mib"] == 1795.5 and row["memory"]["target"]["kv_mib"] == 512.0
    # KV per 1k tokens is the attention cache over the 8,192 shared cells: (512 + 32) / 8.192, no RS in it.
    assert row["kv_unified"] is True and row["kv_per_1k_mib"] == pytest.approx(544 / 8.192, abs=0.001)
    assert row["kv_per_slot_mib"] is None and row["rs_per_slot_mib"] == pytest.approx(1795.5 / 4, abs=0.001)
    advice = {a["kind"]: a for a in row["advice"]}
    assert advice["context"]["change"] == "context per slot 8,192 -> 4,096 (-c 8,192 -> 4,096)"
    assert advice["context"]["frees_mib"] == 272.0  # half of 512 + 32, not half of 2,339.5
    assert advice["parallel"]["change"] == "--parallel 4 -> 2 (-c 8,192 unchanged, shared by the slots)"
    assert advice["parallel"]["frees_mib"] == pytest.approx(1795.5 / 2, abs=0.05)


def test_fewer_private_slots_free_their_kv_and_their_rs() -> None:
    """Without kv_unified each slot owns its KV and its RS: halving --parallel frees half of both."""
    from watcher import fleet

    rec = {"key": "h", "host": "box", "model": "granite-h", "ended": "stopped", "n_slots": 4, "n_ctx_slot": 8192,
           "kv_unified": False, "target": {"file": "granite-4.0-h-small.gguf"}, "draft": None, "task_tokens": [],
           "started_at": 0.0, "updated_at": 0.0, "devices": {},
           "memory": [{"device": "CUDA0", "role": "target", "weights_mib": 18000.0, "kv_mib": 2048.0,
                       "rs_mib": 600.0, "compute_mib": 300.0}]}
    (row,) = fleet.model_rows([rec])
    advice = {a["kind"]: a for a in row["advice"]}
    assert advice["parallel"]["frees_mib"] == 1324.0  # (2,048 KV + 600 RS) / 2
    assert advice["context"]["frees_mib"] == 1024.0  # KV only: the RS does not grow with -c
    assert row["kv_per_1k_mib"] == pytest.approx(2048 / 32.768, abs=0.001)
    (fit,) = fleet.budget([rec], ["granite-h"], {"CUDA0": 20000.0})
    assert fit.changes[0]["kind"] == "parallel" and fit.changes[0]["frees_mib"] == 1324.0


def test_models_and_budget_show_rs_apart(cat: cat_mod.Catalogue) -> None:
    """`models` prints the hybrid's RS beside its KV and per slot; `budget` makes room with fewer slots' RS."""
    _, recs = analyse(cat, HYBRID)
    # The excerpt stops before the server's ready line; the load served a task, so it is stored as stopped.
    rec = dict(next(iter(recs.values())), ended="stopped")
    book = LoadBook.open(paths.db_path(os.environ))
    book.put(rec, time.time())
    book.conn.commit()
    book.close()
    out = cli("models").out
    assert "    draft  qwen3.8-27b-ud-q4km.gguf: weights 0.00 MiB, KV 32 MiB, compute 1,040 MiB" in out
    assert "    target ?: weights 14.7 GiB, KV 512 MiB, RS 1,796 MiB, compute 569 MiB" in out
    assert "    4 slots sharing 8,192 tokens: RS 449 MiB per slot, KV 66 MiB per 1k tokens" in out
    assert "    --parallel 4 -> 2 (-c 8,192 unchanged, shared by the slots) frees 898 MiB" in out
    row = next(r for r in json.loads(cli("models", "--json").out) if r["device"] == "Vulkan0")
    assert row["memory"]["target"]["rs_mib"] == 1795.5 and row["memory"]["draft"]["rs_mib"] == 0.0
    # 15,009 + 512 + 1,795.5 + 568.53 + 32 + 1,040.12 = 18,957 MiB on the card; 300 MiB short on 18,657.
    res = cli("budget", model := rec["model"], "--capacity", "Vulkan0=18657", "--capacity", "CPU=65536",
              "--capacity", "Vulkan_Host=65536")
    assert res.status == 1, res.out
    assert f"  make room: {model}: --parallel 4 -> 2 (-c 8,192 unchanged, shared by the slots) frees 898 MiB" \
        in res.out


def test_task_sizes_are_tallied_not_classified(cat: cat_mod.Catalogue) -> None:
    """The ledger gets every finished task's size from the framer's tally, as many as the log has release lines,
    and none of those lines reaches the classifier."""
    log = ENGINE / "spec-parallel-4-verbose.log"
    sizes = [int(m) for m in re.findall(r"stop processing: n_tokens = (\d+)", log.read_text())]
    seen: list[str] = []
    recs: dict[str, dict[str, Any]] = {}
    a = Analyzer(cat, source="log", on_load=lambda r: recs.__setitem__(r["key"], r), host="box",
                 on_event=lambda ev: seen.append(ev.pattern))
    a.feed(log.read_bytes())
    a.finish()
    assert sizes and "srv.slot_release" not in seen
    assert a.counters.by_pattern["srv.slot_release"] == len(sizes)
    (rec,) = recs.values()
    assert sorted(rec["task_tokens"]) == sorted(sizes)
