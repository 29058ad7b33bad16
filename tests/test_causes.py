"""Causes are catalogue data: the causes table names why a failure happened from its own words, patterns may
set a cause outright, and no state, hint or title code tests the words of the log."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from watcher import catalogue as cat
from watcher.classify import Classifier
from watcher.events import CAUSES, Record

CATALOGUE = cat.load()
CAUSE_EXAMPLES = [(c, e) for c in CATALOGUE.causes for e in c.examples]
NEAR = [(c, n) for c in CATALOGUE.causes for n in c.near_misses]


@pytest.mark.parametrize("item", CAUSE_EXAMPLES, ids=[f"{c.id}:{i}" for i, (c, _) in enumerate(CAUSE_EXAMPLES)])
def test_cause_example_names_its_cause_first(item: tuple[cat.Cause, dict[str, str]]) -> None:
    """Each real failure text in the table yields its entry's cause (and captured fields), first match wins."""
    c, ex = item
    found = CATALOGUE.cause_of(ex["text"])
    assert found is not None and found["cause"] == c.cause
    for k, v in ex.items():
        if k != "text":
            assert found.get(k) == v


@pytest.mark.parametrize("item", NEAR, ids=[f"{c.id}:{i}" for i, (c, _) in enumerate(NEAR)])
def test_cause_near_miss_is_not_that_cause(item: tuple[cat.Cause, str]) -> None:
    """A text listed as a near miss does not get that entry's cause."""
    c, text = item
    found = CATALOGUE.cause_of(text)
    assert found is None or found["cause"] != c.cause


def test_every_cause_set_or_found_is_in_the_vocabulary() -> None:
    """Patterns' ``set`` causes and the table's causes are all names state and hints know."""
    used = {c.cause for c in CATALOGUE.causes}
    used |= {str(p.constants["cause"]) for p in CATALOGUE.patterns if "cause" in p.constants}
    assert used <= set(CAUSES)


def test_classifier_names_the_cause_of_a_captured_reason() -> None:
    """A pattern that captures a reason without setting a cause gets the table's cause, with its fields."""
    c = Classifier(CATALOGUE)
    ev = c.classify(Record("0.03.621.477 E llama_init_from_model: failed to initialize the context: Gemma4Assistant "
                           "requires ctx_other to be set (this warning is normal during memory fitting)", 1))
    assert ev is not None and ev.get("cause") == "needs_target_ctx" and ev.get("arch") == "Gemma4Assistant"
    ev = c.classify(Record("E srv load_model: failed to load draft model, '...\\mtp-gemma-4-31B-it.gguf': error "
                           "loading model: invalid vector subscript", 2))
    assert ev is not None and ev.get("cause") == "index_error"


def test_a_pattern_set_cause_wins_over_the_table() -> None:
    """'failed to open GGUF file' is a missing file even when no '(No such file ...)' follows the path."""
    ev = Classifier(CATALOGUE).classify(Record("gguf_init_from_file: failed to open GGUF file '/m/d.gguf'", 1))
    assert ev is not None and ev.get("cause") == "missing_file"


@pytest.mark.parametrize(("body", "key"), [
    ('[[cause]]\nid = "c.one"\ncause = "gremlins"\nregex = "x"\nexamples = [{ text = "x" }]\n', "cause"),
    ('[[cause]]\nid = "c.one"\ncause = "memory"\nregex = "x"\nexamples = []\n', "examples"),
    ('[[cause]]\nid = "c.one"\ncause = "memory"\nregex = "(x"\nexamples = [{ text = "x" }]\n', "regex"),
    ('[[pattern]]\nid = "c.one"\nevent = "alloc_failed"\nanchor = "abc"\nregex = "abc"\nset = { cause = "gremlins" }\n'
     'examples = ["abc"]\n', "set"),
])
def test_bad_cause_names_file_entry_and_key(tmp_path: Path, body: str, key: str) -> None:
    """An unknown cause name, an entry without examples or a broken regex is refused, naming file, id and key."""
    f = tmp_path / "broken.toml"
    f.write_text(body)
    with pytest.raises(cat.CatalogueError) as err:
        cat.load([f])
    msg = str(err.value)
    assert "broken.toml" in msg and "c.one" in msg and key in msg


_TEXT_ATTRS = {"reason", "text"}


def _tests_log_words(node: ast.Compare) -> bool:
    """``"words" in <captured text>``: a membership test whose right side reads a reason or a line's text."""
    if not any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
        return False
    if not isinstance(node.left, ast.Constant) or not isinstance(node.left.value, str):
        return False
    for right in node.comparators:
        for sub in ast.walk(right):
            if isinstance(sub, ast.Attribute) and sub.attr in _TEXT_ATTRS:
                return True
            if isinstance(sub, ast.Call) and any(isinstance(a, ast.Constant) and a.value in _TEXT_ATTRS
                                                 for a in sub.args):
                return True
            if isinstance(sub, ast.Name) and sub.id in {"low", "text", "reason"}:
                return True
    return False


WATCHER = Path(cat.__file__).parent
#: Every module of the state rules, whatever concern a new one is for, then hints and titles.
RULE_MODULES = [*sorted(p.relative_to(WATCHER).as_posix() for p in (WATCHER / "state").glob("*.py")),
                "hints.py", "incidents.py"]


@pytest.mark.parametrize("module", RULE_MODULES)
def test_no_rule_tests_the_words_of_the_log(module: str) -> None:
    """State rules, hints and titles read causes and fields, never substrings of captured text."""
    tree = ast.parse((WATCHER / module).read_text())
    found = [f"line {n.lineno}" for n in ast.walk(tree) if isinstance(n, ast.Compare) and _tests_log_words(n)]
    assert not found, found
