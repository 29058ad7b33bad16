"""How close is specwatch's memory ledger to what the engine really uses? Real llama.cpp runs, measured.

Runs llama.cpp's server (the xllamacpp wheel of tests/engine/, CPU backend) on generated GGUF models with
several ``--parallel`` / context / draft settings, at ``-lv 4`` (where b9151+ prints its buffer lines), and
compares, for each run:

- the ledger's total (every model, KV and compute buffer specwatch read from the log, target and draft),
  plus the server's prompt cache (``cache state: ... MiB``, host memory outside those buffers), with the growth of the server process's resident memory from just before the engine loaded to while it
  served (``VmRSS``: what the CPU backend really holds);
- the ledger's target total with llama.cpp's own ``memory breakdown`` line printed at exit (target only,
  in whole MiB).

With ``--logs DIR`` the logs are kept (model paths shown as /models/), e.g. to pipe them through
``specwatch`` for the docs. Usage: ``python tools/ledger_accuracy.py [--logs DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.engine import harness  # noqa: E402
from watcher import catalogue  # noqa: E402
from watcher.pipeline import Analyzer  # noqa: E402

#: Name, description, draft field, --parallel, -c, requests.
RUNS = [
    ("mid-np1-c4k", "no draft, 1 slot, -c 4096", None, 1, 4096, 2),
    ("mid-np4-c16k", "no draft, 4 slots, -c 16384", None, 4, 16384, 4),
    ("mid-same-np4-c8k", "identical draft, 4 slots, -c 8192", "draft_same", 4, 8192, 4),
    ("mid-tiny-np2-c8k", "tiny random draft, 2 slots, -c 8192", "draft_random", 2, 8192, 2),
    ("mid-same-np8-c32k", "identical draft, 8 slots, -c 32768", "draft_same", 8, 32768, 8),
]
#: Prompts of different lengths (about 40 to 700 tokens): a batch as large as -ub touches the whole compute
#: buffer, as serving real requests does, so the resident memory is what was allocated.
PROMPTS = tuple(" ".join(["the cat sat on the mat and the cat"] * n) for n in (70, 5, 40, 20, 60, 10, 30, 50))
_BREAKDOWN = re.compile(r"memory_breakdown_print: \|\s+- Host\s+\|\s+(\d+) =\s+(\d+) \+\s+(\d+) \+\s+(\d+)")


def models(directory: Path) -> harness.ModelSet:
    """The harness's models, with a target (and an identical draft) big enough to measure: ~55 MiB of weights."""
    base = harness.build_models(directory)
    vocab = harness.spm_vocab()
    size = {"n_embd": 512, "n_layer": 8, "n_head": 8, "n_head_kv": 8, "n_ff": 1536}
    mid = harness.write_llama_gguf(directory / "mid.gguf", vocab, seed=harness.TARGET_SEED, name="mid-target", **size)
    same = harness.write_llama_gguf(directory / "mid-draft-same.gguf", vocab, seed=harness.TARGET_SEED,
                                    name="mid-draft", **size)
    return dataclasses.replace(base, target=mid, draft_same=same)


def main() -> int:
    """Run every configuration; print one table row each and the worst errors."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=Path, help="keep each run's log here")
    args = ap.parse_args()
    cat = catalogue.load()
    harness.PROMPTS = PROMPTS
    worst_rss = worst_own = 0.0
    print("| run | ledger total + prompt cache MiB | RSS growth MiB | error | ledger target MiB | llama.cpp self MiB | error |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="specwatch-ledger-") as tmp:
        ms = models(Path(tmp))
        for name, desc, draft, n_par, n_ctx, n_req in RUNS:
            sc = harness.Scenario(name, desc, draft=draft, spec_types=("draft-simple",) if draft else (),
                                  n_parallel=n_par, n_ctx=n_ctx, n_requests=n_req, expected="works")
            res = harness.run_scenario(sc, ms, "verbose", timeout_s=300)
            log = harness.show_models(res.log.decode("utf-8", "replace"), Path(tmp))
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"{name}.log").write_text(log)
            a = Analyzer(cat, source=name)
            a.feed(log.encode())
            a.finish()
            ledger = a.stream.runs[-1].ledger
            total, target = ledger.total(), ledger.total("target")
            cache = a.loads.mine.records[-1].get("prompt_cache_mib") or 0.0
            rss = res.rss_mib or {}
            grew = (rss.get("serving") or 0.0) - (rss.get("before") or 0.0)
            own = [m for m in _BREAKDOWN.finditer(log)]
            self_mib = float(own[-1].group(1)) if own else None
            e_rss = (total + cache - grew) / grew if grew else float("nan")
            e_own = (target - self_mib) / self_mib if self_mib else float("nan")
            worst_rss = max(worst_rss, abs(e_rss))
            worst_own = max(worst_own, abs(e_own))
            print(f"| {name} ({desc}) | {total:,.1f} + {cache:,.1f} | {grew:,.1f} | {e_rss:+.2%} | {target:,.1f} | "
                  f"{self_mib if self_mib is not None else '-'} | {e_own:+.2%} |")
    print(f"\nworst: {worst_rss:.2%} against RSS growth, {worst_own:.2%} against llama.cpp's own breakdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
