"""Tests of the engine harness itself: tiny models load, and the real llama.cpp server
(b11549 via xllamacpp) behaves as the scenario registry says.

Engine tests are marked ``engine``; they skip when xllamacpp is not installed
(``pip install -r tests/engine/requirements.txt``). The whole file runs in well under
a minute on 2 cores: every scenario is a sub-second child process.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
gguf = pytest.importorskip("gguf")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - tests/engine is not a package; path set just above

HAVE_ENGINE = importlib.util.find_spec("xllamacpp") is not None
needs_engine = pytest.mark.skipif(not HAVE_ENGINE, reason="xllamacpp not installed")


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> harness.ModelSet:
    return harness.build_models(tmp_path_factory.mktemp("models"))


def _vocab(path: Path) -> tuple[str, list[str]]:
    reader = gguf.GGUFReader(str(path))
    model = reader.fields["tokenizer.ggml.model"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    return model, tokens


def test_models_are_small_valid_gguf(models: harness.ModelSet) -> None:
    """The generated models are small, valid llama GGUF files."""
    for path in (models.target, models.draft_same, models.draft_random, models.draft_bpe, models.wide_kv):
        assert path.stat().st_size < 5_000_000, path
        assert gguf.GGUFReader(str(path)).fields["general.architecture"].contents() == "llama"
    assert not models.draft_missing.exists()
    assert models.draft_corrupt.stat().st_size < models.target.stat().st_size


def test_draft_vocabularies(models: harness.ModelSet) -> None:
    """The same-vocabulary draft matches the target's tokenizer; the BPE draft does not."""
    tgt_model, tgt_tokens = _vocab(models.target)
    same_model, same_tokens = _vocab(models.draft_same)
    bpe_model, bpe_tokens = _vocab(models.draft_bpe)
    assert (tgt_model, same_model, bpe_model) == ("llama", "llama", "gpt2")
    assert same_tokens == tgt_tokens
    # Same size, different type: the vocab *type* is the only incompatibility.
    assert len(bpe_tokens) == len(tgt_tokens)


def test_scenario_registry_is_complete() -> None:
    """Every outcome the samples rely on (works, degraded, exits, baseline) has a scenario."""
    outcomes = {s.expected for s in harness.SCENARIOS.values()}
    assert {"works", "degraded", "exits", "baseline"} <= outcomes
    for s in harness.SCENARIOS.values():
        assert s.description and s.log_note, s.name
    assert harness.cli_equivalent(harness.SCENARIOS["spec-working"].params(_FakeModels(), 3)).startswith(
        "llama-server -m target.gguf"
    )


class _FakeModels:
    def __getattr__(self, name: str) -> str:
        return "target.gguf" if name == "target" else f"{name}.gguf"


# --- engine -------------------------------------------------------------------------


@pytest.mark.engine
@needs_engine
def test_models_load_and_serve(models: harness.ModelSet) -> None:
    """llama.cpp's own server loads the tiny target and answers requests."""
    run = harness.run_scenario(harness.SCENARIOS["no-draft"], models)
    assert run.exit_code == 0, run.log.decode(errors="replace")
    assert run.served_requests
    assert b"srv    load_model: loading model '" in run.log
    assert b"model loaded" in run.log
    assert b"draft acceptance" not in run.log


@pytest.mark.engine
@needs_engine
@pytest.mark.parametrize("verbosity", list(harness.VERBOSITY))
def test_working_speculation_logs_acceptance(models: harness.ModelSet, verbosity: str) -> None:
    """A compatible draft is used: accepted draft tokens are reported."""
    run = harness.run_scenario(harness.SCENARIOS["spec-working"], models, verbosity)
    assert run.exit_code == 0 and run.served_requests
    assert run.accepted_tokens > 0 and run.slots_speculative == [True]
    log = run.log.decode()
    acceptance = [ln for ln in log.splitlines() if "draft acceptance = " in ln]
    assert len(acceptance) == len(run.responses)  # one per task
    assert "slot print_timing: id  0 | task " in acceptance[0]
    # The per-implementation statistics line is TRC: only at -lv 4.
    assert ("spec common_specu: statistics     draft-simple:" in log) == (verbosity == "verbose")


@pytest.mark.engine
@needs_engine
def test_missing_draft_exits_in_the_documented_way(models: harness.ModelSet) -> None:
    """A missing draft file makes this build exit 1 before serving."""
    run = harness.run_scenario(harness.SCENARIOS["draft-missing"], models)
    assert run.exit_code == 1
    assert not run.server_started and not run.served_requests
    log = run.log.decode()
    path = str(models.draft_missing)
    assert f"E gguf_init_from_file: failed to open GGUF file '{path}' (No such file or directory)" in log
    assert f"E common_speculative_init_result: failed to load draft model, '{path}'" in log
    assert f"E srv    load_model: failed to load draft model, '{path}'" in log
    # The last line is the exit notice (xllamacpp's init() prints it, llama-server's
    # main prints the same text as 'srv  llama_server: ').
    assert log.rstrip().splitlines()[-1].endswith("E srv          init: exiting due to model loading error")


@pytest.mark.engine
@needs_engine
def test_draft_without_spec_type_is_silent_at_default_verbosity(models: harness.ModelSet) -> None:
    """A draft without --spec-type serves without speculation, and says so only at verbose level."""
    scenario = harness.SCENARIOS["draft-without-spec-type"]
    quiet = harness.run_scenario(scenario, models, "default")
    loud = harness.run_scenario(scenario, models, "verbose")
    for run in (quiet, loud):
        assert run.served_requests and run.kept_running_without_speculation(spec_requested=True)
        assert b"loading draft model" in run.log
    assert b"no implementations specified for speculative decoding" not in quiet.log
    assert b"spec common_specu: no implementations specified for speculative decoding" in loud.log
    assert b" E " not in quiet.log and b" W " not in quiet.log.replace(b"W srv          init: security:", b"")


@pytest.mark.engine
@needs_engine
@pytest.mark.parametrize("verbosity", list(harness.VERBOSITY))
@pytest.mark.parametrize("name", list(harness.SCENARIOS))
def test_scenario_outcome_matches_registry(models: harness.ModelSet, name: str, verbosity: str) -> None:
    """Each scenario ends as the registry says (works, degraded, exits)."""
    scenario = harness.SCENARIOS[name]
    run = harness.run_scenario(scenario, models, verbosity)
    tail = run.log.decode(errors="replace")[-3000:]
    assert harness.measured_outcome(run, scenario) == scenario.expected, tail
    assert len(run.log) < 200_000
    assert not run.timed_out


# --- the build matrix (no engine needed) -----------------------------------------------


class _Obj:
    """A stand-in for a build's CommonParams: attributes only where the build has them."""

    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


class _Enum:
    COMMON_SPECULATIVE_TYPE_DRAFT = "old-draft"
    COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE = "draft-simple"


class _Xlc:
    common_speculative_type = _Enum


def test_draft_path_lands_where_each_build_keeps_it() -> None:
    """The draft model path goes to speculative.model (2025), mparams_dft (early 2026) or draft.mparams."""
    builds = {
        "2025": _Obj(speculative=_Obj(model=_Obj(path=""))),
        "early-2026": _Obj(speculative=_Obj(mparams_dft=_Obj(path=""))),
        "now": _Obj(speculative=_Obj(draft=_Obj(mparams=_Obj(path="")))),
    }
    for params in builds.values():
        harness._set_param(params, "speculative.draft.mparams.path", "d.gguf", _Xlc)
    assert builds["2025"].speculative.model.path == "d.gguf"
    assert builds["early-2026"].speculative.mparams_dft.path == "d.gguf"
    assert builds["now"].speculative.draft.mparams.path == "d.gguf"


def test_spec_types_map_to_each_builds_enum_or_are_unsupported() -> None:
    """--spec-type maps to the list (b9464+), the single older enum, or is refused where it cannot exist."""
    new = _Obj(speculative=_Obj(types=[]))
    harness._set_param(new, "speculative.types", ["draft-simple"], _Xlc)
    assert new.speculative.types == ["draft-simple"]
    old = _Obj(speculative=_Obj(type=None))
    harness._set_param(old, "speculative.types", ["draft-simple"], _Xlc)
    assert old.speculative.type == "old-draft"
    with pytest.raises(harness.Unsupported):
        harness._set_param(old, "speculative.types", ["ngram-mod"], _Xlc)
    with pytest.raises(harness.Unsupported):
        harness._set_param(_Obj(speculative=_Obj(types=[])), "speculative.types", ["draft-dflash"], _Xlc)


SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "engine"


@pytest.mark.parametrize("build", [b for b in harness.ENGINES if harness.ENGINES[b] != harness.LIVE])
def test_every_older_build_is_recorded(build: str) -> None:
    """Each pinned older build has recorded runs of the core scenarios, made by that build."""
    import json

    metas = [json.loads(p.read_text()) for p in sorted((SAMPLES / build).glob("*.meta.json"))]
    assert {m["engine"]["llama_cpp_build"] for m in metas} == {build}
    assert {m["engine"]["version"] for m in metas} == {harness.ENGINES[build].version}
    recorded = {(m["scenario"], m["verbosity"]) for m in metas}
    core = {"spec-working", "no-draft", "draft-missing", "draft-kv-oom", "draft-low-acceptance"}
    assert {(s, v) for s in core for v in harness.VERBOSITY} <= recorded
    for m in metas:
        assert (SAMPLES / build / f"{m['scenario']}-{m['verbosity']}.log").stat().st_size == m["log_bytes"]
