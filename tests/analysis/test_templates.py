"""Custom PromQL metrics of the plan (`analysis.metrics`) and dry-run judges: checked at load,
expanded safely, measured as one number, never deciding when dry-run."""

from __future__ import annotations

import argparse
import http.server
import itertools
import json
import threading
import types
import urllib.parse

import pytest
import yaml

from canarykit.analysis import judges, templates
from canarykit.analysis import metrics as m
from canarykit.analysis import step as analysis
from canarykit.analysis.judges import Decision, Judgement, Verdict
from canarykit.analysis.settings import AnalysisSettings
from canarykit.core.errors import BadInput, ExitCode
from canarykit.rollout import parameters, phases, plan
from tests.prometheus_fixture import END

ERRORS = ('sum(rate(istio_requests_total{ {{ selector }}, response_code=~"5.." }[{{ range }}]))'
          ' / sum(rate(istio_requests_total{ {{ selector }} }[{{ range }}]))')
VERSUS_STABLE = ('(sum(rate(istio_requests_total{ {{ selector }}, response_code=~"5.." }'
                 '[{{ range }}])) / sum(rate(istio_requests_total{ {{ selector }} }'
                 '[{{ range }}]))) / (sum(rate(istio_requests_total{ {{ stable_selector }}, '
                 'response_code=~"5.." }[{{ range }}])) / sum(rate(istio_requests_total'
                 '{ {{ stable_selector }} }[{{ range }}])))')
HOSTILE = 'a"} or vector(1) # \\"}\n{'  # quote, backslash, brace, comment sign, newline


def metric(**changes) -> dict:
    return {"name": "error-budget-burn", "query": ERRORS, "max": 0.01, **changes}


def refused(data: dict, **options) -> BadInput:
    with pytest.raises(BadInput) as caught:
        AnalysisSettings.from_dict(data, **options)
    return caught.value


# ---------------------------------------------------------------- checked at load


@pytest.mark.parametrize(("metrics", "field", "value"), [
    ("[{", "metrics", "[{"),
    (7, "metrics", 7),
    ([7], "metrics[0]", 7),
    ([metric(name="Error_Budget")], "metrics[0].name", "Error_Budget"),
    ([metric(name="a" * 64)], "metrics[0].name", "a" * 64),
    ([metric(), metric(max=1)], "metrics[1].name", "error-budget-burn"),
    ([{"name": "x", "max": 1}], "metrics[0].query", None),
    ([metric(query="")], "metrics[0].query", ""),
    ([metric(query="sum(rate(x{ {{ target }} }[5m]))")], "metrics[0].query", "{{ target }}"),
    ([metric(query="sum(rate(x{ {{ .Selector }} }[5m]))")], "metrics[0].query",
     "{{ .Selector }}"),
    ([metric(query="sum(rate(x{ {{ selector } }[5m]))")], "metrics[0].query", "{{"),
    ([metric(query="sum(rate(x{ {{ selector }} }[5m])")], "metrics[0].query", "("),
    ([metric(query="sum(rate(x{ {{ selector }} }[5m])))")], "metrics[0].query", ")"),
    ([metric(query="sum(rate(x{ {{ selector }} ][5m]))")], "metrics[0].query", "]"),
    ([metric(query='x{ {{ selector }}, a="b }')], "metrics[0].query", '"'),
    ([metric(query="x{{ selector }}")], "metrics[0].query", "{{ selector }}"),
    ([metric(query="rate(x{ {{ selector }} }[5m]) * {{ range }}")], "metrics[0].query",
     "{{ range }}"),
    ([metric(query='label_replace(x, "a", "{{ selector }}", "b", "c")')], "metrics[0].query",
     "{{ selector }}"),
    ([metric(max=None)], "metrics[0].max", None),
    ([metric(max="0.01")], "metrics[0].max", "0.01"),
    ([metric(max=float("nan"))], "metrics[0].max", "nan"),
    ([metric(min=2, max=1)], "metrics[0].min", 2.0),
    ([metric(dry_run="yes")], "metrics[0].dry_run", "yes"),
    ([metric(colour="red")], "metrics[0].colour", "red"),
])
def test_each_bad_metric_is_refused_naming_its_field(metrics, field, value):
    error = refused({"metrics": metrics})
    shown = "nan" if isinstance(error.value, float) and error.value != error.value \
        else error.value
    assert (error.field, shown) == (field, value)
    assert str(error).startswith(f"{field}: ")


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"dry_run_judges": ["vibes"]}, "dry_run_judges", "vibes"),
    ({"dry_run_judges": ["latency", "latency"]}, "dry_run_judges", "latency"),
    ({"dry_run_judges": "mann-whitney"}, "dry_run_judges", "mann-whitney"),  # not run
    ({"dry_run_judges": 1}, "dry_run_judges", 1),
    ({"judges": "latency", "dry_run_judges": "latency"}, "dry_run_judges", ["latency"]),
    ({"judges": "latency", "dry_run_judges": "latency", "metrics": [metric(dry_run=True)]},
     "dry_run_judges", ["latency"]),
])
def test_bad_dry_run_judges_are_refused_naming_them(data, field, value):
    error = refused(data)
    assert (error.field, error.value) == (field, value)


def test_nothing_deciding_is_refused_but_one_deciding_metric_is_enough():
    assert "nothing would decide" in str(refused({"judges": "latency",
                                                  "dry_run_judges": "latency"}))
    settings = AnalysisSettings.from_dict({"judges": "latency", "dry_run_judges": "latency",
                                           "metrics": [metric()]})
    assert settings.deciding() == ["metric:error-budget-burn"]


@pytest.mark.parametrize(("raw", "path"), [
    ({"analysis": {"metrics": [metric(query="x{ {{ target }} }")]}},
     "analysis.metrics[0].query"),
    ({"steps": [{"weight": 5}, {"weight": 10}, {"weight": 20, "analysis": {
        "metrics": [metric(), metric(name="b", query="up{")]}}]},
     "steps[2].analysis.metrics[1].query"),
    ({"analysis": {"dry_run_judges": ["vibes"]}}, "analysis.dry_run_judges"),
])
def test_a_plan_refuses_a_bad_metric_naming_its_path(raw, path):
    with pytest.raises(BadInput) as caught:
        plan.parse_plan({"service": "reviews", "steps": [{"weight": 5}], **raw})
    assert caught.value.field == path


def test_the_plan_passes_its_metrics_to_the_runbooks_as_json_they_read_back():
    loaded = plan.parse_plan({
        "service": "reviews",
        "analysis": {"metrics": [metric(), metric(name="slow", query=ERRORS, min=0.0,
                                                  dry_run=True)],
                     "dry_run_judges": ["latency"]},
        "steps": [{"shadow": {"percentage": 10}}, {"weight": 5}]})
    for spec in plan.expand(loaded):
        if spec.runbook in ("analyze", "shadow"):
            values = spec.parameters
            assert isinstance(values["metrics"], str) and values["dry_run_judges"] == "latency"
            given = parameters.given_parameters(spec.runbook, values, set())
            again = parameters.analysis_settings(spec.runbook, given)
            assert again.metrics == loaded.analysis.metrics
            assert again.dry_run_judges == ["latency"]


def test_a_runbook_takes_metrics_as_json_text_or_as_a_list():
    as_text = parameters.analysis_settings("analyze", {"metrics": json.dumps([metric()])})
    as_list = parameters.analysis_settings("analyze", {"metrics": [metric()]})
    assert as_text == as_list and as_text.metrics[0].max == 0.01
    assert parameters.analysis_settings("analyze", {"metrics": ""}).metrics == []


def test_the_metrics_round_trip_through_a_settings_dump():
    settings = AnalysisSettings.from_dict({"metrics": [metric(min=0, dry_run=True)],
                                           "dry_run_judges": "sequential"})
    assert AnalysisSettings.from_dict(settings.to_dict()) == settings
    assert settings.to_dict()["metrics"] == [{**metric(min=0.0, dry_run=True)}]


# ---------------------------------------------------------------- expansion and escaping


def outside_strings(query: str) -> tuple[str, list[str]]:
    """The query with each double-quoted PromQL string literal emptied, and the literals'
    values (escapes decoded): what a PromQL lexer sees."""
    text, values, index = [], [], 0
    while index < len(query):
        char = query[index]
        if char != '"':
            text.append(char)
            index += 1
            continue
        value, index = [], index + 1
        while query[index] != '"':
            if query[index] == "\\":
                index += 1
                value.append({"n": "\n", "\\": "\\", '"': '"'}[query[index]])
            else:
                value.append(query[index])
            index += 1
        text.append('""')
        values.append("".join(value))
        index += 1
    return "".join(text), values


def test_the_selectors_are_the_builtin_matchers_with_each_version():
    selector = m.MetricsSelector("reviews", "shop", stable="v1", canary="v2")
    query = templates.MetricTemplate("x", VERSUS_STABLE, max=2).render(selector,
                                                                        range_seconds=90)
    canary = selector.matchers() + ',destination_version="v2"'
    stable = selector.matchers() + ',destination_version="v1"'
    assert query == (VERSUS_STABLE.replace("{{ selector }}", canary)
                     .replace("{{ stable_selector }}", stable).replace("{{ range }}", "90s"))


def test_a_crafted_label_value_stays_inside_its_matcher():
    selector = m.MetricsSelector("reviews", "shop", extra_labels={"route": HOSTILE})
    query = templates.MetricTemplate("x", ERRORS, max=1).render(selector, range_seconds=600)
    skeleton, values = outside_strings(query)
    matchers = ('reporter="",destination_service_name="",destination_workload_namespace="",'
                'route="",destination_version=""')
    assert skeleton == ('sum(rate(istio_requests_total{ ' + matchers + ', response_code=~"" }'
                        '[600s])) / sum(rate(istio_requests_total{ ' + matchers + ' }[600s]))')
    assert values.count(HOSTILE) == 2  # the value, exactly, as the literal's content


def test_spacing_inside_a_placeholder_and_a_brace_around_it_are_fine():
    selector = m.MetricsSelector("reviews", "shop")
    query = templates.MetricTemplate("x", "sum(up{{{selector}}}[{{range}}])", max=1).render(
        selector, range_seconds=60)
    assert query == "sum(up{" + selector.matchers() + ',destination_version="v2"}[60s])'


def test_brackets_in_strings_and_comments_are_not_counted():
    query = 'sum(x{ {{ selector }}, path=~"/a/{id}(" }[{{ range }}]) # a comment ) ]\n'
    assert templates.check_query("q", query) == query


# ---------------------------------------------------------------- measuring


class Answer(http.server.BaseHTTPRequestHandler):
    """Prometheus answering every instant query with `result`; it keeps the queries."""

    result: list = []
    queries: list = []

    def do_GET(self):  # noqa: N802 - the http.server API
        asked = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        self.queries.append(asked.get("query", [""])[0])
        body = json.dumps({"status": "success",
                           "data": {"resultType": "vector", "result": self.result}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """(url, handler class): set the class's `result` to what the next query gets."""
    handler = type("Handler", (Answer,), {"result": [], "queries": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def sample(value: str, **labels) -> dict:
    return {"metric": labels, "value": [END, value]}


@pytest.mark.parametrize(("result", "verdict", "said"), [
    ([sample("0.002")], Verdict.PASS, "within"),
    ([sample("0.03")], Verdict.FAIL, "> maximum 0.01"),
    ([], Verdict.INCONCLUSIVE, "no data"),
    ([sample("NaN")], Verdict.INCONCLUSIVE, "not a number"),
    ([sample("0.002", a="1"), sample("0.002", a="2")], Verdict.INCONCLUSIVE, "2 series"),
])
def test_a_metric_is_one_number_within_its_limits(answering, result, verdict, said):
    url, handler = answering
    handler.result = result
    template = templates.MetricTemplate.from_dict(metric(min=0.001))
    selector = m.MetricsSelector("reviews", "shop")
    client = m.connect(m.PrometheusSettings(url))
    judgement = templates.measure(client, template, selector, window_seconds=300, at=END)
    assert judgement.judge == "metric:error-budget-burn" and judgement.verdict == verdict
    assert said in judgement.reason
    assert judgement.queries == handler.queries == [template.render(selector,
                                                                    range_seconds=300)]
    assert judgement.critical and judgement.required and not judgement.dry_run


def test_prometheus_unreachable_is_inconclusive_naming_it():
    template = templates.MetricTemplate.from_dict(metric())
    client = m.connect(m.PrometheusSettings("http://127.0.0.1:9", timeout_seconds=2))
    judgement = templates.measure(client, template, m.MetricsSelector("reviews", "shop"),
                                  window_seconds=60, at=END)
    assert judgement.verdict == Verdict.INCONCLUSIVE and "unreachable" in judgement.reason


# ---------------------------------------------------------------- dry-run never decides


def judgement(verdict: Verdict, *, critical=True, required=True, dry_run=False) -> Judgement:
    return Judgement("j", verdict, verdict.value, {}, {}, critical=critical, required=required,
                     dry_run=dry_run)


def test_dry_run_judgements_never_change_the_verdict():
    kinds = [judgement(v, critical=c, required=r)
             for v, c, r in itertools.product(list(Verdict), (True, False), (True, False))]
    for deciding in itertools.chain.from_iterable(
            itertools.combinations(kinds, n) for n in range(1, 3)):
        for verdict in Verdict:
            dry = judgement(verdict, dry_run=True)
            with_dry = judges.decide([*deciding, dry])
            assert with_dry.verdict == judges.decide(list(deciding)).verdict
            assert with_dry.judgements[-1] is dry  # recorded all the same
            assert f"dry-run (does not decide): j {verdict.value}" in with_dry.reason


def test_only_dry_run_judgements_are_inconclusive():
    decision = judges.decide([judgement(Verdict.PASS, dry_run=True)])
    assert decision.verdict == Verdict.INCONCLUSIVE
    assert "only dry-run judges" in decision.reason


def test_the_dry_run_mark_round_trips_and_is_left_out_when_unset():
    marked = judgement(Verdict.FAIL, dry_run=True)
    assert Judgement.from_dict(marked.to_dict()).dry_run
    assert "dry_run" not in judgement(Verdict.FAIL).to_dict()
    decision = Decision.from_dict(judges.decide([marked, judgement(Verdict.PASS)]).to_dict())
    assert [j.dry_run for j in decision.judgements] == [True, False]


def test_the_cli_text_says_which_judges_do_not_decide():
    text = analysis.format_text(judges.decide([judgement(Verdict.FAIL, dry_run=True),
                                               judgement(Verdict.PASS)]))
    assert "j: FAIL (dry-run, does not decide)" in text
    assert text.splitlines()[-1].startswith("decision: PASS")


# ---------------------------------------------------------------- through a real Prometheus


def analyze(url: str, service: str, **config) -> judges.Decision:
    return analysis.run_analysis(
        m.PrometheusSettings(url), m.MetricsSelector(service, "shop", **config.pop("select", {})),
        AnalysisSettings.from_dict({"judges": "success-rate,latency", **config}), end=END)


def by_judge(decision: judges.Decision) -> dict[str, judges.Judgement]:
    return {j.judge: j for j in decision.judgements}


def test_a_custom_metric_judges_the_canary_in_prometheus(prometheus_url):
    limits = [metric(max=0.02), metric(name="versus-stable", query=VERSUS_STABLE, max=3)]
    healthy = by_judge(analyze(prometheus_url, "healthy", metrics=limits))
    assert healthy["metric:error-budget-burn"].verdict == Verdict.PASS
    assert healthy["metric:error-budget-burn"].values["value"] == pytest.approx(0.005, abs=0.004)
    failing = analyze(prometheus_url, "errors", metrics=limits)
    found = by_judge(failing)
    assert found["metric:error-budget-burn"].values["value"] == pytest.approx(0.08, abs=0.02)
    assert found["metric:versus-stable"].values["value"] > 3  # 8 % against 0.5 %
    assert failing.verdict == Verdict.FAIL and "metric:versus-stable" in failing.reason


def test_dry_run_metrics_and_judges_are_measured_but_never_decide(prometheus_url):
    decision = analyze(prometheus_url, "errors", judges="latency,success-rate",
                       dry_run_judges="success-rate", metrics=[metric(dry_run=True)])
    found = by_judge(decision)
    assert found["success-rate"].verdict == Verdict.FAIL and found["success-rate"].dry_run
    assert found["metric:error-budget-burn"].verdict == Verdict.FAIL
    assert found["metric:error-budget-burn"].dry_run
    assert decision.verdict == Verdict.PASS  # the latency judge alone decides
    assert "dry-run (does not decide): success-rate FAIL, metric:error-budget-burn FAIL" \
        in decision.reason


INJECTION = 'x"} or vector(1) or up{a="'  # unescaped, the count would be a number


def test_a_crafted_label_value_selects_nothing_in_prometheus(prometheus_url):
    counted = metric(query="count(istio_requests_total{ {{ selector }} })", max=1e9)
    decision = analyze(prometheus_url, "healthy", metrics=[counted],
                       select={"extra_labels": {"destination_app": INJECTION}})
    found = by_judge(decision)["metric:error-budget-burn"]
    assert found.verdict == Verdict.INCONCLUSIVE and "no data" in found.reason
    assert decision.verdict == Verdict.INCONCLUSIVE  # never a PASS on missing data


def test_iterations_count_failed_checks_against_prometheus(prometheus_url, monkeypatch):
    class Clock:
        now = END - 6 * 60

        def time(self):
            return self.now

        def sleep(self, seconds):
            self.now += max(0.0, seconds)

    def run(service: str, **settings):
        monkeypatch.setattr(phases, "time", Clock())
        config = AnalysisSettings.from_dict({"window": "2m", "interval": "30s",
                                             "judges": "success-rate,latency",
                                             "min_requests": 50, **settings})
        checks: list[dict] = []
        decision, _, _ = phases._iterate(
            types.SimpleNamespace(prometheus=m.PrometheusSettings(prometheus_url)),
            None, m.MetricsSelector(service, "shop"), config, start=Clock.now,
            began=Clock.now, limit=120, check_every=30, segments=[], checks=checks)
        return decision, checks

    failing, checks = run("errors", iterations=3, threshold=2)
    assert failing.verdict == Verdict.FAIL
    assert [(c["verdict"], c["failed_checks"]) for c in checks] == [("FAIL", 1), ("FAIL", 2)]
    passing, checks = run("healthy", iterations=3, threshold=2,
                          metrics=[metric(max=0.05)])
    assert passing.verdict == Verdict.PASS and len(checks) == 3
    assert all(isinstance(c["metrics"]["metric:error-budget-burn"], float) for c in checks)


# ---------------------------------------------------------------- canarykit analyze


def cli(*argv: str):
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    analysis.add_arguments(parser)
    return parser.parse_args(["reviews", "-n", "default", "--prometheus", "http://p:9090", *argv])


def test_the_cli_takes_dry_run_judges_as_a_flag_and_metrics_from_its_config(tmp_path):
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump({"metrics": [metric(dry_run=True)]}))
    settings = analysis.build_inputs(cli("--config", str(path), "--dry-run-judges",
                                         "latency"))[2]
    assert settings.dry_run_judges == ["latency"]
    assert settings.metrics == [templates.MetricTemplate.from_dict(metric(dry_run=True))]
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    analysis.add_arguments(parser)
    assert "--dry-run-judges" in parser.format_help()
    assert "--metrics" not in parser.format_help()  # a list of mappings: --config only


def test_a_bad_metric_in_the_cli_config_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump({"metrics": [metric(query="x{ {{ target }} }")]}))
    assert analysis.run(cli("--config", str(path))) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("canarykit analyze: metrics[0].query: is not a placeholder")
    assert "{{ target }}" in err
