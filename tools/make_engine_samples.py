"""Regenerate samples/engine/: real llama.cpp server logs for every harness scenario.

Usage (from the repo root, with the engine venv):
    python tools/make_engine_samples.py [--only NAME ...] [--out samples/engine]

For each scenario in tests/engine/harness.py and each verbosity ("default" = -lv 3,
"verbose" = -lv 4) it writes:
  <scenario>-<verbosity>.log        the engine's stdout+stderr bytes, unmodified
  <scenario>-<verbosity>.meta.json  what was run and what was measured

Models are generated into a fixed directory under the system temp dir, so the paths
printed in the logs are the same on every regeneration (timestamps and the random
HTTP port still differ run to run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "engine"))

import harness  # noqa: E402 - lives in tests/engine, put on sys.path just above

# Keep committed samples small; a verbose log over this means n_predict must shrink.
MAX_LOG_BYTES = 200_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "samples" / "engine")
    ap.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    args = ap.parse_args(argv)

    names = args.only or list(harness.SCENARIOS)
    unknown = [n for n in names if n not in harness.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios: {unknown}")
    args.out.mkdir(parents=True, exist_ok=True)

    model_dir = Path(tempfile.gettempdir()) / "specwatch-engine-models"
    shutil.rmtree(model_dir, ignore_errors=True)
    models = harness.build_models(model_dir)

    problems = 0
    for name in names:
        scenario = harness.SCENARIOS[name]
        for verbosity in harness.VERBOSITY:
            run = harness.run_scenario(scenario, models, verbosity)
            outcome = harness.measured_outcome(run, scenario)
            stem = f"{name}-{verbosity}"
            log = harness.show_models(run.log.decode("utf-8", "surrogateescape"), model_dir).encode(
                "utf-8", "surrogateescape")
            (args.out / f"{stem}.log").write_bytes(log)
            summary = harness.result_summary(run, scenario)
            meta = {
                "scenario": name,
                "verbosity": verbosity,
                "description": scenario.description,
                "engine": {
                    "package": harness.ENGINE_PACKAGE,
                    "version": harness.ENGINE_VERSION,
                    "llama_cpp_build": harness.LLAMA_CPP_BUILD,
                    "note": "llama.cpp server_context run in-process by xllamacpp.Server in a child "
                    "Python process; the wheel's build_info prints 'b0-unknown', the build number "
                    "comes from the wheel version (YYYY.M.<build>).",
                },
                "command": harness.cli_equivalent(run.params),
                "params": run.params,
                "exit_code": run.exit_code,
                "timed_out": run.timed_out,
                "served_requests": run.served_requests,
                "server_kept_running_without_speculation": summary["server_kept_running_without_speculation"],
                "outcome": outcome,
                "expected_outcome": scenario.expected,
                "slots_speculative": run.slots_speculative,
                "drafted_tokens": run.drafted_tokens,
                "accepted_tokens": run.accepted_tokens,
                "responses": run.responses,
                "duration_s": run.duration_s,
                "log_bytes": len(log),
                "log_sha256": hashlib.sha256(log).hexdigest(),
                "what_the_log_shows": scenario.log_note,
            }
            shown = harness.show_models(json.dumps(meta, indent=2), model_dir)
            (args.out / f"{stem}.meta.json").write_text(shown + "\n")
            flag = ""
            if outcome != scenario.expected:
                flag = f"  <-- expected {scenario.expected}"
                problems += 1
            if len(log) > MAX_LOG_BYTES:
                flag += f"  <-- log is {len(log)} bytes"
                problems += 1
            print(f"{stem:45s} exit={run.exit_code!s:4s} {outcome:22s} {len(log):7d} B{flag}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
