"""`canarykit validate` on random and mutated input: never a traceback, one line per message,
bounded time and memory. Hypothesis generates the inputs; each test stays well under 30 s."""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canarykit.mesh import validate

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEEDS = [(EXAMPLES / name).read_text() for name in ("reviews.yaml", "broken.yaml",
                                                     "reviews-canary-internal.yaml")]
# Istio's field names, so random objects reach the checks instead of stopping at the top.
FIELDS = [
    "apiVersion", "kind", "metadata", "name", "namespace", "spec", "hosts", "gateways", "http",
    "tcp", "tls", "match", "route", "destination", "host", "subset", "weight", "port", "number",
    "headers", "withoutHeaders", "queryParams", "uri", "method", "exact", "prefix", "regex",
    "mirror", "mirrors", "mirrorPercentage", "mirrorPercent", "percentage", "value", "fault",
    "abort", "delay", "httpStatus", "grpcStatus", "fixedDelay", "percent", "retries", "attempts",
    "perTryTimeout", "retryOn", "timeout", "corsPolicy", "allowOrigins", "rewrite",
    "uriRegexRewrite", "redirect", "directResponse", "status", "request", "response", "set",
    "add", "remove", "trafficPolicy", "loadBalancer", "simple", "consistentHash", "httpCookie",
    "ttl", "ringHash", "minimumRingSize", "outlierDetection", "consecutive5xxErrors",
    "maxEjectionPercent", "connectionPool", "maxConnections", "tcpKeepalive", "probes",
    "subsets", "labels", "portLevelSettings", "retryBudget", "", "x y", "a\nb", '"q"',
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70), st.floats(),
    st.text(max_size=20), st.sampled_from([
        "networking.istio.io/v1", "VirtualService", "DestinationRule", "reviews", "v1", "*",
        "10s", "0s", "-1s", "9" * 50 + "h", "(?=a)", "[", "%", "abc%1", "5xx,reset", "\n",
        "x" * 2000]))
OBJECTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6)), max_leaves=40)
MUTATIONS = ["", "\n", ": ", "- ", "[", "]", "{", "}", "&a ", "*a", "<<: ", "!!binary ", "---\n",
             "yes", "0012", "1e3", "99999999999999999999999", "-1", "\t", "'", '"', "#", "\x00",
             "headers:\n  x y: {exact: a}\n", "kind: List\nitems: 7\n"]


def mutated(draw, text: str) -> str:
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(text)))
        choice = draw(st.integers(0, 2))
        if choice == 0:
            text = text[:pos] + draw(st.sampled_from(MUTATIONS)) + text[pos:]
        elif choice == 1:
            text = text[:pos] + text[pos + draw(st.integers(1, 20)):]
        else:
            end = draw(st.integers(pos, min(len(text), pos + 200)))
            text = text[:pos] + text[pos:end] * draw(st.integers(2, 4)) + text[end:]
    return text


@st.composite
def manifests(draw) -> str:
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return mutated(draw, draw(st.sampled_from(SEEDS)))
    if kind == 1:
        documents = draw(st.lists(OBJECTS, min_size=1, max_size=3))
        return mutated(draw, yaml.safe_dump_all(documents, default_flow_style=draw(
            st.sampled_from([False, True, None]))))
    return draw(st.text(max_size=300))


def run(tmp_path: Path, text: str, capsys) -> tuple[int, str, str]:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="replace")
    parser = argparse.ArgumentParser()
    validate.add_arguments(parser)
    code = validate.run(parser.parse_args([str(path)]))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@settings(max_examples=300, deadline=2000, suppress_health_check=list(HealthCheck))
@given(text=manifests())
def test_validate_answers_random_input_with_an_exit_code_and_short_lines(tmp_path_factory, capsys,
                                                                         text):
    tracemalloc.start()
    try:
        code, out, err = run(tmp_path_factory.mktemp("fuzz"), text, capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code in (0, 1, 2)
    assert (err == "") == (code != 2)
    if code == 2:
        [line] = err.splitlines()
        assert len(line) < 600
    for line in out.splitlines():
        assert len(line) < 600
    assert len(out) < 400 * (len(text) + 10)  # output grows with the input, never faster
    assert peak < 100 * 2**20


@settings(max_examples=400, deadline=2000, suppress_health_check=list(HealthCheck))
@given(objects=st.lists(st.one_of(OBJECTS, st.fixed_dictionaries({
    "apiVersion": st.just("networking.istio.io/v1"),
    "kind": st.sampled_from(["VirtualService", "DestinationRule"]),
    "metadata": st.fixed_dictionaries({"name": st.text(max_size=10)}),
    "spec": OBJECTS})), max_size=4))
def test_the_analyzer_reports_any_object_without_raising(objects):
    for message in validate.analyze(objects):
        line = message.format()
        assert "\n" not in line and len(line) < 600
