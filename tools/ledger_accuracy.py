"""How close is specwatch's memory ledger to what the engine really uses? Real llama.cpp runs, measured.

Runs llama.cpp's server (the xllamacpp wheel of tests/engine/, CPU backend) on generated GGUF models with
several ``--parallel`` / context / draft settings, at ``-lv 4`` (where b9151+ prints its buffer lines), and
compares, for each run:

- the ledger's total (every model, KV and compute buffer specwatch read from the log, target and draft),
  plus the server's prompt cache (``cache state: ... MiB``, host memory outside those buffers), with the
  growth of the server process's resident memory from just before the engine loaded to while it
  served (``VmRSS``: what the CPU backend really holds);
- the ledger's target total with llama.cpp's own ``memory breakdown`` line printed at exit (target only,
  in whole MiB).

With ``--logs DIR`` the logs are kept (model paths shown as /models/), e.g. to pipe them through
``specwatch`` for the docs. Usage: ``python tools/ledger_accuracy.py [--logs DIR]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.engine import harness  # noqa: E402
from watcher import catalogue  # noqa: E402
from watcher.pipeline import Analyzer  # noqa: E402

#: Name, description, draft field, --parallel, -c, requests, address-space cap in MiB (None: the harness's).
RUNS: list[tuple[str, str, str | None, int, int, int, int | None]] = [
    ("mid-np1-c4k", "no draft, 1 slot, -c 4096", None, 1, 4096, 2, None),
    ("mid-np4-c16k", "no draft, 4 slots, -c 16384", None, 4, 16384, 4, None),
    ("mid-same-np4-c8k", "identical draft, 4 slots, -c 8192", "draft_same", 4, 8192, 4, None),
    ("mid-tiny-np2-c8k", "tiny random draft, 2 slots, -c 8192", "draft_random", 2, 8192, 2, None),
    ("mid-same-np8-c32k", "identical draft, 8 slots, -c 32768", "draft_same", 8, 32768, 8, None),
    # The same server as mid-same-np4-c8k with 800 MiB of address space: memory that other processes hold on
    # a real box. Its allocations fail for real (tests use it as the load that memory_overcommit warns of).
    ("mid-same-np4-c8k-no-room", "identical draft, 4 slots, -c 8192, 800 MiB address space", "draft_same", 4,
     8192, 4, 800),
]
#: Acceptance of one (target, draft) pair in two loads: greedy requests, then requests at temperature 1.5
#: (the target strays from the greedy draft). Name, description, temperature.
PAIR_RUNS = [
    ("pair-greedy", "identical draft, 1 slot, 8 requests of 96 tokens, temperature 0", 0.0),
    ("pair-hot", "identical draft, 1 slot, 8 requests of 96 tokens, temperature 1.5", 1.5),
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


def _outcome(res: harness.RunResult, draft: str | None) -> str:
    """As the harness's samples say it: a draft that accepts (almost) nothing is useless speculation."""
    if not res.served_requests:
        return "exits"
    if not draft:
        return "baseline"
    return "degraded" if res.accepted_tokens < 0.3 * res.drafted_tokens else "works"


def main() -> int:
    """Run every configuration; print one table row each and the worst errors."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logs", type=Path, help="keep each run's log here")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these configurations")
    args = ap.parse_args()
    cat = catalogue.load()
    short = harness.PROMPTS
    harness.PROMPTS = PROMPTS  # type: ignore[assignment]  # longer prompts than the harness's pair
    worst_rss = worst_own = 0.0
    print("| run | ledger total + prompt cache MiB | RSS growth MiB | error | ledger target MiB | "
          "llama.cpp self MiB | error |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="specwatch-ledger-") as tmp:
        ms = models(Path(tmp))
        for name, desc, draft, n_par, n_ctx, n_req, cap in RUNS:
            if args.only and name not in args.only:
                continue
            sc = harness.Scenario(name, desc, draft=draft, spec_types=("draft-simple",) if draft else (),
                                  n_parallel=n_par, n_ctx=n_ctx, n_requests=n_req, expected="works")
            os.environ.pop("SPECWATCH_HARNESS_ADDRESS_SPACE", None)
            if cap:
                os.environ["SPECWATCH_HARNESS_ADDRESS_SPACE"] = str(cap << 20)
            res = harness.run_scenario(sc, ms, "verbose", timeout_s=300)
            log = harness.show_models(res.log.decode("utf-8", "replace"), Path(tmp))
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"{name}.log").write_text(log)
                engine = {"package": harness.ENGINE_PACKAGE, "version": harness.ENGINE_VERSION,
                          "llama_cpp_build": harness.LLAMA_CPP_BUILD}
                meta: dict[str, Any] = {"scenario": name, "description": desc, "engine": engine,
                        "command": harness.show_models(harness.cli_equivalent(res.params), Path(tmp)),
                        "address_space_mib": cap, "exit_code": res.exit_code, "served_requests": res.served_requests,
                        "outcome": _outcome(res, draft),
                        "drafted_tokens": res.drafted_tokens, "accepted_tokens": res.accepted_tokens,
                        "rss_mib": res.rss_mib}
                (args.logs / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            if not res.served_requests:
                print(f"| {name} ({desc}) | did not load (exit {res.exit_code}) | | | | | |")
                continue
            a = Analyzer(cat, source=name)
            a.feed(log.encode())
            a.finish()
            ledger = a.stream.runs[-1].ledger
            total, target = ledger.total(), ledger.total("target")
            cache = a.loads.mine.records[-1].get("prompt_cache_mib") or 0.0
            rss = res.rss_mib or {}
            grew = (rss.get("serving") or 0.0) - (rss.get("before") or 0.0)
            own = list(_BREAKDOWN.finditer(log))
            self_mib = float(own[-1].group(1)) if own else None
            e_rss = (total + cache - grew) / grew if grew else float("nan")
            e_own = (target - self_mib) / self_mib if self_mib else float("nan")
            worst_rss = max(worst_rss, abs(e_rss))
            worst_own = max(worst_own, abs(e_own))
            print(f"| {name} ({desc}) | {total:,.1f} + {cache:,.1f} | {grew:,.1f} | {e_rss:+.2%} | {target:,.1f} | "
                  f"{self_mib if self_mib is not None else '-'} | {e_own:+.2%} |")
        harness.PROMPTS = short  # acceptance needs generated tokens, not long prompts
        for name, desc, temp in PAIR_RUNS:
            if args.only and name not in args.only:
                continue
            os.environ.pop("SPECWATCH_HARNESS_ADDRESS_SPACE", None)
            sc = harness.Scenario(name, desc, draft="draft_same", spec_types=("draft-simple",), n_ctx=2048,
                                  n_predict=96, n_requests=8, temperature=temp, expected="works")
            res = harness.run_scenario(sc, ms, "verbose", timeout_s=300)
            print(f"| {name} ({desc}) | acceptance {res.accepted_tokens}/{res.drafted_tokens} | | | | | |")
            if args.logs:
                (args.logs / f"{name}.log").write_text(harness.show_models(res.log.decode("utf-8", "replace"),
                                                                            Path(tmp)))
                meta = {"scenario": name, "description": desc, "temperature": temp,
                        "command": harness.show_models(harness.cli_equivalent(res.params), Path(tmp)),
                        "exit_code": res.exit_code, "served_requests": res.served_requests,
                        "outcome": _outcome(res, "draft_same"), "drafted_tokens": res.drafted_tokens,
                        "accepted_tokens": res.accepted_tokens}
                (args.logs / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"\nworst: {worst_rss:.2%} against RSS growth, {worst_own:.2%} against llama.cpp's own breakdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
