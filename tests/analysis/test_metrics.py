"""metrics.py against a real Prometheus holding synthetic Istio series (prometheus_fixture.py),
and against a tiny local HTTP server where a real Prometheus cannot show the behaviour (auth
headers, slow answers, server errors)."""

from __future__ import annotations

import base64
import http.server
import json
import math
import threading
import time

import pandas as pd
import pytest

from canarykit.analysis import metrics as m
from canarykit.core.errors import BadInput
from tests import prometheus_fixture
from tests.prometheus_fixture import (
    BUCKETS_MS,
    END,
    RESOLUTION,
    WEIRD_ROUTE,
    WEIRD_ROUTE_PER_STEP,
    free_port,
)

WINDOW = 600
TOKEN = "s3cr3t-token-value-0123456789"


def client_for(url: str, **settings) -> m.Client:
    return m.connect(m.PrometheusSettings(url=url, **settings))


# ---------------------------------------------------------------- validation and escaping


def test_escaping_keeps_quotes_backslashes_and_newlines_inside_the_string_literal():
    assert m.escape_label_value('a"b') == 'a\\"b'
    assert m.escape_label_value("a\\b") == "a\\\\b"
    assert m.escape_label_value("a\nb") == "a\\nb"
    assert m.escape_label_value('x"} or vector(1) #') == 'x\\"} or vector(1) #'


def test_service_name_that_tries_to_inject_promql_is_refused_naming_the_field():
    selector = m.MetricsSelector(service='reviews"} or vector(1) #', namespace="shop")
    with pytest.raises(BadInput) as refused:
        selector.matchers()
    assert refused.value.field == "service"
    assert "DNS-1123" in str(refused.value)


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"namespace": "Shop"}, "namespace"),
        ({"namespace": "a" * 64}, "namespace"),
        ({"reporter": "sidecar"}, "reporter"),
        ({"version_label": "destination-version"}, "version_label"),
        ({"canary": "v2 beta"}, "canary"),
        ({"stable": 'v1"}'}, "stable"),
        ({"canary": "v1"}, "canary"),
        ({"fqdn_suffix": "svc..local"}, "fqdn_suffix"),
        ({"extra_labels": {"bad-name": "x"}}, "extra_labels.bad-name"),
    ],
)
def test_bad_selector_values_are_refused_naming_the_field(change, field_name):
    with pytest.raises(BadInput) as refused:
        m.MetricsSelector(**{"service": "reviews", "namespace": "shop", **change}).validate()
    assert refused.value.field == field_name


def test_matchers_select_by_name_and_namespace_or_by_fqdn():
    plain = m.MetricsSelector("reviews", "shop")
    assert plain.matchers() == (
        'reporter="destination",destination_service_name="reviews",'
        'destination_workload_namespace="shop"'
    )
    fqdn = m.MetricsSelector("reviews", "shop", use_fqdn=True, reporter="source")
    assert fqdn.matchers() == (
        'reporter="source",destination_service="reviews.shop.svc.cluster.local"'
    )


def test_extra_label_values_are_escaped_not_validated():
    selector = m.MetricsSelector("reviews", "shop", extra_labels={"cluster": 'east"} or x'})
    assert 'cluster="east\\"} or x"' in selector.matchers()


def test_each_standard_metric_is_one_query_for_all_versions():
    selector = m.MetricsSelector("reviews", "shop", stable="v1", canary="v2")
    for metric in m.STANDARD_METRICS:
        query = m.standard_query(metric, selector, 600)
        assert "sum by (destination_version" in query
        assert "v1" not in query and "v2" not in query


def test_query_ranges_are_whole_seconds_or_milliseconds_and_positive():
    selector = m.MetricsSelector("reviews", "shop")
    assert "[600s]" in m.standard_query("request-rate", selector, 600)
    assert "[90500ms]" in m.standard_query("request-rate", selector, 90.5)
    with pytest.raises(BadInput) as refused:
        m.standard_query("request-rate", selector, 0)
    assert refused.value.field == "window"


def test_unknown_metric_name_is_refused():
    with pytest.raises(BadInput) as refused:
        m.standard_query("latency-p95", m.MetricsSelector("reviews", "shop"), 600)
    assert refused.value.field == "metric"


# ---------------------------------------------------------------- settings and secrets


def test_settings_refuse_credentials_in_the_url_without_echoing_the_password():
    with pytest.raises(BadInput) as refused:
        m.PrometheusSettings(url="http://admin:hunter2@prom:9090").validate()
    assert refused.value.field == "prometheus.url"
    assert "hunter2" not in str(refused.value)


def test_settings_refuse_an_authorization_header():
    with pytest.raises(BadInput) as refused:
        m.PrometheusSettings(url="http://prom:9090",
                             headers={"Authorization": f"Bearer {TOKEN}"}).validate()
    assert refused.value.field == "prometheus.headers"
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize(
    ("settings", "field_name"),
    [
        ({"url": "ftp://prom"}, "prometheus.url"),
        ({"url": "http://p", "bearer_token_env": "A", "bearer_token_file": "/f"},
         "prometheus.bearer_token_env"),
        ({"url": "http://p", "basic_auth_user": "u"}, "prometheus.basic_auth_password_env"),
        ({"url": "http://p", "timeout_seconds": 0}, "prometheus.timeout_seconds"),
        ({"url": "http://p", "ca_file": "/nonexistent/ca.pem"}, "prometheus.ca_file"),
        ({"url": "http://p", "bearer_token_env": "not a name"}, "prometheus.bearer_token_env"),
    ],
)
def test_bad_connection_settings_are_refused_naming_the_field(settings, field_name):
    with pytest.raises(BadInput) as refused:
        m.PrometheusSettings(**settings).validate()
    assert refused.value.field == field_name


def test_an_unset_token_variable_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.delenv("CANARYKIT_TEST_TOKEN", raising=False)
    with pytest.raises(BadInput) as refused:
        client_for("http://127.0.0.1:9", bearer_token_env="CANARYKIT_TEST_TOKEN")
    assert refused.value.field == "prometheus.bearer_token_env"
    assert refused.value.value == "CANARYKIT_TEST_TOKEN"


def test_settings_round_trip_and_hold_only_the_names_of_secrets(monkeypatch):
    monkeypatch.setenv("CANARYKIT_TEST_TOKEN", TOKEN)
    settings = m.PrometheusSettings(url="http://127.0.0.1:9",
                                    bearer_token_env="CANARYKIT_TEST_TOKEN",
                                    headers={"X-Scope-OrgID": "team-a"}, timeout_seconds=3)
    assert m.PrometheusSettings.from_dict(settings.to_dict()) == settings
    client = m.connect(settings)
    assert client.connection.headers["Authorization"] == f"Bearer {TOKEN}"
    for text in (repr(settings), json.dumps(settings.to_dict()), repr(client), str(client)):
        assert TOKEN not in text


class FakePrometheus(http.server.BaseHTTPRequestHandler):
    """Answers like Prometheus's query API; behaviour set per server through `mode`."""

    mode = "ok"
    seen: list[dict] = []

    def do_GET(self):  # noqa: N802 - the http.server API
        type(self).seen.append(dict(self.headers))
        if self.mode == "slow":
            time.sleep(1.5)
        if self.mode == "echo-401":
            body = {"status": "error", "errorType": "unauthorized",
                    "error": f"token {self.headers.get('Authorization')} is not valid"}
            self._answer(401, body)
        elif self.mode == "503":
            self._answer(503, {"status": "error", "error": "overloaded"})
        elif self.mode in GARBAGE:
            self._answer_raw(GARBAGE[self.mode](self.path.startswith("/api/v1/query_range")))
        else:
            body = {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"destination_version": "v2"}, "value": [END, "1"]}]}}
            self._answer(200, body)

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _answer_raw(self, answer: tuple[str, str]) -> None:
        content_type, text = answer
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _series(sample: list, ranged: bool) -> str:
    """A one-series answer holding `sample`, as a vector or (for range queries) a matrix."""
    key, value = ("values", [sample]) if ranged else ("value", sample)
    return json.dumps({"status": "success", "data": {
        "resultType": "matrix" if ranged else "vector",
        "result": [{"metric": {"destination_version": "v2"}, key: value}]}})


JSON = "application/json"
# What a proxy, a misconfigured URL or a broken Prometheus can answer with status 200.
GARBAGE = {
    "html": lambda ranged: ("text/html", "<!doctype html><html><body>Sign in</body></html>"),
    "broken-json": lambda ranged: (JSON, '{"status": "success", "data": {"result": ['),
    "no-data": lambda ranged: (JSON, '{"status": "success"}'),
    "a-list": lambda ranged: (JSON, "[1, 2, 3]"),
    "result-not-a-list": lambda ranged: (JSON, '{"status": "success", "data": {"result": "x"}}'),
    "non-numeric-sample": lambda ranged: (JSON, _series([END, "abc"], ranged)),
    "sample-not-a-pair": lambda ranged: (JSON, _series([END], ranged)),
    "deep-json": lambda ranged: (JSON, "[" * 100_000 + "]" * 100_000),
}


@pytest.fixture
def fake_prometheus():
    servers = []

    def start(mode: str) -> str:
        handler = type("Handler", (FakePrometheus,), {"mode": mode, "seen": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append((server, handler))
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.handlers = lambda: [handler for _, handler in servers]
    yield start
    for server, _ in servers:
        server.shutdown()
        server.server_close()


def test_bearer_token_from_a_file_and_extra_headers_are_sent(fake_prometheus, tmp_path):
    url = fake_prometheus("ok")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    client = client_for(url, bearer_token_file=str(token_file), headers={"X-Scope-OrgID": "a"})
    outcome = m.query_at(client, "up", END)
    assert outcome.ok
    seen = fake_prometheus.handlers()[0].seen[-1]
    assert seen["Authorization"] == f"Bearer {TOKEN}"
    assert seen["X-Scope-OrgID"] == "a"


def test_basic_auth_password_comes_from_the_named_variable(fake_prometheus, monkeypatch):
    url = fake_prometheus("ok")
    monkeypatch.setenv("CANARYKIT_TEST_PASSWORD", "pa55word")
    client = client_for(url, basic_auth_user="grafana",
                        basic_auth_password_env="CANARYKIT_TEST_PASSWORD")
    assert m.query_at(client, "up", END).ok
    sent = fake_prometheus.handlers()[0].seen[-1]["Authorization"]
    assert base64.b64decode(sent.split()[1]).decode() == "grafana:pa55word"
    assert "pa55word" not in repr(client)


def test_a_token_echoed_back_in_an_http_error_never_reaches_the_message(
    fake_prometheus, monkeypatch
):
    url = fake_prometheus("echo-401")
    monkeypatch.setenv("CANARYKIT_TEST_TOKEN", TOKEN)
    client = client_for(url, bearer_token_env="CANARYKIT_TEST_TOKEN")
    outcome = m.query_at(client, "up", END)
    assert outcome.status == m.HTTP_ERROR
    assert outcome.http_status == 401
    assert "authentication failed" in outcome.message
    assert url in outcome.message
    assert TOKEN not in outcome.message and TOKEN not in repr(outcome)
    assert TOKEN not in json.dumps(outcome.to_dict())


def test_server_errors_after_retries_are_an_http_error_outcome(fake_prometheus):
    outcome = m.query_at(client_for(fake_prometheus("503"), retries=1), "up", END)
    assert outcome.status == m.HTTP_ERROR
    assert outcome.http_status == 503
    assert "overloaded" in outcome.message


def test_a_server_slower_than_the_timeout_is_unreachable(fake_prometheus):
    client = client_for(fake_prometheus("slow"), timeout_seconds=0.3, retries=0)
    outcome = m.query_at(client, "up", END)
    assert outcome.status == m.UNREACHABLE
    assert "did not answer within 0.3s" in outcome.message


@pytest.mark.parametrize("mode", sorted(GARBAGE))
def test_an_answer_that_is_not_a_query_result_is_a_failure_naming_the_url(fake_prometheus, mode):
    url = fake_prometheus(mode)
    client = client_for(url, retries=0)
    for outcome in (m.query_at(client, "up", END),
                    m.query_range(client, "up", END - WINDOW, END, 60)):
        assert outcome.status == m.HTTP_ERROR and outcome.status.failed
        assert outcome.message.startswith(f"Prometheus at {url} answered with ")
        assert "\n" not in outcome.message and len(outcome.message) < 300
        assert outcome.result == []


def test_nan_and_infinite_samples_are_numbers_prometheus_writes(fake_prometheus):
    for text in ("NaN", "+Inf", "-Inf", "0.25"):
        assert m._result_problem([{"metric": {}, "value": [END, text]}]) == ""
    assert "abc" in m._result_problem([{"metric": {}, "value": [END, "abc"]}])


def test_counts_from_a_non_numeric_answer_are_a_failure_not_zero(fake_prometheus):
    url = fake_prometheus("non-numeric-sample")
    counts = m.raw_counts(client_for(url, retries=0), m.MetricsSelector("healthy", "shop"),
                          END - WINDOW, END)
    assert counts.failure is not None and url in counts.failure.message


@pytest.mark.parametrize("url", ["http://", "ftp://prometheus", "http://[::1",
                                 "http://prometheus:99999", "http://prom etheus", "prometheus",
                                 "http://prometheus\n:9090", "http://" + "a" * 3000])
def test_an_unusable_url_is_refused_before_anything_is_sent(url):
    with pytest.raises(BadInput) as refused:
        m.PrometheusSettings(url=url).validate()
    assert refused.value.field == "prometheus.url" and len(str(refused.value)) < 300


def test_only_unreachable_and_http_errors_are_failures_to_ask():
    assert [status.value for status in m.QueryStatus if status.failed] == [
        "unreachable", "http-error"]
    assert m.QueryOutcome("up", "empty").status is m.QueryStatus.EMPTY
    assert json.dumps(m.QueryOutcome("up", m.UNREACHABLE).to_dict()["status"]) == '"unreachable"'
    with pytest.raises(ValueError):
        m.QueryOutcome("up", "timeout")


def test_nobody_listening_is_unreachable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    outcome = m.query_at(client_for(url, retries=0), "up", END)
    assert outcome.status == m.UNREACHABLE
    assert outcome.message == f"Prometheus at {url} is unreachable: the connection was refused"
    counts = m.raw_counts(client_for(url, retries=0), m.MetricsSelector("healthy", "shop"),
                          END - WINDOW, END)
    assert counts.failure is not None and counts.versions == {}


# ---------------------------------------------------------------- against the real Prometheus


def test_a_malformed_query_is_an_http_error_with_prometheus_words(prometheus_url):
    outcome = m.query_at(client_for(prometheus_url), "sum(", END)
    assert outcome.status == m.HTTP_ERROR
    assert outcome.http_status == 400
    assert "parse error" in outcome.message


def test_raw_counts_give_requests_errors_and_cumulative_buckets_per_version(prometheus_url):
    counts = m.raw_counts(client_for(prometheus_url), m.MetricsSelector("healthy", "shop"),
                          END - WINDOW, END)
    assert [outcome.status for outcome in counts.outcomes] == ["ok", "ok", "ok"]
    assert set(counts.versions) == {"v1", "v2"}
    for version, rps in (("v1", 30), ("v2", 10)):
        data = counts.versions[version]
        assert abs(data["requests"] - rps * WINDOW) < 0.05 * rps * WINDOW
        assert 0 < data["errors"] < 0.02 * data["requests"]
        edges = [le for le, _ in data["buckets"]]
        assert edges == sorted(BUCKETS_MS) + [math.inf]
        cumulative = [count for _, count in data["buckets"]]
        assert cumulative == sorted(cumulative)
        assert cumulative[-1] == data["requests"]


def test_counts_are_taken_from_the_namespace_asked_for(prometheus_url):
    client = client_for(prometheus_url)
    shop = m.raw_counts(client, m.MetricsSelector("healthy", "shop"), END - WINDOW, END)
    staging = m.raw_counts(client, m.MetricsSelector("healthy", "staging"), END - WINDOW, END)
    assert set(staging.versions) == {"v1"}
    assert staging.versions["v1"]["requests"] > 2.5 * shop.versions["v1"]["requests"]


def test_selecting_by_fqdn_finds_the_same_series(prometheus_url):
    client = client_for(prometheus_url)
    plain = m.raw_counts(client, m.MetricsSelector("errors", "shop"), END - WINDOW, END)
    fqdn = m.raw_counts(client, m.MetricsSelector("errors", "shop", use_fqdn=True),
                        END - WINDOW, END)
    assert fqdn.versions == plain.versions


def test_the_reporter_is_part_of_the_selection(prometheus_url):
    client = client_for(prometheus_url)
    destination = m.instant_metric(client, m.MetricsSelector("sourced", "shop"), "request-rate",
                                   window_seconds=WINDOW, at=END)
    source = m.instant_metric(client, m.MetricsSelector("sourced", "shop", reporter="source"),
                              "request-rate", window_seconds=WINDOW, at=END)
    assert destination.outcome.status == m.EMPTY
    assert "has no series" in destination.outcome.message
    assert source.outcome.ok
    assert abs(source.get("v1") - 20) < 2 and abs(source.get("v2") - 20) < 2


def test_instant_metrics_tell_the_versions_apart(prometheus_url):
    client = client_for(prometheus_url)
    slow = m.MetricsSelector("slow", "shop")
    p99 = m.instant_metric(client, slow, "latency-p99", window_seconds=WINDOW, at=END)
    assert p99.get("v2") > 2 * p99.get("v1")
    errors = m.MetricsSelector("errors", "shop")
    success = m.instant_metric(client, errors, "success-rate", window_seconds=WINDOW, at=END)
    assert success.get("v1") > 0.99 and 0.88 < success.get("v2") < 0.96
    five_xx = m.instant_metric(client, errors, "error-rate", window_seconds=WINDOW, at=END)
    assert five_xx.get("v2") > 3 * five_xx.get("v1")
    share = m.instant_metric(client, errors, "traffic-share", window_seconds=WINDOW, at=END)
    assert abs(share.get("v2") - 0.25) < 0.03
    assert abs(share.get("v1") + share.get("v2") - 1) < 1e-9


def test_a_version_without_5xx_has_error_rate_zero_not_missing(prometheus_url):
    client = client_for(prometheus_url)
    better = m.MetricsSelector("better", "shop")
    errors = m.instant_metric(client, better, "error-rate", window_seconds=WINDOW, at=END)
    success = m.instant_metric(client, better, "success-rate", window_seconds=WINDOW, at=END)
    assert errors.get("v2") == 0 and success.get("v2") == 1


def test_range_frame_is_tidy_with_one_row_per_timestamp_version_and_metric(prometheus_url):
    frame = m.range_frame(client_for(prometheus_url), m.MetricsSelector("healthy", "shop"),
                          END - WINDOW + 60, END, step_seconds=60)
    assert list(frame.columns) == ["timestamp", "version", "metric", "value"]
    assert set(frame["metric"]) == set(m.STANDARD_METRICS)
    assert set(frame["version"]) == {"v1", "v2"}
    assert frame.duplicated(["timestamp", "version", "metric"]).sum() == 0
    assert len(frame) == len(m.STANDARD_METRICS) * 2 * 10
    assert frame["timestamp"].min() == pd.Timestamp(END - WINDOW + 60, unit="s", tz="UTC")
    assert frame["timestamp"].max() == pd.Timestamp(END, unit="s", tz="UTC")
    assert [o.status for o in frame.attrs["outcomes"]] == [m.OK] * len(m.STANDARD_METRICS)
    share = m.samples_by_version(frame, "traffic-share", "v2")
    assert len(share) == 10 and all(0.1 < value < 0.4 for value in share)


def test_range_frame_of_a_missing_service_is_empty_with_the_outcome_saying_so(prometheus_url):
    frame = m.range_frame(client_for(prometheus_url), m.MetricsSelector("nosuch", "shop"),
                          END - WINDOW, END, metrics=["request-rate"])
    assert frame.empty and list(frame.columns) == ["timestamp", "version", "metric", "value"]
    assert frame.attrs["outcomes"][0].status is m.EMPTY


# ---------------------------------------------------------------- custom metrics


CHECKOUT = (
    'sum(increase(shop_checkout_total{service="$service",version="$version",'
    'outcome="success"}[$window])) / sum(increase(shop_checkout_total{service="$service",'
    'version="$version"}[$window]))'
)


def test_custom_metric_template_gives_the_canary_business_metric(prometheus_url):
    metric = m.CustomMetric("checkout-success", CHECKOUT, min_value=0.95)
    client = client_for(prometheus_url)
    healthy = m.custom_value(client, metric, m.MetricsSelector("healthy", "shop"),
                             version="v2", window_seconds=WINDOW, at=END)
    broken = m.custom_value(client, metric, m.MetricsSelector("errors", "shop"),
                            version="v2", window_seconds=WINDOW, at=END)
    assert 0.9 < healthy.value < 1
    assert broken.value < healthy.value - 0.05
    assert 'service="healthy",version="v2"' in healthy.outcome.query
    assert "[600s]" in healthy.outcome.query


def test_placeholder_value_with_quotes_and_braces_matches_only_its_own_series(prometheus_url):
    query = 'sum(increase(shop_checkout_total{service="$service",route="$route"}[$window]))'
    client = client_for(prometheus_url)
    selector = m.MetricsSelector("healthy", "shop")
    weird = m.CustomMetric("weird", query, max_value=1e9, params={"route": WEIRD_ROUTE})
    found = m.custom_value(client, weird, selector, version="v2", window_seconds=WINDOW, at=END)
    # both versions carry the route: 2 * WEIRD_ROUTE_PER_STEP per 10 s, nothing else
    assert found.value == pytest.approx(2 * WEIRD_ROUTE_PER_STEP * WINDOW / RESOLUTION)
    injection = m.CustomMetric("inject", query, max_value=1,
                               params={"route": 'x"} or vector(1) #'})
    none = m.custom_value(client, injection, selector, version="v2", window_seconds=WINDOW, at=END)
    assert none.outcome.status == m.EMPTY
    assert none.value is None
    assert 'route="x\\"} or vector(1) #"' in none.outcome.query


def test_custom_metric_giving_several_series_has_no_value(prometheus_url):
    metric = m.CustomMetric("per-route", 'sum by (route) (shop_checkout_total{service="$service"})',
                            max_value=1)
    selector = m.MetricsSelector("healthy", "shop")
    result = m.custom_value(client_for(prometheus_url), metric, selector, version="v2",
                            window_seconds=WINDOW, at=END)
    assert result.value is None
    assert "must give exactly one" in result.problem


def test_unknown_placeholder_is_refused_naming_it():
    metric = m.CustomMetric("typo", 'sum(x{service="$servce"})', max_value=1)
    with pytest.raises(BadInput) as refused:
        m.render_template(metric, m.MetricsSelector("reviews", "shop"), version="v2",
                          window_seconds=60)
    assert refused.value.field == "custom_metrics.typo.query"
    assert refused.value.value == "$servce"


def test_custom_metric_cannot_override_builtin_placeholders_or_lack_limits():
    with pytest.raises(BadInput) as refused:
        m.CustomMetric("x", "up", max_value=1, params={"service": "other"}).validate()
    assert refused.value.field == "custom_metrics.x.params.service"
    with pytest.raises(BadInput) as refused:
        m.CustomMetric("x", "up").validate()
    assert refused.value.field == "custom_metrics.x.min_value"


@pytest.mark.parametrize(("data", "field_name"), [
    ({"name": "checkout", "max_value": 1}, "custom_metrics.checkout.query"),
    ({"query": "up", "max_value": 1}, "custom_metrics.name"),
])
def test_a_custom_metric_lacking_a_field_is_refused_naming_it(data, field_name):
    with pytest.raises(BadInput) as refused:
        m.CustomMetric.from_dict(data)
    assert (refused.value.field, refused.value.problem) == (field_name, "is required")


def test_settings_and_selector_lacking_a_field_are_refused_naming_it():
    with pytest.raises(BadInput) as refused:
        m.PrometheusSettings.from_dict({"timeout_seconds": 5})
    assert refused.value.field == "prometheus.url"
    with pytest.raises(BadInput) as refused:
        m.MetricsSelector.from_dict({"service": "reviews"})
    assert refused.value.field == "namespace"


def test_custom_metric_round_trips_and_dollar_dollar_is_a_dollar():
    metric = m.CustomMetric("cost", 'sum(cost{currency="$$"})', max_value=5, params={"a": "b"})
    assert m.CustomMetric.from_dict(metric.to_dict()) == metric
    rendered = m.render_template(metric, m.MetricsSelector("reviews", "shop"), version="v2",
                                 window_seconds=90)
    assert rendered == 'sum(cost{currency="$"})'


def test_the_fixture_fails_rather_than_skips_without_prometheus(monkeypatch, tmp_path):
    monkeypatch.setattr(prometheus_fixture, "PROMETHEUS", str(tmp_path / "no-prometheus"))
    with pytest.raises(pytest.fail.Exception, match="install the Debian package `prometheus`"):
        prometheus_fixture.start_prometheus(tmp_path, tmp_path)
