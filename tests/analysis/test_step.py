"""analysis.py end to end against a real Prometheus holding the synthetic scenarios of
tests/prometheus_fixture.py (one service per scenario, data ending at END)."""

from __future__ import annotations

import argparse
import http.server
import json
import threading
from datetime import UTC, datetime

import pytest
import yaml

from canarykit.analysis import judges, sequential
from canarykit.analysis import metrics as m
from canarykit.analysis import step as analysis
from canarykit.analysis.judges import Verdict
from canarykit.analysis.settings import CLI, JUDGE_NAMES, AnalysisSettings
from canarykit.core.errors import BadInput, ExitCode
from tests.prometheus_fixture import END, WEIRD_ROUTE, WEIRD_ROUTE_PER_STEP, free_port

CHECKOUT = m.CustomMetric(
    "checkout-success",
    'sum(increase(shop_checkout_total{service="$service",version="$version",'
    'outcome="success"}[$window])) / sum(increase(shop_checkout_total{service="$service",'
    'version="$version"}[$window]))',
    min_value=0.9,
)


def analyze(url: str, service: str, **config) -> judges.Decision:
    """Every judge (Mann-Whitney too) over the default 10m window of 1m intervals."""
    return analysis.run_analysis(
        m.PrometheusSettings(url), m.MetricsSelector(service, "shop"),
        AnalysisSettings(**{"judges": list(JUDGE_NAMES), **config}), end=END,
    )


def by_judge(decision: judges.Decision) -> dict[str, judges.Judgement]:
    return {judgement.judge: judgement for judgement in decision.judgements}


def nobody_listening() -> str:
    return f"http://127.0.0.1:{free_port()}"


class Garbage(http.server.BaseHTTPRequestHandler):
    """A server on 127.0.0.1 answering every query with status 200 and `body`."""

    body = ""

    def do_GET(self):  # noqa: N802 - the http.server API
        ranged = self.path.startswith("/api/v1/query_range")
        text = self.body.replace("SAMPLE", '"values": [[1700000000, "abc"]]' if ranged
                                 else '"value": [1700000000, "abc"]')
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if text.startswith("<") else
                         "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


NON_NUMERIC = ('{"status": "success", "data": {"resultType": "vector", "result": ['
               '{"metric": {"destination_version": "v1"}, SAMPLE}, '
               '{"metric": {"destination_version": "v2"}, SAMPLE}]}}')
ANSWERS = {"html": "<html><body>Please sign in</body></html>",
           "malformed-json": '{"status": "success", "data": {"result": [',
           "non-numeric-sample": NON_NUMERIC}


@pytest.fixture(params=sorted(ANSWERS))
def garbage_url(request):
    handler = type("Handler", (Garbage,), {"body": ANSWERS[request.param]})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------- scenarios


def test_healthy_canary_passes_with_every_judge_showing_its_queries(prometheus_url):
    decision = analyze(prometheus_url, "healthy", canary_weight=25,
                       custom_metrics=[CHECKOUT])
    assert decision.verdict == Verdict.PASS, decision.reason
    found = by_judge(decision)
    assert set(found) == {"success-rate", "latency-p99", "mann-whitney", "error-rate-sequential",
                          "traffic-split", "latency-sequential", "custom:checkout-success"}
    assert all(j.verdict == Verdict.PASS for j in decision.judgements)
    for judgement in decision.judgements:
        assert judgement.queries, judgement.judge
        assert all('"healthy"' in query for query in judgement.queries)
    assert found["traffic-split"].required


def test_5xx_regression_on_the_canary_fails(prometheus_url):
    decision = analyze(prometheus_url, "errors", custom_metrics=[CHECKOUT])
    assert decision.verdict == Verdict.FAIL
    found = by_judge(decision)
    assert found["success-rate"].verdict == Verdict.FAIL
    assert found["error-rate-sequential"].verdict == Verdict.FAIL
    assert found["custom:checkout-success"].verdict == Verdict.FAIL
    assert found["latency-p99"].verdict == Verdict.PASS
    assert "success-rate" in decision.reason


def test_latency_regression_on_the_canary_fails(prometheus_url):
    decision = analyze(prometheus_url, "slow")
    assert decision.verdict == Verdict.FAIL
    found = by_judge(decision)
    assert found["latency-p99"].verdict == Verdict.FAIL
    assert found["latency-sequential"].verdict == Verdict.FAIL
    assert found["mann-whitney"].verdict == Verdict.FAIL
    assert found["success-rate"].verdict == Verdict.PASS
    assert found["error-rate-sequential"].verdict == Verdict.PASS


def test_a_canary_better_than_stable_is_not_failed(prometheus_url):
    decision = analyze(prometheus_url, "better", canary_weight=25)
    assert decision.verdict != Verdict.FAIL
    assert not [j.judge for j in decision.judgements if j.verdict == Verdict.FAIL]


def test_too_little_traffic_is_inconclusive_never_pass(prometheus_url):
    decision = analyze(prometheus_url, "sparse", canary_weight=25)
    assert decision.verdict == Verdict.INCONCLUSIVE
    found = by_judge(decision)
    for name in ("success-rate", "latency-p99", "mann-whitney", "error-rate-sequential"):
        assert found[name].verdict == Verdict.INCONCLUSIVE, name
        assert "fewer than the 100" in found[name].reason


def test_no_series_for_the_canary_is_inconclusive_saying_so(prometheus_url):
    decision = analyze(prometheus_url, "nocanary", canary_weight=25)
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert "no series for the canary version v2 of nocanary in namespace shop" in decision.reason
    assert all(j.verdict == Verdict.INCONCLUSIVE for j in decision.judgements)


def test_prometheus_down_is_inconclusive_naming_the_url():
    url = nobody_listening()
    decision = analyze(url, "healthy")
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert decision.reason == f"Prometheus at {url} is unreachable: the connection was refused"
    assert decision.judgements[0].queries  # the query that could not be sent is recorded


def test_prometheus_answering_garbage_is_inconclusive_naming_the_url(garbage_url):
    decision = analysis.run_analysis(
        m.PrometheusSettings(garbage_url, retries=0), m.MetricsSelector("healthy", "shop"),
        AnalysisSettings(judges=list(JUDGE_NAMES), canary_weight=25), end=END)
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert decision.reason.startswith(f"Prometheus at {garbage_url} answered with ")
    assert "\n" not in decision.reason


def test_the_cli_exits_3_with_one_line_when_prometheus_answers_garbage(garbage_url, capsys):
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", garbage_url,
                            "--at", str(END)))
    captured = capsys.readouterr()
    assert code == 3 and captured.err == ""
    [decision] = [line for line in captured.out.splitlines() if line.startswith("decision:")]
    assert f"Prometheus at {garbage_url} answered with" in decision


def test_no_data_at_the_time_asked_for_is_inconclusive(prometheus_url):
    decision = analysis.run_analysis(
        m.PrometheusSettings(prometheus_url), m.MetricsSelector("healthy", "shop"),
        AnalysisSettings(), end=END + 86_400)
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert "no series for the canary version v2 or the stable version v1" in decision.reason


def test_unknown_canary_weight_leaves_the_split_untested_and_not_required(prometheus_url):
    decision = analyze(prometheus_url, "healthy")
    split = by_judge(decision)["traffic-split"]
    assert split.verdict == Verdict.INCONCLUSIVE and not split.required
    assert "no canary weight configured" in split.reason
    assert decision.verdict == Verdict.PASS


def test_earlier_segments_are_chained_with_the_window(prometheus_url):
    earlier = sequential.Segment(canary_share=0.1, stable_requests=9000, stable_errors=9,
                                 canary_requests=1000, canary_errors=40, started_at=END - 3600)
    decision = analysis.run_analysis(
        m.PrometheusSettings(prometheus_url), m.MetricsSelector("healthy", "shop"),
        AnalysisSettings(canary_weight=25), end=END, segments=[earlier])
    errors = by_judge(decision)["error-rate-sequential"]
    assert errors.verdict == Verdict.FAIL
    assert len(errors.evidence["segments"]) == 2
    assert decision.verdict == Verdict.FAIL


def clustered(url: str, **config) -> judges.Judgement:
    """The error judge on identical versions whose 5xx come in clusters of 20, over the last
    5 minutes at 10 s intervals (the 15 minutes before are stable's history)."""
    decision = analysis.run_analysis(
        m.PrometheusSettings(url), m.MetricsSelector("clustered", "shop"),
        AnalysisSettings(canary_weight=25, window="5m", interval="10s", **config), end=END)
    return by_judge(decision)["error-rate-sequential"]


def test_clustered_errors_on_identical_versions_are_not_a_regression(prometheus_url):
    errors = clustered(prometheus_url)
    assert errors.verdict == Verdict.PASS, errors.reason
    spread = errors.evidence["dispersion"]
    assert spread["source"] == "history"
    assert 10 < spread["value"] < 40  # clusters of 20: E[C^2]/E[C] = 20
    assert "dispersion" in errors.reason and "stable v1's 1h before" in errors.reason
    assert any("[10s]" in query for query in errors.queries)  # the history query is recorded


def test_counting_clustered_errors_as_independent_blames_the_canary(prometheus_url):
    errors = clustered(prometheus_url, error_dispersion=1)
    assert errors.verdict == Verdict.FAIL
    assert errors.evidence["dispersion"]["source"] == "configured"


def test_without_enough_history_a_cautious_dispersion_is_assumed_and_said(prometheus_url):
    errors = by_judge(analyze(prometheus_url, "healthy", canary_weight=25))[
        "error-rate-sequential"]
    spread = errors.evidence["dispersion"]
    assert spread["source"] == "fallback"
    assert spread["value"] == sequential.FALLBACK_DISPERSION
    assert "too thin" in errors.reason


def test_a_step_that_cannot_be_decided_in_its_budget_is_inconclusive_early(prometheus_url):
    settings = m.PrometheusSettings(prometheus_url)
    selector = m.MetricsSelector("sparse", "shop")
    decision = analysis.run_analysis(settings, selector, AnalysisSettings(canary_weight=25),
                                     end=END, deadline=END + 300)
    errors = by_judge(decision)["error-rate-sequential"]
    assert errors.verdict == Verdict.INCONCLUSIVE
    assert errors.evidence["decidable_in_budget"] is False
    assert "cannot decide in the 300s left" in errors.reason
    assert "canary requests/s" in errors.reason
    busy = analysis.run_analysis(settings, m.MetricsSelector("healthy", "shop"),
                                 AnalysisSettings(canary_weight=25), end=END,
                                 deadline=END + 300)
    assert "decidable_in_budget" not in by_judge(busy)["error-rate-sequential"].evidence


def test_only_the_judges_asked_for_run(prometheus_url):
    decision = analyze(prometheus_url, "healthy", judges=["success-rate"])
    assert [j.judge for j in decision.judgements] == ["success-rate"]


# ---------------------------------------------------------------- injection safety


def test_a_service_name_with_quotes_and_braces_is_refused_before_any_query():
    with pytest.raises(BadInput) as refused:
        analysis.run_analysis(
            m.PrometheusSettings(nobody_listening()),
            m.MetricsSelector('reviews"} or vector(1) #', "shop"), AnalysisSettings(),
            end=END)
    assert refused.value.field == "service"


def test_label_value_with_quotes_and_braces_is_escaped_and_matches_only_itself(prometheus_url):
    template = ('sum(increase(shop_checkout_total{service="$service",version="$version",'
                'route="$route"}[$window]))')
    own = m.CustomMetric("weird-route", template, max_value=1e9, params={"route": WEIRD_ROUTE})
    foreign = m.CustomMetric("injected", template, max_value=1e9,
                             params={"route": '/checkout"} or vector(1) #'})
    decision = analyze(prometheus_url, "healthy", judges=["success-rate"],
                       custom_metrics=[own, foreign])
    found = by_judge(decision)
    assert found["custom:weird-route"].values["value"] == pytest.approx(
        WEIRD_ROUTE_PER_STEP * 60)  # one version's 3 per 10 s over 10 minutes
    assert found["custom:injected"].verdict == Verdict.INCONCLUSIVE
    assert "has no series" in found["custom:injected"].reason
    assert decision.verdict == Verdict.INCONCLUSIVE


# ---------------------------------------------------------------- configuration


def test_config_round_trips_through_yaml():
    config = AnalysisSettings(window="5m", canary_weight=10, custom_metrics=[CHECKOUT])
    again = AnalysisSettings.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"window": "1m", "interval": "2m"}, "interval"),
        ({"window": "ten minutes"}, "window"),
        ({"judges": ["kayenta"]}, "judges"),
        ({"min_success_rate": 101}, "min_success_rate"),
        ({"canary_weight": 100}, "canary_weight"),
        ({"compare_metrics": [{"name": "latency-p95"}]}, "compare_metrics.name"),
        ({"custom_metrics": [{"name": "x", "query": "up"}]}, "custom_metrics.x.min_value"),
        ({"treshold": 1}, "treshold"),
    ],
)
def test_bad_config_is_refused_naming_the_field(data, field_name):
    with pytest.raises(BadInput) as refused:
        AnalysisSettings.from_dict(data)
    assert refused.value.field == field_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-11-14T22:13:20Z", END),
        ("2023-11-14T23:13:20+01:00", END),
        ("1700000000", END),
        ("1700000000.5", END + 0.5),
    ],
)
def test_at_accepts_rfc3339_and_unix_seconds(text, expected):
    assert analysis.parse_time(text) == expected


@pytest.mark.parametrize("text", ["2023-11-14T22:13:20", "2023-11-14", "yesterday", "-5", "nan",
                                  "1e20", "99999999999999999999", "inf",
                                  "0001-01-01T00:00:00+01:00", "1969-12-31T23:59:59Z"])
def test_at_refuses_anything_else_naming_the_flag(text):
    with pytest.raises(BadInput) as refused:
        analysis.parse_time(text)
    assert refused.value.field == "--at"


# ---------------------------------------------------------------- the CLI


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    analysis.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("verdict", "code"), [
    (Verdict.PASS, ExitCode.OK), (Verdict.FAIL, ExitCode.FAILED),
    (Verdict.INCONCLUSIVE, ExitCode.INCONCLUSIVE),
])
def test_each_verdict_has_its_exit_code(verdict, code):
    assert analysis.exit_code(verdict) is code


def test_cli_prints_a_table_per_judge_and_exits_0_on_pass(prometheus_url, capsys):
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", prometheus_url,
                            "--at", "2023-11-14T22:13:20Z", "--canary-weight", "25"))
    out = capsys.readouterr().out
    assert code == 0
    assert "success-rate: PASS (critical, required)" in out
    assert "  thresholds  min_success_rate=99" in out
    assert out.rstrip().splitlines()[-1].startswith("decision: PASS \u2014 all required judges")


def test_cli_exits_1_on_fail_and_json_output_is_the_decision(prometheus_url, capsys):
    code = analysis.run(cli("errors", "-n", "shop", "--prometheus", prometheus_url,
                            "--at", str(END), "--output", "json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["verdict"] == "FAIL"
    assert judges.Decision.from_dict(data).verdict == Verdict.FAIL


def test_cli_exits_3_when_inconclusive(prometheus_url, capsys):
    assert analysis.run(cli("sparse", "-n", "shop", "--prometheus", prometheus_url,
                            "--at", str(END))) == 3
    assert "decision: INCONCLUSIVE" in capsys.readouterr().out


def test_cli_exits_3_with_the_reason_when_prometheus_is_down(capsys):
    url = nobody_listening()
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", url, "--at", str(END)))
    assert code == 3
    assert f"Prometheus at {url} is unreachable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--at", "last tuesday"], "--at"),
        (["--at", "1e20"], "--at"),
        (["--window", "10 minutes"], "window"),
        (["--canary", "v2 beta"], "canary"),
        (["--header", "no-equals-sign"], "--header"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_flag(argv, named, capsys):
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", nobody_listening(), *argv))
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"canarykit analyze: {named}:")


@pytest.mark.parametrize(("text", "problem"), [
    ("steps: 1\nwindow: 5m\nwindow: 10m\n", "duplicate key window at line 3"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\n"
     "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e]\n"
     "g: [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n", "alias"),
    ("window: " + "[" * 500 + "]" * 500 + "\n", "nesting"),
    ("judges: [\n", "not valid YAML"),
])
def test_cli_refuses_a_hostile_config_file_with_exit_2_and_one_line(tmp_path, capsys, text,
                                                                    problem):
    config = tmp_path / "analysis.yaml"
    config.write_text(text)
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", nobody_listening(),
                            "--config", str(config)))
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2 and line.startswith("canarykit analyze: --config: ") and problem in line


def test_cli_refuses_an_injected_service_name_with_exit_2(capsys):
    code = analysis.run(cli('reviews"} or vector(1) #', "-n", "shop",
                            "--prometheus", nobody_listening()))
    assert code == 2
    assert "service: must be a DNS-1123 label" in capsys.readouterr().err


def test_cli_reads_thresholds_and_custom_metrics_from_a_config_file(
    prometheus_url, tmp_path, capsys
):
    config = AnalysisSettings(custom_metrics=[CHECKOUT], judges=["success-rate"]).to_dict(CLI)
    config["custom_metrics"][0]["min_value"] = 0.99  # the healthy canary's checkouts are ~97%
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump(config))
    code = analysis.run(cli("healthy", "-n", "shop", "--prometheus", prometheus_url,
                            "--at", str(END), "--config", str(path), "--output", "json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert [j["judge"] for j in data["judgements"]] == ["success-rate", "custom:checkout-success"]


def test_default_end_is_now(prometheus_url):
    before = datetime.now(UTC).strftime("%Y-%m-%d")
    decision = analysis.run_analysis(m.PrometheusSettings(prometheus_url),
                                     m.MetricsSelector("healthy", "shop"),
                                     AnalysisSettings())
    after = datetime.now(UTC).strftime("%Y-%m-%d")
    assert decision.verdict == Verdict.INCONCLUSIVE  # the synthetic data end in 2023
    assert before in decision.reason or after in decision.reason


def test_custom_metrics_can_be_compared_interval_by_interval(prometheus_url):
    decision = analyze(
        prometheus_url, "errors", judges=["mann-whitney"], custom_metrics=[CHECKOUT],
        compare_metrics=[judges.CompareMetric("checkout-success", direction="decrease")])
    compared = by_judge(decision)["mann-whitney"]
    assert compared.values["classifications"] == {"checkout-success": "Low"}
    assert compared.verdict == Verdict.FAIL
    assert any('version="v1"' in q for q in compared.queries)
    assert any('version="v2"' in q for q in compared.queries)
    assert all("[60s]" in q for q in compared.queries)
