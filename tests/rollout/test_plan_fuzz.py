"""The plan loader on random and mutated plans: a Plan or one short BadInput, never a traceback,
in bounded time and memory. Hypothesis generates the inputs; each test stays well under 30 s."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from canarykit.core.errors import BadInput
from canarykit.rollout import plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "plans"
SEEDS = [path.read_text() for path in sorted(EXAMPLES.glob("*.yaml"))]
# The plan's own words, so random plans reach the checks of each section and step.
FIELDS = [
    "service", "namespace", "stable", "canary", "kubeconfig", "context", "release", "reports",
    "pause", "prometheus", "url", "bearer_token_env", "preflight", "baseline_window",
    "min_baseline_success_rate", "inconclusive", "hold_steps", "then", "analysis", "window",
    "interval", "min_requests", "min_success_rate", "max_p99_ms", "judges", "alpha",
    "error_dispersion", "custom_metrics", "compare_metrics", "query", "min_value", "steps",
    "weight", "shadow", "percentage", "internal-canary", "header", "header_value",
    "cookie_name", "blue-green", "to_subset", "approve", "timeout", "on_timeout", "promote",
    "notifications", "kind", "url_env", "webhooks", "metadata", "", "a b", "x\ny",
]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70), st.floats(),
    st.text(max_size=20), st.sampled_from([
        "reviews", "v1", "v2", "10s", "5m", "-1s", "9" * 60 + "h", "http://prometheus:9090",
        "http://", "http://[::1", "rollback", "x-canary", "X Canary", "success-rate", "auto",
        "x" * 3000]))
OBJECTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS), inner, max_size=6)), max_leaves=40)
MUTATIONS = ["", "\n", ": ", "- ", "[", "]", "{", "}", "&a ", "*a", "<<: ", "!!python/name:x ",
             "steps: []\n", "yes", "0012", "1e3", "99999999999999999999999", "-1", "\t", "'",
             '"', "#", "\x00", "weight: 2147483648\n"]


@st.composite
def plans(draw) -> str:
    if draw(st.booleans()):
        text = draw(st.sampled_from(SEEDS))
    else:
        data = draw(st.dictionaries(st.sampled_from(FIELDS), OBJECTS, max_size=8))
        data.setdefault("service", "reviews")
        text = yaml.safe_dump(data, default_flow_style=draw(st.sampled_from([False, True, None])))
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, len(text)))
        if draw(st.booleans()):
            text = text[:pos] + draw(st.sampled_from(MUTATIONS)) + text[pos:]
        else:
            text = text[:pos] + text[pos + draw(st.integers(1, 20)):]
    return text


@settings(max_examples=300, deadline=2000, suppress_health_check=list(HealthCheck))
@given(text=plans())
def test_the_plan_loader_gives_a_plan_or_one_short_refusal(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "plan.yaml"
    path.write_text(text, encoding="utf-8", errors="replace")
    tracemalloc.start()
    try:
        loaded = plan.load_plan(path)
    except BadInput as refused:
        message = str(refused)
        assert "\n" not in message and len(message) < 600
    else:
        assert loaded.steps and plan.expand(loaded)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 100 * 2**20
