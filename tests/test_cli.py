"""The command line: scan's report and JSON shape, exit statuses, version, patterns, config errors."""

from __future__ import annotations

import json

from tests.conftest import SAMPLES, SEED, cli

WORKING = SAMPLES / "engine" / "spec-working-verbose.log"
NO_DRAFT = SAMPLES / "engine" / "no-draft-default.log"


class TestScan:
    def test_seed_report_names_draft_device_size_slots_and_fix(self) -> None:
        """The seed's report says what failed, where, why, and what to change, with the numbers."""
        r = cli("scan", str(SEED))
        assert r.status == 1
        out = r.out
        assert "Qwen3-30B-A3B-Instruct-2507-Q3_K_L.gguf" in out
        assert "7168 MiB requested on CUDA1" in out
        assert "slots       0-3" in out
        assert "--parallel 1 needs 7,168 MiB" in out and "3,584 MiB" in out
        assert "reloaded without its draft" in out

    def test_seed_json_has_one_incident_for_the_failure(self) -> None:
        """Four failing slots make one draft_context_failed incident, plus the reload's spec_disabled."""
        doc = json.loads(cli("scan", "--json", str(SEED)).out)
        kinds = [i["kind"] for i in doc["incidents"]]
        assert kinds == ["draft_context_failed", "spec_disabled"]
        inc = doc["incidents"][0]
        for key in ("kind", "severity", "title", "slots", "device", "mib", "model", "draft_model", "hint",
                    "evidence", "source"):
            assert key in inc
        assert inc["slots"] == [0, 1, 2, 3] and inc["device"] == "CUDA1" and inc["mib"] == 7168.0
        assert inc["severity"] == "critical"
        assert all(isinstance(e["line"], int) and e["text"] for e in inc["evidence"])
        assert doc["runs"][1]["slots"][0]["n_ctx"] == 131072

    def test_working_speculation_is_healthy_and_exits_0(self) -> None:
        """A log with working speculation raises nothing and reports the acceptance."""
        r = cli("scan", str(WORKING))
        assert r.status == 0
        assert "speculation on" in r.out and "acceptance 100.0%" in r.out

    def test_no_draft_is_not_an_alarm(self) -> None:
        """A server without a draft is not a failure."""
        r = cli("scan", "--json", str(NO_DRAFT))
        assert r.status == 0
        assert json.loads(r.out)["incidents"] == []

    def test_missing_file_is_a_usage_error(self, tmp_path) -> None:
        """An unreadable input exits 2 with the file named."""
        r = cli("scan", str(tmp_path / "nope.log"))
        assert r.status == 2 and "nope.log" in r.stderr

    def test_each_file_is_its_own_source(self) -> None:
        """Two files scanned together keep separate runs and incidents."""
        doc = json.loads(cli("scan", "--json", str(SEED), str(WORKING)).out)
        sources = {r["source"] for r in doc["runs"]}
        assert sources == {str(SEED), str(WORKING)}

    def test_events_file_gets_json_lines(self, tmp_path) -> None:
        """--events writes every recognised event and incident as one JSON object per line."""
        ev = tmp_path / "events.jsonl"
        cli("scan", "--events", str(ev), str(SEED))
        lines = [json.loads(x) for x in ev.read_text().splitlines()]
        assert any(x["event"] == "event" and x["type"] == "alloc_failed" for x in lines)
        assert any(x["event"] == "incident" and x["kind"] == "draft_context_failed" for x in lines)


class TestCommands:
    def test_version(self) -> None:
        """--version prints the version and exits 0."""
        r = cli("--version")
        assert r.status == 0

    def test_tty_without_command_is_usage(self) -> None:
        """Run at a terminal with no input and no command, specwatch explains itself and exits 2."""
        r = cli(tty=True)
        assert r.status == 2 and "pipe" in r.stderr

    def test_unknown_option_is_usage(self) -> None:
        """Bad flags exit 2 with argparse's message."""
        r = cli("scan", "--frobnicate", str(SEED))
        assert r.status == 2 and "frobnicate" in r.stderr

    def test_patterns_list(self) -> None:
        """patterns lists every pattern with its event."""
        r = cli("patterns", "--json")
        doc = json.loads(r.out)
        ids = {p["id"] for p in doc["patterns"]}
        assert {"cuda.malloc_failed", "srv.failed_draft_ctx", "srv.draft_acceptance"} <= ids

    def test_patterns_test_shows_unmatched_relevant_lines(self, tmp_path) -> None:
        """patterns test separates recognised lines from relevant-looking unknown ones."""
        log = tmp_path / "new.log"
        log.write_text("srv    load_model: failed to create draft context\n"
                       "srv    load_model: the draft fell over in a brand new way\n"
                       "slot update_slots: id 0 | task 1 | kv cache rm\n")
        doc = json.loads(cli("patterns", "test", "--json", str(log)).out)
        assert [m["line"] for m in doc["matched"]] == [1]
        assert [u["line"] for u in doc["unmatched_relevant"]] == [2]

    def test_bad_pattern_names_file_and_pattern(self, tmp_path) -> None:
        """A broken extra pattern file is a usage error that names the pattern and key."""
        bad = tmp_path / "mine.toml"
        bad.write_text('[[pattern]]\nid = "x.y"\nevent = "alloc_failed"\nanchor = "draft"\nregex = "(unclosed"\n'
                       'examples = ["draft"]\n')
        r = cli("scan", "--patterns", str(bad), str(SEED))
        assert r.status == 2
        assert "mine.toml" in r.stderr and "'x.y'" in r.stderr and "regex" in r.stderr
