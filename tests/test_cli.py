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
        flat = " ".join(out.split())  # the banner wraps its fields
        assert "Max Concurrent Predictions 1 needs 7,168 MiB" in flat and "3,584 MiB" in flat
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


def _pattern_file(path, pid: str, words: str):  # type: ignore[no-untyped-def]
    """A one-pattern file recognising ``srv    load_model: <words>`` as a draft failure."""
    path.write_text(f'[[pattern]]\nid = "{pid}"\nevent = "draft_load_failed"\nanchor = "{words}"\n'
                    f'regex = "{words}"\nexamples = ["srv    load_model: {words}"]\n')
    return path


class TestOptionsBeforeCommand:
    def test_config_before_scan_is_read(self, tmp_path) -> None:
        """--config before 'scan' is read: a broken config exits 2 naming it, as it does after 'scan'."""
        bad = tmp_path / "bad.toml"
        bad.write_text("[analysis]\nlow_acceptance = 'high'\n")
        r = cli("--config", str(bad), "scan", str(SEED))
        assert r.status == 2 and "bad.toml:2" in r.stderr

    def test_events_before_scan_writes_events(self, tmp_path) -> None:
        """--events before 'scan' writes the JSON lines."""
        ev = tmp_path / "events.jsonl"
        cli("--events", str(ev), "scan", str(SEED))
        assert any(json.loads(x)["event"] == "incident" for x in ev.read_text().splitlines())

    def test_patterns_before_the_patterns_action_are_loaded(self, tmp_path) -> None:
        """'patterns --patterns FILE list' loads FILE: a broken one is a usage error."""
        bad = tmp_path / "bad.toml"
        bad.write_text("[[pattern]]\nid = 1\n")
        assert cli("patterns", "--patterns", str(bad), "list").status == 2

    def test_json_before_the_patterns_action(self) -> None:
        """'patterns --json test FILE' prints JSON."""
        doc = json.loads(cli("patterns", "--json", "test", str(SEED)).out)
        assert doc["matched"]

    def test_repeatable_options_before_and_after_add_up(self, tmp_path) -> None:
        """--patterns given before and after the command both count."""
        a = _pattern_file(tmp_path / "a.toml", "mine.a", "alpha went wrong")
        b = _pattern_file(tmp_path / "b.toml", "mine.b", "beta went wrong")
        r = cli("--patterns", str(a), "patterns", "--patterns", str(b), "list", "--json")
        ids = {p["id"] for p in json.loads(r.out)["patterns"]}
        assert {"mine.a", "mine.b"} <= ids

    def test_state_dir_before_status_is_used(self, tmp_path) -> None:
        """--state-dir before 'status' still picks the store (it always did; the new parsing keeps it)."""
        r = cli("--state-dir", str(tmp_path / "st"), "status")
        assert r.status == 0 and (tmp_path / "st" / "specwatch.db").exists()

    def test_option_the_command_does_not_take_is_a_usage_error(self) -> None:
        """An option before a command that has no such option is rejected by name, not ignored."""
        r = cli("--exit-status", "scan", str(SEED))
        assert r.status == 2 and r.stderr == "specwatch: --exit-status is not an option of 'scan'\n"
        r = cli("--config", "c.toml", "status")
        assert r.status == 2 and "--config is not an option of 'status'" in r.stderr


class TestUsageErrors:
    def test_top_level_error_has_one_prefix(self) -> None:
        """A top-level usage error is prefixed 'specwatch: ' once."""
        r = cli("--json", "patterns")
        assert r.status == 2 and r.stderr == "specwatch: unrecognized arguments: --json\n"

    def test_command_error_names_the_command_once(self) -> None:
        """A sub-command's usage error is 'specwatch: scan: ...'."""
        r = cli("scan")
        assert r.status == 2
        assert r.stderr == "specwatch: scan: the following arguments are required: FILE\n"


class TestColour:
    def test_report_to_a_file_is_plain_when_stderr_is_a_terminal(self) -> None:
        """scan's report on stdout is coloured by stdout being a terminal, not stderr."""
        r = cli("scan", str(SEED), environ={"NO_COLOR": "", "TERM": "xterm"}, stderr_tty=True)
        assert "\x1b[" not in r.out

    def test_report_to_a_terminal_is_coloured(self) -> None:
        """With stdout a terminal the report is coloured; NO_COLOR still wins."""
        assert "\x1b[" in cli("scan", str(SEED), environ={"NO_COLOR": "", "TERM": "xterm"}, stdout_tty=True).out
        assert "\x1b[" not in cli("scan", str(SEED), environ={"NO_COLOR": "1"}, stdout_tty=True).out
        assert "\x1b[" not in cli("scan", str(SEED), environ={"NO_COLOR": "", "TERM": "dumb"}, stdout_tty=True).out


class TestPatternsConfig:
    def test_list_and_test_load_the_config_files_extra_patterns(self, tmp_path) -> None:
        """patterns list/test load [patterns] extra from --config or $SPECWATCH_CONFIG, like the watcher."""
        mine = _pattern_file(tmp_path / "mine.toml", "mine.gamma", "gamma went wrong")
        conf = tmp_path / "config.toml"
        conf.write_text(f"[patterns]\nextra = [{json.dumps(str(mine))}]\n")
        log = tmp_path / "x.log"
        log.write_text("srv    load_model: gamma went wrong\n")
        listed = json.loads(cli("patterns", "list", "--json", "--config", str(conf)).out)
        assert "mine.gamma" in {p["id"] for p in listed["patterns"]}
        tested = json.loads(cli("patterns", "test", "--json", str(log), environ={"SPECWATCH_CONFIG": str(conf)}).out)
        assert [(m["line"], m["patterns"]) for m in tested["matched"]] == [(1, ["mine.gamma"])]

    def test_a_broken_config_is_a_usage_error(self, tmp_path) -> None:
        """patterns reports a broken config file as the analysing commands do (exit 2)."""
        bad = tmp_path / "bad.toml"
        bad.write_text("[patterns]\nextra = 'x'\n")
        r = cli("patterns", "--config", str(bad))
        assert r.status == 2 and "bad.toml:2" in r.stderr
