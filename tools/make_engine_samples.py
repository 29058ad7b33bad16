"""Regenerate samples/engine/: real llama.cpp server logs for every harness scenario.

Usage (from the repo root, with the engine venv):
    python tools/make_engine_samples.py [--build BUILD] [--only NAME ...] [--out DIR]

Without --build it runs the live build (the xllamacpp the engine extra installs) into
samples/engine/. With --build bNNNN (one of harness.ENGINES) it installs that build's pinned
xllamacpp wheel into .engines/<version>/ (pip --target, once; not committed) and records into
samples/engine/bNNNN/. Scenarios a build cannot express (a --spec-type it lacks) are skipped.

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
import subprocess
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
    ap.add_argument("--only", nargs="*", default=None, help="scenario names (default: all)")
    ap.add_argument("--build", choices=list(harness.ENGINES), default=harness.LIVE.build,
                    help=f"llama.cpp build to run (default: the live one, {harness.LIVE.build})")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: samples/engine[/BUILD])")
    args = ap.parse_args(argv)
    engine = harness.ENGINES[args.build]
    live = engine == harness.LIVE
    engine_path = None if live else install_engine(engine)
    out = args.out or (REPO / "samples" / "engine" if live else REPO / "samples" / "engine" / engine.build)

    names = args.only or list(harness.SCENARIOS)
    unknown = [n for n in names if n not in harness.SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios: {unknown}")
    out.mkdir(parents=True, exist_ok=True)

    model_dir = Path(tempfile.gettempdir()) / "specwatch-engine-models"
    shutil.rmtree(model_dir, ignore_errors=True)
    models = harness.build_models(model_dir)

    problems = 0
    for name in names:
        scenario = harness.SCENARIOS[name]
        for verbosity in harness.VERBOSITY:
            run = harness.run_scenario(scenario, models, verbosity, engine=engine, engine_path=engine_path)
            outcome = harness.measured_outcome(run, scenario)
            if outcome == "n/a":
                print(f"{name}-{verbosity:38s} skipped: {run.unsupported}")
                continue
            stem = f"{name}-{verbosity}"
            log = harness.show_models(run.log.decode("utf-8", "surrogateescape"), model_dir).encode(
                "utf-8", "surrogateescape")
            (out / f"{stem}.log").write_bytes(log)
            summary = harness.result_summary(run, scenario)
            meta = {
                "scenario": name,
                "verbosity": verbosity,
                "description": scenario.description,
                "engine": {
                    "package": harness.ENGINE_PACKAGE,
                    "version": engine.version,
                    "llama_cpp_build": engine.build,
                    "released": engine.released,
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
            (out / f"{stem}.meta.json").write_text(shown + "\n")
            flag = ""
            # The registry's expectations are the live build's; older builds are recorded as measured.
            if live and outcome != scenario.expected:
                flag = f"  <-- expected {scenario.expected}"
                problems += 1
            if len(log) > MAX_LOG_BYTES:
                flag += f"  <-- log is {len(log)} bytes"
                problems += 1
            print(f"{stem:45s} exit={run.exit_code!s:4s} {outcome:22s} {len(log):7d} B{flag}")
    return 1 if problems else 0


def install_engine(engine: harness.Engine) -> Path:
    """The directory holding ``engine``'s xllamacpp package, installed there once with pip."""
    target = REPO / ".engines" / engine.version
    if not (target / "xllamacpp").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"{harness.ENGINE_PACKAGE}=={engine.version}"], check=True)
    return target


if __name__ == "__main__":
    sys.exit(main())
