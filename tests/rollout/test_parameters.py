"""Runbook parameters declared once; the notebooks are rendered from the declarations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from canarykit.analysis.settings import AnalysisSettings
from canarykit.core.errors import BadInput
from canarykit.rollout import parameters

RUNBOOKS = Path(__file__).resolve().parents[2] / "canarykit" / "runbooks"


def test_every_runbook_notebook_matches_its_declaration():
    stale = parameters.stale_runbooks(RUNBOOKS)
    assert stale == [], ("regenerate with: python -m canarykit.rollout.parameters --write; "
                         f"stale: {stale}")


def test_every_notebook_is_declared_and_every_declaration_has_a_notebook():
    assert {p.stem for p in RUNBOOKS.glob("*.ipynb")} == set(parameters.DECLARED)


@pytest.mark.parametrize("name", sorted(parameters.DECLARED))
def test_the_notebooks_are_tidy_nbformat_4_without_outputs(name):
    notebook = json.loads((RUNBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
    assert (notebook["nbformat"], notebook["metadata"]["kernelspec"]["name"]) == (4, "python3")
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    code = "".join(c for cell in notebook["cells"] for c in cell["source"])
    assert f'parameters.given_parameters("{name}"' in code


def test_a_changed_notebook_is_reported_and_rewritten(tmp_path):
    for path in RUNBOOKS.glob("*.ipynb"):
        shutil.copy(path, tmp_path / path.name)
    notebook = tmp_path / "analyze.ipynb"
    notebook.write_text(notebook.read_text().replace('window: str = \\"10m\\"',
                                                     'window: str = \\"1m\\"'))
    preflight = tmp_path / "preflight.ipynb"
    preflight.write_text(preflight.read_text().replace("- `namespace`", "- `name_space`"))
    assert parameters.stale_runbooks(tmp_path) == ["preflight", "analyze"]
    assert parameters.stale_runbooks(tmp_path, write=True) == ["preflight", "analyze"]
    assert parameters.stale_runbooks(tmp_path) == []
    assert notebook.read_text() == (RUNBOOKS / "analyze.ipynb").read_text()


def test_the_parameters_cell_and_the_list_say_the_same_for_each_parameter():
    cell = parameters.parameters_cell("rollback").splitlines()
    listed = parameters.parameter_list("rollback").splitlines()
    assert cell[-1] == 'reason: str = ""  # why, for the record (e.g. the failed analysis)'
    assert listed[-1] == ('- `reason` (str, default `""`): why, for the record '
                          '(e.g. the failed analysis)')
    assert len(cell) == len(listed) == len(parameters.RUNBOOK_PARAMETERS["rollback"])


@pytest.mark.parametrize("name", sorted(parameters.DECLARED))
def test_parameter_lines_fit_the_line_length(name):
    assert all(len(line) <= 100 for line in parameters.parameters_cell(name).splitlines())


def test_the_common_parameters_say_how_the_cluster_and_prometheus_are_found():
    helps = {p.name: p.help for p in parameters.COMMON}
    assert "$KUBECONFIG, ~/.kube/config or the in-cluster config (as kubectl)" in helps[
        "kubeconfig"]
    assert "empty: $CANARYKIT_PROMETHEUS_URL" in helps["prometheus_url"]


def test_analysis_parameters_come_from_the_settings_model():
    declared = {p.name: p for p in parameters.DECLARED["analyze"]}
    defaults = AnalysisSettings()
    assert declared["window"].default == defaults.window
    assert declared["min_requests"].default == defaults.min_requests
    assert declared["judges"].default == ",".join(defaults.judges)
    assert declared["judges"].type == "str"
    assert "until_verdict" not in parameters.RUNBOOK_PARAMETERS["shadow"]


def test_a_plan_passes_the_runbook_its_analysis_settings_as_parameters():
    settings = AnalysisSettings(window="30s", interval="5s", judges=["latency"])
    values = parameters.analysis_values("shadow", settings)
    assert set(values) <= set(parameters.RUNBOOK_PARAMETERS["shadow"])
    assert values["judges"] == "latency" and values["window"] == "30s"
    assert parameters.analysis_settings("shadow", values) == settings


def test_an_underscore_in_front_does_not_hide_a_credential_or_an_unknown_parameter():
    namespace = {"_": 1, "_i3": "x", "_oh": {}, "In": [], "_api_key": "ghp_" + "a" * 36}
    with pytest.raises(BadInput) as secret:
        parameters.given_parameters("analyze", namespace, set())
    assert "ghp_" not in str(secret.value)
    with pytest.raises(BadInput) as unknown:
        parameters.given_parameters("analyze", {"_colour": "x" * 500}, set())
    assert unknown.value.field == "_colour" and len(str(unknown.value)) < 600
    assert parameters.given_parameters("analyze", {"_": 1, "__": 2, "_i12": "", "_12": 3,
                                                    "__annotations__": {}}, set()) == {}


@pytest.mark.parametrize("name", sorted(parameters.DECLARED))
def test_every_parameter_reaches_the_cells_after_the_parameters_cell(name):
    """A parameter the notebook never passes on would be accepted and silently ignored."""
    notebook = json.loads((parameters.packaged_runbooks() / f"{name}.ipynb").read_text())
    cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"
             and "parameters" not in cell.get("metadata", {}).get("tags", [])]
    code = "\n".join("".join(cell["source"]) for cell in cells)
    passed_whole = f'own_values("{name}", globals())' in code or "result.parameters" in code
    for parameter in parameters.DECLARED[name]:
        common = parameter in parameters.COMMON
        if name == "post-rollout-analysis" or passed_whole and not common:
            continue
        assert f"{parameter.name}={parameter.name}" in code or (
            common and name == "post-rollout-analysis"), f"{name}: {parameter.name}"


def test_no_parameter_help_has_an_equals_sign_papermill_cannot_parse():
    for declared in parameters.DECLARED.values():
        for parameter in declared:
            assert "=" not in parameter.help, parameter
