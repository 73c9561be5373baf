"""The one YAML loader: duplicate keys, alias bombs, deep nesting and size are refused."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from canarykit.core import yamlsafe
from canarykit.core.errors import BadInput

LAUGHS = "\n".join(
    [f'a: &a [{", ".join(["lol"] * 9)}]']
    + [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]"
       for a, b in zip("abcdefgh", "bcdefghi", strict=True)])


def refused(text: str) -> BadInput:
    with pytest.raises(BadInput) as caught:
        yamlsafe.load(text, "PLAN")
    assert caught.value.field == "PLAN"
    return caught.value


def test_ordinary_yaml_loads_with_anchors_and_aliases():
    assert yamlsafe.load("x: &k {a: 1}\ny: *k\nz: [1, 2]\n", "F") == {
        "x": {"a": 1}, "y": {"a": 1}, "z": [1, 2]}
    assert yamlsafe.load_all("a: 1\n---\nb: 2\n", "F") == [{"a": 1}, {"b": 2}]


def test_a_repeated_key_is_refused_naming_it_and_its_line():
    error = refused("steps: [1]\nservice: reviews\nsteps: [2]\n")
    assert "duplicate key steps at line 3" in error.problem


def test_an_alias_bomb_is_refused_within_a_second_and_little_memory():
    assert len(LAUGHS) < 1000
    tracemalloc.start()
    started = time.monotonic()
    error = refused(LAUGHS)
    took = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "alias" in error.problem
    assert took < 1.0 and peak < 100 * 2**20


def test_nesting_beyond_the_limit_is_refused_before_python_recurses():
    assert "nesting" in refused("[" * 5000 + "]" * 5000).problem


def test_syntax_errors_say_where_without_echoing_the_text():
    error = refused("token: supersecretvalue\nbad: [1,\n")
    assert "line 3" in error.problem or "line 2" in error.problem
    assert "supersecretvalue" not in str(error)


def test_a_too_large_text_is_refused_by_its_size(monkeypatch):
    monkeypatch.setattr(yamlsafe, "MAX_BYTES", 10)
    assert "too large" in refused("a: 12345678901\n").problem
