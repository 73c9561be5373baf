import json

import nbformat
import papermill
import pytest

from canarykit.core.errors import BadInput
from canarykit.rollout import runbook


@pytest.mark.parametrize(
    "parameters",
    [
        {"token": "abc123"},
        {"prometheus_password": "hunter2"},
        {"note": "Bearer abcdefghijkl"},
        {"prometheus_url": "http://admin:hunter2@127.0.0.1:9090"},
        {"kubeconfig_content": "users:\n- user:\n    token: abc"},
        {"prometheus": {"api_key": "k-123"}},
    ],
)
def test_credential_looking_parameters_are_refused_without_echoing_them(parameters):
    with pytest.raises(BadInput) as refused:
        runbook.check_parameters(parameters)
    assert "<hidden>" in str(refused.value)
    for value in parameters.values():
        if isinstance(value, str):
            assert value not in str(refused.value)


def test_names_of_variables_and_files_holding_credentials_are_fine():
    parameters = {"bearer_token_env": "PROM_TOKEN", "token_file": "/run/token", "canary_weight": 25}
    assert runbook.check_parameters(parameters) == parameters


def _notebook(source: str):
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("weight: int = 10  # help: canary weight")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    return nb


@pytest.mark.lab
def test_a_recorded_result_is_read_back_from_the_executed_notebook(tmp_path):
    source = tmp_path / "in.ipynb"
    nbformat.write(
        _notebook(
            "from canarykit.rollout import runbook\n"
            "result = runbook.new_result('shift-traffic', {'weight': weight})\n"
            "result.weights = {'v1': 100 - weight, 'v2': weight}\n"
            "result.outcome = runbook.Outcome.OK\n"
            "runbook.record(result)\n"
        ),
        source,
    )
    executed = tmp_path / "out.ipynb"
    papermill.execute_notebook(
        str(source), str(executed), parameters={"weight": 25}, progress_bar=False
    )
    result = runbook.read_result(executed)
    assert result.runbook == "shift-traffic"
    assert result.parameters == {"weight": 25}
    assert result.weights == {"v1": 75, "v2": 25}
    assert result.outcome == "ok" and result.finished
    assert runbook.read_notebook(executed)[1] is None


@pytest.mark.lab
def test_a_failed_run_has_no_result_and_its_error_is_read_back(tmp_path):
    source = tmp_path / "in.ipynb"
    nbformat.write(_notebook("raise ValueError('weight: must be 0..100 (got 130)')"), source)
    executed = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(source), str(executed), progress_bar=False)
    assert runbook.read_result(executed) is None
    assert runbook.read_notebook(executed)[1] == "ValueError: weight: must be 0..100 (got 130)"


def test_error_text_keeps_canarykits_own_message_and_only_the_first_line_of_others():
    own = BadInput("weight", 130, "must be 0..100\nsee the plan")
    assert runbook.error_text(own) == f"BadInput: {own}"
    assert runbook.error_text(RuntimeError("boom\nTraceback ...")) == "RuntimeError: boom"
    assert runbook.error_text(RuntimeError("")) == "RuntimeError: "
    assert len(runbook.error_text(RuntimeError("x" * 2000))) == len("RuntimeError: ") + 500


def test_a_result_round_trips_through_its_recorded_json():
    result = runbook.new_result("analyze", {"service": "reviews"})
    result.decision = {"verdict": "PASS", "reason": "every required judge passed"}
    result.weights, result.outcome = {"v1": 75, "v2": 25}, runbook.Outcome.OK
    recorded = json.loads(json.dumps(result.to_dict()))
    assert recorded["outcome"] == "ok"
    again = runbook.RunbookResult.from_dict(recorded)
    assert again == result
    assert (again.verdict, again.reason) == ("PASS", "every required judge passed")


def test_a_result_from_another_version_keeps_what_it_knows():
    again = runbook.RunbookResult.from_dict(
        {"runbook": "promote", "parameters": {}, "outcome": "maybe", "future_field": 1})
    assert again.outcome is runbook.Outcome.ERROR  # unknown outcome: never taken as ok
    assert again.changes == [] and again.verdict is None


def test_every_credential_parameter_is_found_and_a_credential_name_is_never_repeated():
    token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    found = runbook.credential_parameters({
        "service": "reviews", "api_key": "k", "urls": ["http://ok", "http://u:p@h"],
        token: 1})
    assert [(name, field) for name, field, _ in found] == [
        ("api_key", "api_key"), ("urls", "urls[1]"), (token, "<a parameter name>")]
    with pytest.raises(BadInput) as refused:
        runbook.check_parameters({token: 1})
    assert token not in str(refused.value)


def test_outside_a_notebook_kernel_a_refusal_says_nothing_of_papermill():
    with pytest.raises(BadInput) as refused:
        runbook.check_parameters({"api_key": "k-123"})
    assert str(refused.value) == ("api_key: looks like a credential; pass the name of an "
                                  "environment variable or file instead (e.g. api_key_env) "
                                  "(got '<hidden>')")


def test_a_recorded_result_keeps_no_url_userinfo(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda data, raw: shown.append(data))
    result = runbook.new_result("analyze", {"service": "reviews"})
    result.notes.append("Prometheus at http://reader:hunter2@prom:9090 answers")
    result.decision = {"verdict": "PASS", "reason": "see https://u:hunter2@grafana"}
    runbook.record(result)
    assert "hunter2" not in json.dumps(shown)
    assert shown[0][runbook.RESULT_MIME]["notes"] == ["Prometheus at http://prom:9090 answers"]


def test_error_text_keeps_no_url_userinfo():
    assert runbook.error_text(RuntimeError("GET http://a:hunter2@h failed")) == (
        "RuntimeError: GET http://h failed")


@pytest.mark.parametrize("text", [
    '{"cells": "none"}', '{"cells": [1, {"cell_type": "code", "outputs": {"a": 1}}]}',
    '{"cells": [{"cell_type": "code", "outputs": [2, {"data": []}]}]}',
])
def test_a_notebook_of_the_wrong_shape_has_no_result(text):
    assert runbook.parse_notebook(text, "x.ipynb") == (None, None)


def test_a_notebook_nested_too_deeply_is_refused_in_one_line():
    with pytest.raises(BadInput, match="nested too deeply"):
        runbook.parse_notebook("[" * 100_000 + "]" * 100_000, "x.ipynb")


def test_a_recorded_result_read_back_keeps_no_url_userinfo():
    output = {"output_type": "display_data", "data": {runbook.RESULT_MIME: {
        "runbook": "analyze", "notes": ["http://u:hunter2@prom"]}}}
    text = json.dumps({"cells": [{"cell_type": "code", "outputs": [output]}]})
    result, _ = runbook.parse_notebook(text, "x.ipynb")
    assert result.notes == ["http://prom"]
