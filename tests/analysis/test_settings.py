"""The analysis settings: one model for the plan, `canarykit analyze` and the runbooks."""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from canarykit.analysis import metrics as m
from canarykit.analysis import step
from canarykit.analysis.judges import CompareMetric
from canarykit.analysis.settings import CLI, PLAN, RUNBOOK, AnalysisSettings, setting_names
from canarykit.core.errors import BadInput, ExitCode
from canarykit.rollout import parameters, plan

RUNBOOKS = Path(__file__).resolve().parents[2] / "canarykit" / "runbooks"
DEFAULTS = AnalysisSettings()


def cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    step.add_arguments(parser)
    return parser.parse_args(["reviews", "-n", "default", "--prometheus", "http://p:9090", *argv])


def cell_values(runbook: str) -> dict:
    """The defaults a runbook's parameters cell assigns."""
    notebook = json.loads((RUNBOOKS / f"{runbook}.ipynb").read_text(encoding="utf-8"))
    cell = next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {node.target.id: ast.literal_eval(node.value) for node in tree.body}


# ---------------------------------------------------------------- one set of defaults


def test_every_setting_has_help_a_check_and_a_place():
    for item in fields(AnalysisSettings):
        assert item.metadata["help"], item.name
        assert callable(item.metadata["check"]), item.name
        assert set(item.metadata["where"]) <= {CLI, PLAN, RUNBOOK}, item.name
    assert AnalysisSettings().validate() == DEFAULTS


def test_a_plan_without_analysis_settings_judges_with_the_defaults():
    loaded = plan.parse_plan({"service": "reviews", "steps": [{"weight": 5}]})
    assert loaded.analysis == DEFAULTS
    assert loaded.steps[0].analysis == DEFAULTS


def test_the_cli_without_flags_judges_with_the_defaults():
    assert step.build_inputs(cli())[2] == DEFAULTS


def test_the_cli_help_shows_each_default():
    parser = argparse.ArgumentParser(prog="canarykit analyze")
    step.add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--window WINDOW analysis window" in text and "(default 10m)" in text
    assert "(default success-rate,latency,sequential)" in text
    assert f"(default {DEFAULTS.min_requests})" in text


@pytest.mark.parametrize("runbook", ["analyze", "shadow"])
def test_the_runbook_parameter_cells_hold_the_same_defaults(runbook):
    values = cell_values(runbook)
    expected = {name: parameters.runbook_form(name, value)
                for name, value in DEFAULTS.to_dict(RUNBOOK).items()}
    shared = {name: value for name, value in expected.items() if name in values}
    assert shared == {name: values[name] for name in shared}
    assert set(setting_names(CLI)) & set(setting_names(RUNBOOK)) <= set(shared)
    if runbook == "analyze":
        assert {"until_verdict", "check_every", "max_duration"} <= set(shared)
    else:  # the shadow runbook judges once
        assert "until_verdict" not in values


# ---------------------------------------------------------------- loading and dumping


def test_settings_round_trip_through_yaml():
    checkout = m.CustomMetric("checkout", "sum(rate(checkouts[$window]))", min_value=1.0)
    settings = AnalysisSettings(
        window="5m", interval="30s", judges=["latency", "mann-whitney"], min_requests=20,
        canary_weight=10.0, until_verdict=True, check_every="10s",
        compare_metrics=[CompareMetric("checkout", weight=2.0)], custom_metrics=[checkout])
    again = AnalysisSettings.from_dict(yaml.safe_load(yaml.safe_dump(settings.to_dict())))
    assert again == settings


def test_a_dump_for_a_place_holds_only_the_settings_that_apply_there():
    assert "canary_weight" not in DEFAULTS.to_dict(PLAN)
    assert "until_verdict" not in DEFAULTS.to_dict(CLI)
    assert AnalysisSettings.from_dict(DEFAULTS.to_dict(PLAN), where=PLAN) == DEFAULTS


def test_loading_applies_changes_to_a_base_and_accepts_yaml_numbers():
    base = AnalysisSettings(window="30s", interval="5s")
    loaded = AnalysisSettings.from_dict({"min_success_rate": 98, "judges": "latency,sequential"},
                                        base=base)
    assert (loaded.window, loaded.min_success_rate, loaded.judges) == (
        "30s", 98.0, ["latency", "sequential"])
    assert isinstance(loaded.min_success_rate, float)


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump({"window": "5m", "min_requests": 10}))
    settings = step.build_inputs(cli("--config", str(path), "--min-requests", "20",
                                     "--judges", "latency"))[2]
    assert (settings.window, settings.min_requests, settings.judges) == ("5m", 20, ["latency"])


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"window": "ten minutes"}, "window", "ten minutes"),
    ({"window": "-1m"}, "window", "-1m"),
    ({"interval": 60}, "interval", 60),
    ({"window": "1m", "interval": "2m"}, "interval", "2m"),
    ({"judges": ["kayenta"]}, "judges", "kayenta"),
    ({"judges": []}, "judges", []),
    ({"judges": ["latency", "latency"]}, "judges", "latency"),
    ({"min_success_rate": 130}, "min_success_rate", 130),
    ({"min_success_rate": "99"}, "min_success_rate", "99"),
    ({"max_p99_ms": 0}, "max_p99_ms", 0),
    ({"min_requests": -5}, "min_requests", -5),
    ({"min_requests": 2.5}, "min_requests", 2.5),
    ({"alpha": 1}, "alpha", 1),
    ({"error_tolerance": -0.1}, "error_tolerance", -0.1),
    ({"latency_tolerance": 2}, "latency_tolerance", 2),
    ({"confidence": 0}, "confidence", 0),
    ({"pass_score": 101}, "pass_score", 101),
    ({"pass_score": 70, "marginal_score": 80}, "marginal_score", 80),
    ({"min_samples": 0}, "min_samples", 0),
    ({"canary_weight": 130}, "canary_weight", 130),
    ({"until_verdict": "yes"}, "until_verdict", "yes"),
    ({"check_every": "soon"}, "check_every", "soon"),
    ({"until_verdict": True, "max_duration": "1m"}, "max_duration", "1m"),
    ({"compare_metrics": [{"name": "latency-p95"}]}, "compare_metrics.name", "latency-p95"),
    ({"compare_metrics": [{"name": "success-rate", "weight": -1}]},
     "compare_metrics.success-rate.weight", -1),
    ({"compare_metrics": [{"name": "success-rate", "colour": "red"}]},
     "compare_metrics.colour", "red"),
    ({"custom_metrics": [{"name": "x", "query": "up"}]}, "custom_metrics.x.min_value", None),
    ({"custom_metrics": "up"}, "custom_metrics", "up"),
    ({"custom_metrics": [{"name": "x", "max_value": 1}]}, "custom_metrics.x.query", None),
    ({"compare_metrics": [{"direction": "increase"}]}, "compare_metrics.name", None),
    ({"treshold": 1}, "treshold", 1),
])
def test_each_bad_value_is_refused_naming_the_field_and_the_value(data, field, value):
    with pytest.raises(BadInput) as refused:
        AnalysisSettings.from_dict(data)
    assert (refused.value.field, refused.value.value) == (field, value)
    assert str(refused.value).startswith(f"{field}: ")


def test_a_refusal_names_the_path_it_was_loaded_from():
    with pytest.raises(BadInput) as refused:
        AnalysisSettings.from_dict({"min_requests": 0}, path="steps[2].analysis")
    assert refused.value.field == "steps[2].analysis.min_requests"


def test_a_setting_that_does_not_apply_there_is_refused():
    with pytest.raises(BadInput) as refused:
        AnalysisSettings.from_dict({"custom_metrics": []}, where=PLAN)
    assert refused.value.field == "custom_metrics"
    assert "not an analysis setting of the plan" in str(refused.value)


def test_a_bad_flag_is_refused_naming_the_setting(capsys):
    assert step.run(cli("--min-success-rate", "130")) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.startswith("canarykit analyze: min_success_rate: ")


@pytest.mark.parametrize(("config", "named"), [
    ({"until_verdict": True}, "until_verdict: is not an analysis setting of the cli"),
    ({"custom_metrics": [{"name": "checkout", "min_value": 0.9}]},
     "custom_metrics.checkout.query: is required"),
])
def test_a_config_file_the_cli_cannot_use_is_refused_naming_the_field(config, named, tmp_path,
                                                                     capsys):
    path = tmp_path / "analysis.yaml"
    path.write_text(yaml.safe_dump(config))
    assert step.run(cli("--config", str(path))) == ExitCode.BAD_INPUT
    assert capsys.readouterr().err.startswith(f"canarykit analyze: {named}")


def test_the_cli_defaults_are_those_of_the_selector_and_connection_settings(monkeypatch):
    selector = m.MetricsSelector.__dataclass_fields__
    monkeypatch.setattr(selector["canary"], "default", "v3")
    monkeypatch.setattr(selector["reporter"], "default", "source")
    monkeypatch.setattr(m.PrometheusSettings.__dataclass_fields__["timeout_seconds"], "default",
                        7.5)
    settings, chosen = step.build_inputs(cli())[:2]
    assert (chosen.canary, chosen.reporter, settings.timeout_seconds) == ("v3", "source", 7.5)
    assert chosen.stable == m.MetricsSelector("reviews", "default").stable
