"""Secrets in the path of a generic webhook (``json://host/hook/TOKEN``) never reach any output: labels, retry
lines, ``notify list``, ``notify test`` and what the outbox stores."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT, SEED
from tests.notify.conftest import Receiver, make_env
from watcher import cli
from watcher.notify.redact import MASK, Redactor, privacy_url
from watcher.notify.targets import parse

WEBHOOKS = ["json", "jsons", "xml", "xmls", "form", "forms", "alertmanager", "alertmanagers"]
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
#: What a token looks like: 8 or more letters, digits, '-' and '_', with at least one digit and one letter.
tokens = st.text(_ALNUM + "-_", min_size=8, max_size=48).filter(
    lambda s: any(c.isdigit() for c in s) and any(c.isalpha() for c in s))
words = st.sampled_from(["hook", "hooks", "webhook", "api", "v1", "notify", "alerts"])


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(WEBHOOKS), port=st.integers(1024, 65535),
       path=st.lists(st.one_of(words, tokens), min_size=1, max_size=5),
       header=st.one_of(st.none(), tokens), user=st.booleans())
def test_no_token_of_a_webhook_url_survives_redaction(scheme: str, port: int, path: list[str],
                                                      header: str | None, user: bool) -> None:
    """Every token-like path segment or header value is masked in the label and wherever the URL is quoted."""
    url = f"{scheme}://{'bob@' if user else ''}hooks.example.com:{port}/{'/'.join(path)}"
    if header is not None:
        url += f"?+X-Token={header}"
    secrets = [seg for seg in path if seg not in {"hook", "hooks", "webhook", "api", "v1", "notify", "alerts"}]
    secrets += [header] if header is not None else []
    label = parse(url).label
    quoted = Redactor([url])(f"notification to {url} failed: POST /{'/'.join(path)} -> 404")
    for secret in secrets:
        assert secret not in label, (url, label)
        assert secret not in quoted, (url, quoted)
    assert label.startswith(f"{scheme}://") and f":{port}/" in label
    # The plain words of the path stay, so two hooks on one host can still be told apart.
    for seg in path:
        if seg not in secrets:
            assert f"/{seg}" in label


def test_a_webhook_url_keeps_its_words_and_masks_its_token() -> None:
    """json://host/hook/TOKEN is shown as json://host/hook/****."""
    assert privacy_url("json://127.0.0.1:8080/hook/s3cr3tT0ken42") == f"json://127.0.0.1:8080/hook/{MASK}"


def test_every_output_masks_a_webhook_token(tmp_path: Path) -> None:
    """Retry lines on stderr, notify list, notify test and the outbox's stored label never show the token."""
    token = "Zq81kTokenInThePath7x"
    down = f"json://127.0.0.1:9/hook/{token}"  # port 9 (discard) is closed on loopback: every delivery fails
    receiver = Receiver()
    up = f"xml://127.0.0.1:{receiver.port}/api/{token}"
    state = tmp_path / "state"
    env = {"PYTHONPATH": str(ROOT), "NO_COLOR": "1", "SPECWATCH_STATE_DIR": str(state), "PATH": "/usr/bin:/bin"}
    try:
        pipe = subprocess.run([sys.executable, "-m", "watcher", "--notify", down, "--notify", up],
                              input=SEED.read_bytes(), capture_output=True, env=env, timeout=120, check=False)
        assert "failed (attempt 1, will retry)" in pipe.stderr.decode()
        menv, out, err = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": f"{down} {up}"})
        assert cli.run(["notify", "list"], menv) == 0
        assert cli.run(["notify", "test"], menv) == 1
        shown = out.getvalue().decode() + err.getvalue()
        assert f"json://127.0.0.1:9/hook/{MASK}" in shown and f"xml://127.0.0.1:{receiver.port}/api/{MASK}" in shown
        with sqlite3.connect(state / "specwatch.db") as db:
            stored = "\n".join(str(v) for row in db.execute("SELECT label, last_error FROM outbox") for v in row)
        assert f"/hook/{MASK}" in stored
        for where, text in [("pipe stderr", pipe.stderr.decode()), ("notify list/test", shown),
                            ("outbox", stored)]:
            assert token not in text, where
        assert receiver.bodies(f"/api/{token}"), "the unmasked URL is still the one delivered to"
    finally:
        receiver.down()


def test_notify_list_masks_a_label_stored_by_an_older_specwatch(tmp_path: Path) -> None:
    """A queued row whose stored label still holds the token is listed under its target, token masked."""
    from watcher.notify.outbox import Outbox
    from watcher.store import Store

    token = "Zq81kTokenInThePath7x"
    url = f"json://127.0.0.1:9/hook/{token}"
    state = tmp_path / "state"
    state.mkdir()
    store = Store.open(state / "specwatch.db")
    try:
        # The label an older specwatch stored: apprise's privacy URL, which shows a webhook's path.
        assert Outbox(store).enqueue([(parse(url).id, url)], "k" * 16, 1, "opened", "critical", 1.0) == 1
    finally:
        store.close()
    env, out, _ = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    assert cli.run(["notify", "list"], env) == 0
    text = out.getvalue().decode()
    assert token not in text
    assert f"json://127.0.0.1:9/hook/{MASK}  (1 queued)" in text
    assert f"-> json://127.0.0.1:9/hook/{MASK}, 0 attempts" in text


def _queued_with_an_old_label(state: Path, url: str) -> None:
    """An open incident whose ``opened`` row (never delivered) holds the label an older specwatch stored."""
    from tests.notify.conftest import incident
    from watcher.notify.outbox import Outbox
    from watcher.store import Store

    store = Store.open(state / "specwatch.db")
    try:
        inc = incident().as_dict()
        store.record(inc, "opened", 1.0)
        assert Outbox(store).enqueue([(parse(url).id, url)], str(inc["id"]), 1, "opened", "critical", 1.0) == 1
    finally:
        store.close()


def test_notify_flush_masks_a_label_stored_by_an_older_specwatch(tmp_path: Path) -> None:
    """What stays queued after ``notify flush`` is listed with the stored label's token masked."""
    token = "Zq81kTokenInThePath7x"
    url = f"json://127.0.0.1:9/hook/{token}"
    state = tmp_path / "state"
    state.mkdir()
    _queued_with_an_old_label(state, url)
    env, out, err = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url})
    assert cli.run(["notify", "flush"], env) == 1  # port 9 refuses: the row stays queued
    text = out.getvalue().decode() + err.getvalue()
    assert token not in text
    assert f"-> json://127.0.0.1:9/hook/{MASK}, 1 attempts" in text


def test_a_pipe_leaving_messages_queued_masks_a_label_stored_by_an_older_specwatch(tmp_path: Path) -> None:
    """The exit's 'still queued' line names the target by its masked label, whatever label the row holds."""
    token = "Zq81kTokenInThePath7x"
    url = f"json://127.0.0.1:9/hook/{token}"
    state = tmp_path / "state"
    state.mkdir()
    _queued_with_an_old_label(state, url)
    env, _, err = make_env({"SPECWATCH_STATE_DIR": str(state), "SPECWATCH_NOTIFY": url, "NO_COLOR": "1"})
    assert cli.run(["--no-summary"], env) == 0
    assert "still queued" in err.getvalue()
    assert token not in err.getvalue()
    assert f"json://127.0.0.1:9/hook/{MASK}: " in err.getvalue()
