"""The human report: the banner names what failed, where, and, behind llama-swap, which of its models."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.conftest import ROOT
from watcher import catalogue, probe, report
from watcher.pipeline import Analyzer

SWAP = ROOT / "samples" / "swap" / "llamaswap-debug-draft-oom-exit-then-swap.log"


def _incidents(log: Path):  # type: ignore[no-untyped-def]
    a = Analyzer(catalogue.load(), source=log.name)
    a.feed(log.read_bytes())
    a.finish()
    return a.incidents()


def test_banner_names_the_llama_swap_model() -> None:
    """An incident of a model started by llama-swap shows that model's id from llama-swap's config."""
    incs = [i for i in _incidents(SWAP) if i.extra.get("swap_model")]
    assert incs, "the swap sample attributes its failure to a llama-swap model"
    text = report.banner(incs[0], colour=False)
    assert f"llama-swap  {incs[0].extra['swap_model']}" in text


def test_banner_of_a_plain_server_has_no_llama_swap_line() -> None:
    """A single llama-server log says nothing about llama-swap."""
    seed = next((ROOT / "samples" / "seed").glob("*.log"))
    text = report.banner(_incidents(seed)[0], colour=False)
    assert "llama-swap" not in text
    assert "SPECWATCH" in text


def test_banner_of_a_probe_finding_names_the_url_not_lines() -> None:
    """An incident from the HTTP probe has no log lines: the banner's source is the probed URL alone."""
    v = probe.Verdict(status="off", reason="slots without a speculator: 0", configured=True, plain_slots=[0])
    text = report.banner(probe.incident("http://127.0.0.1:8080", v), colour=False)
    assert "  source      probe http://127.0.0.1:8080\n" in text
    assert "lines 0-0" not in text


def test_evidence_lines_are_wrapped_not_cut() -> None:
    """The end of a long evidence line (where 'cudaMalloc failed: out of memory' is) shows; at most 3 rows each."""
    seed = next((ROOT / "samples" / "seed").glob("*.log"))
    text = report.banner(_incidents(seed)[0], colour=False)
    assert "cudaMalloc failed: out of memory" in " ".join(text.split())
    rows = text.splitlines()
    start = rows.index("  evidence:")
    numbered = [i for i, r in enumerate(rows) if i > start and r[4:11].strip().isdigit()]
    assert all(b - a <= 3 for a, b in itertools.pairwise(numbered))
