"""``patterns audit``: log calls are extracted from C/C++ sources, instantiated and checked against the catalogue."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from watcher import audit
from watcher import catalogue as cat
from watcher.cli import run
from watcher.environment import Environment

FIXTURE = Path(__file__).parent / "fixtures" / "llama-src"


def _env() -> tuple[Environment, io.BytesIO, io.StringIO]:
    out, err = io.BytesIO(), io.StringIO()
    return Environment(stdin=io.BytesIO(), stdout=out, stderr=err, environ={}), out, err


def test_extract_expands_server_prefixes_and_func() -> None:
    """SRV_/SLT_/SPC_ prefixes are expanded with the 12-column function name, as llama.cpp prints them."""
    msgs = {m.line: m for m in audit.extract((FIXTURE / "tools/server/server-context.cpp").read_text(), "s.cpp")}
    assert msgs[12].example == "srv    load_model: failed to load draft model, '/models/model.gguf'"
    assert msgs[20].example.startswith("slot print_timing: id  0 | task -1 | draft acceptance = 0.50000 (")
    assert msgs[15].fmt == "speculative decoding not supported by this context"  # "%s" with a literal argument


def test_extract_skips_comments_raw_strings_and_stdout() -> None:
    """Calls inside comments or raw strings, and fprintf to stdout, are not log messages."""
    texts = [m.example for p in FIXTURE.rglob("*.c*") for m in audit.extract(p.read_text(), p.name)]
    assert not any("commented out" in t or "inside a raw string" in t or "not stderr" in t for t in texts)
    assert "ggml_vulkan: Memory allocation of size 1610612736 failed." in texts  # std::cerr chain
    assert "ggml_vk_create_buffer: unrelated message about colours" in texts  # fprintf(stderr, ...)


def test_func_names_follow_cpp_rules() -> None:
    """``__func__`` is the function, the constructor's class name, or ``operator()`` inside a lambda."""
    by_line = {m.line: m for m in audit.extract((FIXTURE / "common/speculative.cpp").read_text())}
    assert by_line[8].function == "common_speculative_impl_draft"
    assert by_line[24].example.startswith("common_speculative_init_result: loading draft model")
    assert by_line[26].example.startswith("operator(): failed to measure the memory of the extra model")
    assert by_line[27].example == "spec   operator(): failed to decode draft batch, ret = 4"
    ctx = {m.line: m for m in audit.extract((FIXTURE / "src/llama-context.cpp").read_text())}
    assert ctx[3].function == "llama_context"


def test_audit_reports_recognised_missed_and_absent() -> None:
    """The fixture's one new wording is reported missed; the rest is recognised; unseen patterns are listed."""
    report = audit.audit(FIXTURE, cat.load())
    assert report.files == 4
    missed = [m.example for m in report.missed]
    assert missed == ["common_speculative_init_result: totally new draft failure wording 3"]
    recognised = {pid for _, pid in report.recognised}
    assert {"srv.failed_load_draft", "srv.draft_acceptance", "spec.statistics", "vulkan.alloc_failed",
            "fit.extra_unmeasured", "llama.ctx_init_failed", "spec.vocab_type_mismatch"} <= recognised
    assert 0.9 < report.coverage() < 1.0
    absent = {p.id for p in report.absent}
    assert "srv.failed_draft_ctx" in absent and "lms.startup_error" not in absent
    assert "lms.startup_error" in {p.id for p in report.foreign}


def test_cli_text_and_json(tmp_path: Path) -> None:
    """``specwatch patterns audit SRC`` prints the coverage; ``--json`` gives the same figures as data."""
    env, out, _ = _env()
    assert run(["patterns", "audit", str(FIXTURE)], env) == 0
    text = out.getvalue().decode()
    assert "coverage: 12/13 = 92.3%" in text and "totally new draft failure wording" in text
    env, out, _ = _env()
    assert run(["patterns", "audit", str(FIXTURE), "--json"], env) == 0
    doc = json.loads(out.getvalue())
    assert doc["relevant"] == 13 and len(doc["missed"]) == 1
    assert doc["missed"][0]["file"] == "common/speculative.cpp"


def test_cli_fail_under_and_bad_source(tmp_path: Path) -> None:
    """``--fail-under`` turns low coverage into exit 1; a directory without sources is a usage error (2)."""
    env, _, _ = _env()
    assert run(["patterns", "audit", str(FIXTURE), "--fail-under", "99"], env) == 1
    env, _, err = _env()
    assert run(["patterns", "audit", str(tmp_path)], env) == 2
    assert "no llama.cpp sources" in err.getvalue()


def test_vendored_layout_is_found(tmp_path: Path) -> None:
    """An unpacked source package with vendor/llama.cpp (llama-cpp-python's sdist) is audited the same way."""
    vendored = tmp_path / "pkg-1.0" / "vendor" / "llama.cpp"
    vendored.parent.mkdir(parents=True)
    vendored.symlink_to(FIXTURE, target_is_directory=True)
    assert audit.audit(tmp_path / "pkg-1.0", cat.load()).files == 4


@given(st.integers(0, 9999), st.integers(-5, 5), st.sampled_from(["%d", "%5d", "%2zu", "%-4d", "%u"]))
def test_instantiate_matches_printf(n: int, task: int, conv: str) -> None:
    """Instantiation fills numeric conversions like printf with the argument's own literal value."""
    line = audit.instantiate(f"accepted {conv}/{conv} draft tokens, task %d", [str(n), str(n), str(task)])
    py = conv.replace("z", "")
    assert line == f"accepted {py % n}/{py % n} draft tokens, task {task}"
