"""The advice is right wherever the log is read, and one cause gives one alert (issue 15)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLES, SEED, cli
from watcher.catalogue import Catalogue
from watcher.cli import build_parser
from watcher.commands import run as run_cmd
from watcher.environment import Environment
from watcher.hints import for_incident
from watcher.incidents import Incident
from watcher.pipeline import Analyzer
from watcher.state import Run

ENGINE = SAMPLES / "engine"
#: Writes a log file to stderr, as a server writes its log, and exits 0; extra arguments are the server's.
CAT = "import sys; sys.stderr.buffer.write(open(sys.argv[1], 'rb').read())"


def analyse(cat: Catalogue, data: bytes, source: str = "log") -> Analyzer:
    """The analysis of a whole log, read to its end."""
    a = Analyzer(cat, source=source)
    a.feed(data)
    a.finish()
    return a


def engine_logs(pattern: str) -> list[Path]:
    """The b11549 engine samples matching ``pattern`` at both verbosities (never none: a renamed sample fails)."""
    logs = sorted(ENGINE.glob(pattern))
    assert len(logs) == 2, (pattern, logs)
    return logs


def incidents_of(cat: Catalogue, log: Path) -> list[Incident]:
    """The incidents of one sample log."""
    return analyse(cat, log.read_bytes(), log.name).incidents()


def opened(events: Path) -> list[dict[str, Any]]:
    """The incident changes an --events file recorded, the last state of each incident id."""
    last: dict[str, dict[str, Any]] = {}
    for line in events.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("event") == "incident":
            last[rec["id"]] = rec
    return list(last.values())


def advice(rec: dict[str, Any]) -> tuple[str, str, str]:
    """What a reader is told: kind, severity and hint."""
    return rec["kind"], rec["severity"], rec["hint"]


def run_child(tmp_path: Path, log: Path, *server_args: str) -> list[dict[str, Any]]:
    """``specwatch run`` over a child that prints ``log``, with ``server_args`` on its command line."""
    cfg = tmp_path / "config.toml"
    cfg.write_text("[analysis]\nsettle = 0.1\n")
    events = tmp_path / "run-events.jsonl"
    env = Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=io.StringIO(),
                      environ={"SPECWATCH_CONFIG": str(cfg)})
    args = build_parser().parse_args(["--events", str(events), "run", "--no-summary", "--", sys.executable,
                                      "-c", CAT, str(log), *server_args])
    assert run_cmd.run(args, env) == 0
    return opened(events)


@pytest.mark.parametrize("verbosity", ["default", "verbose"])
def test_draft_without_spec_type_gets_the_same_advice_everywhere(tmp_path: Path, verbosity: str) -> None:
    """-md without --spec-type (b11549): scan, pipe mode and run give the same kind, severity and hint."""
    log = ENGINE / f"draft-without-spec-type-{verbosity}.log"
    scanned = json.loads(cli("scan", "--json", str(log)).stdout)["incidents"]
    events = tmp_path / "pipe-events.jsonl"
    cli("--events", str(events), stdin=log.read_bytes())
    piped = opened(events)
    ran = run_child(tmp_path, log, "-m", "target.gguf", "-md", "draft-same.gguf")
    assert [advice(i) for i in scanned] == [advice(i) for i in piped] == [advice(i) for i in ran]
    kind, severity, hint = advice(scanned[0])
    assert (kind, severity) == ("spec_disabled", "critical")
    assert "add --spec-type draft-simple" in hint.lower()


def test_spec_type_without_draft_advises_giving_a_draft(cat: Catalogue) -> None:
    """--spec-type draft-simple without -md: give the draft (-md) or drop the type; nothing to 'reload'."""
    for log in engine_logs("spec-type-without-draft-*.log"):
        [inc] = incidents_of(cat, log)
        assert "-md" in inc.hint and "drop --spec-type" in inc.hint, inc.hint
        assert "Reload" not in inc.hint


@pytest.mark.parametrize("scenario", ["eagle3-with-plain-draft", "dflash-with-plain-draft"])
def test_head_type_with_a_plain_draft_advises_the_right_draft_kind(cat: Catalogue, scenario: str) -> None:
    """An EAGLE-3/DFlash type given an ordinary draft: a head made for the target, or --spec-type draft-simple."""
    for log in engine_logs(f"{scenario}-*.log"):
        [inc] = incidents_of(cat, log)
        assert "--spec-type draft-simple" in inc.hint, inc.hint
        assert "same model family" not in inc.hint


def test_one_slot_draft_kv_failure_is_not_described_per_slot(cat: Catalogue) -> None:
    """A 1-slot server whose draft KV cache failed once (through a chain of allocator lines) is not told of 2
    slots, nor to use --parallel 1."""
    for log in engine_logs("draft-kv-oom-*.log"):
        [inc] = incidents_of(cat, log)
        assert "slots" not in inc.hint and "--parallel" not in inc.hint, inc.hint
        assert inc.extra.get("failed_allocations") == 1


def test_seed_draft_failure_is_described_for_its_four_slots(cat: Catalogue) -> None:
    """The seed's four slots each failed to create a 7168 MiB draft context: the per-slot lever stays."""
    inc = incidents_of(cat, SEED)[0]
    assert "each of the 4 slots" in inc.hint


def _advised_values(hint: str) -> dict[str, int]:
    """The slot counts a hint advises, by the setting that sets them."""
    return {flag: int(v) for flag, v in re.findall(r"(--parallel|Max Concurrent Predictions) (\d+)", hint)}


def test_no_hint_advises_a_value_the_server_already_uses(cat: Catalogue) -> None:
    """Across every sample: no --parallel N equal to the slots the run has, no -ngl advice on the CPU backend."""
    for log in sorted(SAMPLES.rglob("*.log")):
        a = analyse(cat, log.read_bytes(), log.name)
        for inc in a.incidents():
            run = a.stream.runs[inc.run - 1]
            slots = run.n_slots or len(run.slots) or None
            for _, value in _advised_values(inc.hint).items():
                assert value != slots, (log.name, inc.hint)
            if inc.device == "CPU":
                assert "-ngl" not in inc.hint, (log.name, inc.hint)


def test_target_oom_on_the_cpu_is_not_told_to_lower_ngl(cat: Catalogue) -> None:
    """The target's KV cache did not fit in host memory (CPU backend): -ngl would not help."""
    for log in engine_logs("target-kv-oom-*.log"):
        [inc] = incidents_of(cat, log)
        assert inc.kind == "main_model_oom" and inc.device == "CPU"
        assert "-ngl" not in inc.hint and "context" in inc.hint


def test_lm_studio_log_gets_lm_studio_settings(cat: Catalogue) -> None:
    """The seed is LM Studio's log: its advice names LM Studio's settings, not llama-server flags."""
    inc = incidents_of(cat, SEED)[0]
    assert "Max Concurrent Predictions" in inc.hint and "Context Length" in inc.hint, inc.hint
    assert not re.search(r"(^|\s)-(-parallel|ctkd|ctvd|c|cd|ngl)\b", inc.hint), inc.hint


def test_llama_server_log_keeps_llama_server_flags(cat: Catalogue) -> None:
    """The same failure in llama-server's own log is told in its flags."""
    inc = incidents_of(cat, ENGINE / "draft-kv-oom-default.log")[0]
    assert "-ctkd q8_0" in inc.hint and "Max Concurrent" not in inc.hint


def _as_lm_studio(log: Path) -> bytes:
    """A llama.cpp log as LM Studio writes it: each engine line in a record under its [DEBUG] header."""
    return b"".join(b"2026-02-20 03:38:44 [DEBUG]\n " + line for line in log.read_bytes().splitlines(keepends=True))


def test_lm_studio_low_acceptance_names_its_setting(cat: Catalogue) -> None:
    """Low acceptance in LM Studio's log: the draft size is a setting there, not --spec-draft-n-max."""
    log = ENGINE / "draft-low-acceptance-default.log"
    [plain] = analyse(cat, log.read_bytes()).incidents()
    [lms] = analyse(cat, _as_lm_studio(log)).incidents()
    assert plain.kind == lms.kind == "low_acceptance"
    assert "--spec-draft-n-max" in plain.hint
    assert "--spec" not in lms.hint and "Speculative Decoding settings" in lms.hint


def _target_kv_oom(host: str | None, n_ctx: int | None) -> str:
    """The hint for a target that did not fit beside its 4-slot KV cache (4,096 MiB on CUDA0)."""
    run = Run(1, "log", 1, host=host)
    run.n_slots, run.n_ctx_slot = 4, n_ctx
    run.ledger.add("target", "kv", "CUDA0", 4096.0, 10)
    inc = Incident(kind="main_model_oom", severity="critical", source="log", run=1, device="CUDA0", mib=2048.0)
    return for_incident(inc, run)


def test_lm_studio_target_kv_levers_name_its_settings() -> None:
    """A target that did not fit beside a 4-slot KV cache, in LM Studio's log: fewer slots is Max Concurrent
    Predictions and a shorter context its Context Length, never --parallel."""
    hint = _target_kv_oom("lmstudio", 8192)
    assert "--parallel" not in hint, hint
    assert "Max Concurrent Predictions 2 instead of 4" in hint and "Context Length 4,096 instead of 8,192" in hint


def test_target_kv_levers_keep_every_slot_lever_without_a_context_size() -> None:
    """When the log gives no per-slot context, both slot levers stay (2 and 1 instead of 4)."""
    hint = _target_kv_oom(None, None)
    assert "--parallel 2 instead of 4" in hint and "--parallel 1 instead of 4" in hint, hint


@pytest.mark.parametrize(("scenario", "head"), [("eagle3-with-plain-draft", "an EAGLE-3 head"),
                                                ("dflash-with-plain-draft", "a DFlash head")])
def test_head_type_advice_names_the_head_with_its_article(cat: Catalogue, scenario: str, head: str) -> None:
    """The advice for a plain draft given to a head type reads 'needs an EAGLE-3 head' / 'a DFlash head'."""
    [inc] = incidents_of(cat, ENGINE / f"{scenario}-default.log")
    assert f"needs {head} made for this target" in inc.hint, inc.hint


#: llama-server's flags, as a hint would give them: none belongs in advice for another program's log.
_SERVER_FLAGS = re.compile(r"(?:^|[\s(])(?:-md|-ngld|-devd|-ngl|-ctkd|-c|-cd|-m|-lv|--parallel|--spec-type"
                           r"|--spec-draft-n-max|-fitt|--spec-draft-model|--model-draft|--spec-draft-ngl)\b")
PUBLIC = SAMPLES / "public"


@pytest.mark.parametrize("name", [
    "lms-610-gemma4-mtp-spec-batch-500",  # "Engine protocol predict stream returned an error"
    "lmstudio-1519-mlx-spec-not-supported-batched",  # the UI's "Failed to load draft model."
    "lmstudio-2153-mtp-ctx-fail-exit",  # LMSTUDIO_STARTUP_ERROR, after the failure it reports
    "lmstudio-1519-mlx-batched-log-twice-then-load",
    "mlxengine-269-mlx-batched-spec-unsupported",
])
def test_lm_studio_samples_are_told_in_lm_studio_words(cat: Catalogue, name: str) -> None:
    """An LM Studio log known by a line only LM Studio prints (not only its record header) is advised in
    LM Studio's words, with no llama-server flag."""
    a = analyse(cat, (PUBLIC / f"{name}.log").read_bytes(), name)
    incs = a.incidents()
    assert incs and {r.host for r in a.stream.runs} == {"lmstudio"}
    for inc in incs:
        assert inc.hint and not _SERVER_FLAGS.search(inc.hint), inc.hint


def test_an_lm_studio_model_path_in_an_engine_line_makes_the_log_lm_studio_s(cat: Catalogue) -> None:
    """A pasted llama.cpp excerpt without LM Studio's headers, whose draft lives under ~/.lmstudio, is told in
    LM Studio's settings: the path's marker joins the engine line's own event."""
    log = (ENGINE / "draft-kv-oom-default.log").read_bytes()
    pasted = log.replace(b"'/models/wide-kv.gguf'", rb"'C:\Users\me\.lmstudio\models\lmstudio-community\wide-kv.gguf'")
    [inc] = analyse(cat, pasted).incidents()
    assert inc.kind == "draft_context_failed" and inc.draft_model.endswith("wide-kv.gguf")
    assert "Max Concurrent" in inc.hint or "Context Length" in inc.hint, inc.hint
    assert not _SERVER_FLAGS.search(inc.hint), inc.hint


@pytest.mark.parametrize("scenario", ["draft-without-spec-type", "spec-type-without-draft"])
def test_lm_studio_is_not_told_llama_server_s_speculative_flags(cat: Catalogue, scenario: str) -> None:
    """The draft-without-type and type-without-draft findings in LM Studio's log point to its Speculative
    Decoding settings, not to -md or --spec-type."""
    for log in engine_logs(f"{scenario}-*.log"):
        incs = analyse(cat, _as_lm_studio(log)).incidents()
        assert incs, log
        for inc in incs:
            assert "Speculative Decoding settings" in inc.hint and not _SERVER_FLAGS.search(inc.hint), inc.hint


def test_inferred_spec_disabled_in_lm_studio_names_no_flags() -> None:
    """A draft that printed no statistics, in LM Studio's log: check the settings and the chat, not -lv 4."""
    run = Run(1, "log", 1, host="lmstudio")
    inc = Incident(kind="spec_disabled", severity="warning", source="log", run=1, confidence="inferred")
    hint = for_incident(inc, run)
    assert "Speculative Decoding settings" in hint and not _SERVER_FLAGS.search(hint), hint


def test_ollama_log_is_told_ollama_s_settings(cat: Catalogue) -> None:
    """A target OOM in ollama's log (its blob path, its runner's error): num_ctx, OLLAMA_NUM_PARALLEL and num_gpu,
    not -c, --parallel and -ngl."""
    [inc] = incidents_of(cat, PUBLIC / "ollama-pr3418-rocm-2024-compute-oom-no-draft.log")
    assert inc.kind == "main_model_oom"
    assert "num_ctx" in inc.hint and "OLLAMA_NUM_PARALLEL" in inc.hint and "num_gpu" in inc.hint, inc.hint
    assert not _SERVER_FLAGS.search(inc.hint), inc.hint


@pytest.mark.parametrize("name", [
    "ollama-3237-win-cuda-pool-vmm-oom-2024",  # an assertion in ollama's vendored llama.cpp (llm/llama.cpp)
    "ollama-3765-rocm-hipmalloc-oom-cli-2024",
    "ollama-17003-docker-gemma4-mtp-ctx-other-terminated",  # "llama-server process has terminated: ..."
    "ollama-11733-metal-2025-gallocr-no-draft",  # "llama runner process has terminated: ..."
    "ollama-9782-cli-qwen3-gallocr-cuda0-oom",
    "ollama-10553-runner-terminated-cudamalloc-2025",
])
def test_ollama_samples_are_told_in_ollama_s_words(cat: Catalogue, name: str) -> None:
    """Every ollama sample that carries a line only ollama prints is advised without llama-server flags."""
    a = analyse(cat, (PUBLIC / f"{name}.log").read_bytes(), name)
    incs = a.incidents()
    assert incs and {r.host for r in a.stream.runs} == {"ollama"}
    for inc in incs:
        assert inc.hint and not _SERVER_FLAGS.search(inc.hint), inc.hint


def test_koboldcpp_log_is_not_told_llama_server_flags(cat: Catalogue) -> None:
    """koboldcpp's draft of an unknown architecture: update koboldcpp, no --spec-type it does not have."""
    [inc] = incidents_of(cat, PUBLIC / "koboldcpp-2262-gemma4-assistant-draft-load-fail.log")
    assert "koboldcpp" in inc.hint and not _SERVER_FLAGS.search(inc.hint), inc.hint


def test_koboldcpp_levers_are_its_own_flags() -> None:
    """A koboldcpp draft left on the CPU, or drafting poorly: --draftgpulayers and --draftamount."""
    run = Run(1, "log", 1, host="koboldcpp")
    cpu = Incident(kind="draft_on_cpu", severity="warning", source="log", run=1)
    low = Incident(kind="low_acceptance", severity="warning", source="log", run=1)
    assert "--draftgpulayers" in for_incident(cpu, run) and "--draftamount" in for_incident(low, run)


def test_llama_swap_advice_says_where_the_flags_go(cat: Catalogue) -> None:
    """Under llama-swap the flags are right but live in the model's cmd: the advice says so."""
    incs = incidents_of(cat, SAMPLES / "swap" / "llamaswap-debug-draft-oom-exit-then-swap.log")
    memory = [i for i in incs if i.kind == "draft_context_failed"]
    assert memory and all("cmd" in i.hint and "llama-swap" in i.hint for i in memory), [i.hint for i in incs]


#: Every branch of the advice: kind, reason, details, confidence (and a failed allocation's size, or none).
_EVERY_ADVICE = [
    ("spec_disabled", "", {"cause": "no_spec_type"}, "certain"),
    ("spec_disabled", "", {}, "inferred"),
    ("spec_disabled", "", {}, "certain"),
    ("spec_disabled", "", {"follows": "abcdef12"}, "certain"),
    ("spec_init_failed", "", {"cause": "spec_type_without_draft", "impl": "draft-simple"}, "certain"),
    ("spec_init_failed", "", {"cause": "draft_kind_mismatch", "impl": "draft-eagle3"}, "certain"),
    ("draft_context_failed", "", {"cause": "draft_head_alone"}, "certain"),
    ("draft_context_failed", "", {"cause": "no_mtp_layers"}, "certain"),
    ("draft_context_failed", "", {}, "certain"),
    ("draft_on_cpu", "", {"cause": "no_gpu"}, "certain"),
    ("draft_on_cpu", "", {}, "certain"),
    ("draft_load_failed", "out of memory", {}, "certain"),
    ("draft_load_failed", "file not found", {}, "certain"),
    ("draft_load_failed", "index error", {}, "certain"),
    ("draft_load_failed", "unknown model architecture: 'gemma4-assistant'", {}, "certain"),
    ("draft_load_failed", "file is not a valid GGUF", {}, "certain"),
    ("spec_unsupported", "", {}, "certain"),
    ("draft_incompatible", "", {}, "certain"),
    ("low_acceptance", "", {}, "certain"),
    ("main_model_oom", "", {}, "certain"),
    ("spec_runtime_error", "", {}, "certain"),
]


@pytest.mark.parametrize("host", ["lmstudio", "ollama", "koboldcpp"])
def test_no_advice_gives_another_program_s_users_llama_server_flags(host: str) -> None:
    """Every branch of the advice, for a log LM Studio, ollama or koboldcpp wrote, names no llama-server flag."""
    for kind, reason, details, confidence in _EVERY_ADVICE:
        for mib in (None, 7168.0):
            run = Run(1, "log", 1, host=host)
            run.n_slots = 4
            inc = Incident(kind=kind, severity="critical", source="log", run=1, reason=reason, mib=mib,
                           confidence=confidence, device="CUDA0", draft_model="/m/d.gguf")
            inc.extra.update(details)
            hint = for_incident(inc, run)
            assert hint and not _SERVER_FLAGS.search(hint), (kind, reason, details, hint)
            run.draft_head = "Gemma4Assistant"
            if kind == "spec_runtime_error":
                hint = for_incident(inc, run)
                assert not _SERVER_FLAGS.search(hint), hint
