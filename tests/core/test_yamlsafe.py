"""The one YAML loader: duplicate keys, alias bombs, deep nesting and size are refused."""

from __future__ import annotations

import math
import sys
import time
import tracemalloc

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


def test_an_alias_inside_its_own_anchor_is_refused_as_a_cycle():
    assert "cycle" in refused("a: &a [1, *a]\n").problem
    assert "cycle" in refused("a: &a {b: *a}\n").problem


def test_keys_merged_with_lt_lt_may_be_overridden_but_written_keys_not_repeated():
    text = "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  y: 3\n"
    assert yamlsafe.load(text, "F") == {"base": {"x": 1, "y": 2}, "d": {"x": 1, "y": 3}}
    assert "duplicate key y" in refused("d:\n  <<: {x: 1}\n  y: 3\n  y: 4\n").problem


@pytest.mark.parametrize("text", ["a: " + "9" * 5000 + "\n", "a: 2024-13-45\n"])
def test_a_value_python_cannot_build_is_refused_not_raised(text):
    error = refused(text)
    assert "cannot be read" in error.problem and len(str(error)) < 300


# ---------------------------------------------------------------- the fast path


def ordinary_stream(count: int) -> str:
    return "---\n".join(
        f"apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: s-{n}\n"
        f"spec:\n  hosts:\n  - s-{n}\n  http:\n  - match:\n    - headers:\n        x-canary:\n"
        f"          exact: \"true\"\n    route:\n    - destination:\n        host: s-{n}\n"
        f"      weight: 90\n    timeout: 2.5s\n    retries: {{attempts: 3}}\n"
        for n in range(count))


def test_ordinary_manifests_take_the_fast_path_with_the_exact_result():
    text = ordinary_stream(50)
    assert yamlsafe.is_ordinary(text)
    fast = yamlsafe._fast_load_all(text)
    assert fast is not None and same(fast, yamlsafe._exact(text, "F", many=True))
    assert yamlsafe.load_all(text, "F") == fast


@pytest.mark.parametrize("text", [
    "a: yes\n", "a: on\n", "on: 1\n", "a: 0012\n", "a: 1e3\n", "a: 12:30\n", "a: 1_000\n",
    "a: 2024-01-01\n", "a: .5\n", "a: 0x1F\n", "1: a\n", "true: a\n", "a: &x 1\nb: *x\n",
    "a: !!str 1\n", "%YAML 1.1\n---\na: 1\n", "? [a]\n: 1\n", "- - a\n", "a:\tb\n",
    "a: \u2028\n", "a: [1,\n  2]\n", "{a: 1}\n...\n", "a: |+\n  x\n\n", "a: " + "b" * 1000 + "\n",
    " " * 90 + "a\n", "<<: {a: 1}\n",
])
def test_anything_yaml_1_1_and_1_2_may_read_differently_takes_the_exact_path(text):
    assert not yamlsafe.is_ordinary(text)
    assert yamlsafe._fast_load_all(text) is None


def test_a_repeated_key_is_refused_on_either_path_with_its_line():
    text = ordinary_stream(3) + "---\nkind: A\nkind: B\n"
    assert yamlsafe.is_ordinary(text)
    with pytest.raises(BadInput) as caught:
        yamlsafe.load_all(text, "F")
    assert "duplicate key kind at line" in caught.value.problem


def test_flow_nesting_beyond_the_limit_is_refused_on_either_path():
    text = "a: " + "[" * 150 + "]" * 150 + "\n"
    assert yamlsafe.is_ordinary(text)  # one line, brackets balanced: only the walk can tell
    assert yamlsafe._fast_load_all(text) is None
    with pytest.raises(BadInput) as caught:
        yamlsafe.load_all(text, "F")
    assert "nesting" in caught.value.problem


def test_the_node_limit_holds_on_either_path(monkeypatch):
    monkeypatch.setattr(yamlsafe, "MAX_NODES", 100)
    text = "a: [" + ", ".join(["x"] * 200) + "]\n"
    assert yamlsafe._fast_load_all(text) is None
    with pytest.raises(BadInput) as caught:
        yamlsafe.load_all(text, "F")
    assert "more than 100 nodes" in str(caught.value)


def test_without_yaml_rs_everything_takes_the_exact_path(monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml_rs", None)  # `import yaml_rs` raises ImportError
    text = ordinary_stream(3)
    assert yamlsafe._fast_load_all(text) is None
    assert yamlsafe.load_all(text, "F") == yamlsafe._exact(text, "F", many=True)


# What both paths must agree on: generated YAML (dumped data of every scalar type, in block and
# flow style, then mutated) and raw token soup. The fast path may decline; when it answers, its
# documents equal the exact path's, types included, and the exact path accepts the text.
TOKENS = ["a", "key", ":", ": ", " ", "  ", "\n", "- ", "-", "[", "]", "{", "}", ", ", "'", '"',
          "#", " #", "1", "0", "7", ".", "e", "+", "_", "yes", "on", "No", "---", "...", "|", ">",
          "|-", ">+", "\t", "\r\n", "~", "null", "true", "12", "0.5", "\\", "é", "%", "!", "&",
          "*", "?", "@", "=", "<<", "2024-01-01", "1:2", "\u2028", "\x85", "\ufeff", "\x00"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["yes", "on", "0012", "1e3", "1:30", "2024-01-01", "~", "", " x", "- a",
                     "a: b", "#", "'", '"', "[", "{}", "<<", "="]))
DATA = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)


@st.composite
def yaml_texts(draw) -> str:
    if draw(st.booleans()):
        return "".join(draw(st.lists(st.sampled_from(TOKENS), max_size=40)))
    text = yaml.safe_dump_all(
        draw(st.lists(DATA, min_size=1, max_size=3)),
        default_flow_style=draw(st.sampled_from([False, True, None])),
        allow_unicode=draw(st.booleans()), width=draw(st.sampled_from([20, 80, 1000])),
        explicit_start=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 3)):]
    return text


def same(a, b) -> bool:
    """Equal with types: True is not 1, 1.0 is not 1, NaN is NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(yaml_texts())
def test_the_fast_path_never_differs_from_the_exact_path(text):
    fast = yamlsafe._fast_load_all(text)
    if fast is None:
        return
    exact = yamlsafe._exact(text, "F", many=True)  # raises if the fast path took a bad text
    assert same(fast, exact), (text, fast, exact)
