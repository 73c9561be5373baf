"""Every runbook executed through papermill against one running lab.

The lab's load generator sends about 50-80 requests/s (85% plain, 5% with the internal-user
header, 5% with the beta cookie, 5% sticky sessions), so there is real traffic to route, mirror
and judge. Each test starts from the seeded VirtualService and DestinationRule.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import papermill
import pytest

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import AUDIT_HEAD_ANNOTATION, ROLLOUT_ANNOTATION
from canarykit.lab import processes as lab
from canarykit.lab.processes import LabState
from canarykit.mesh import istio, traffic
from canarykit.rollout import driver, phases, runbook
from canarykit.rollout import target as rollout_target
from canarykit.rollout.parameters import RUNBOOK_PARAMETERS
from tests import release_fixture
from tests.lab_fixture import lab_state  # noqa: F401 - the module's lab

pytestmark = pytest.mark.lab  # every runbook through papermill kernels against a running lab

RUNBOOKS = driver.packaged_runbooks()
LOAD_RATE = 80  # requests/s asked of the load generator


@pytest.fixture(scope="module")
def running_lab(lab_state: LabState) -> Iterator[LabState]:  # noqa: F811
    """The module lab with steady load, named the way `canarykit lab up` tells a user to:
    $KUBECONFIG and $CANARYKIT_PROMETHEUS_URL, which the kernels inherit."""
    lab.set_rate(lab_state, LOAD_RATE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", lab_state.kubeconfig)
        patch.setenv(rollout_target.PROMETHEUS_URL_ENV, lab_state.prometheus_url)
        yield lab_state


@pytest.fixture
def seeded(running_lab: LabState) -> LabState:
    """The lab back at the seed: VirtualService, DestinationRule, behaviours, no rollout."""
    lab.reset(running_lab)
    return running_lab


@pytest.fixture
def audit_log(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def execute(name: str, tmp_path: Path, audit_log: Path, **parameters) -> Path:
    """Run runbooks/NAME.ipynb with papermill; the executed notebook's path."""
    executed = tmp_path / f"{name}-{len(list(tmp_path.glob('*.ipynb'))) + 1}.ipynb"
    if name != "post-rollout-analysis":
        parameters = {"audit_log": str(audit_log), **parameters}
    papermill.execute_notebook(str(RUNBOOKS / f"{name}.ipynb"), str(executed),
                               parameters=parameters, cwd=str(tmp_path), progress_bar=False,
                               kernel_name="python3")
    return executed


def ok_result(executed: Path) -> runbook.RunbookResult:
    result = runbook.read_result(executed)
    assert result is not None and result.outcome == "ok", result
    assert runbook.read_notebook(executed)[1] is None
    return result


def kube(state: LabState) -> cluster.Cluster:
    return cluster.connect(state.kubeconfig)


def objects(state: LabState) -> tuple[dict, dict]:
    connected = kube(state)
    return (cluster.find_virtual_service(connected, state.service),
            cluster.find_destination_rule(connected, state.service))


def versions(state: LabState) -> tuple[str, str]:
    vs, dr = objects(state)
    return vs["metadata"]["resourceVersion"], dr["metadata"]["resourceVersion"]


def in_process(state: LabState, audit_log: Path) -> rollout_target.Target:
    """A target for setting the scene without a notebook (the same functions)."""
    return phases.connect_target(service=state.service, namespace=state.namespace, stable="v1",
                                 canary="v2", kubeconfig=state.kubeconfig,
                                 prometheus_url=state.prometheus_url, audit_log=str(audit_log))


def scene(target: rollout_target.Target, name: str, function, **arguments) -> dict:
    result = runbook.new_result(name, arguments)
    function(target, result, **arguments)
    return result


def fresh_load_counts(state: LabState) -> None:
    """Count the load generator's answers afresh once Envoy serves the objects as they are
    (and requests on connections opened under the previous routes have finished)."""
    lab.wait_for_routing(state)
    time.sleep(1)
    lab.reset_load(state)


def routes(vs: dict) -> list[str]:
    return [route.get("name", "") for route in vs["spec"]["http"]]


def chain_verifies(audit_log: Path, vs: dict) -> bool:
    head = vs["metadata"]["annotations"][AUDIT_HEAD_ANNOTATION]
    return audit.verify_chain(audit_log, expected_heads={head}).ok


# ---------------------------------------------------------------- documentation


def _declared(name: str) -> list[tuple[str, str, str]]:
    notebook = nbformat.read(str(RUNBOOKS / f"{name}.ipynb"), as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    found = []
    for line in cell.source.splitlines():
        match = re.match(r"^(\w+): (\w+) = .*?  # (.+)$", line)
        assert match, f"{name}: parameter line without type or help: {line}"
        found.append(match.groups())
    return found


@pytest.mark.parametrize("name", sorted(RUNBOOK_PARAMETERS))
def test_papermill_help_lists_every_parameter_with_its_help(name):
    declared = _declared(name)
    assert [n for n, _, _ in declared] == list(RUNBOOK_PARAMETERS[name])
    shown = subprocess.run(
        [str(Path(sys.executable).parent / "papermill"), "--help-notebook",
         str(RUNBOOKS / f"{name}.ipynb")],
        capture_output=True, text=True, check=True).stdout
    flat = " ".join(shown.split())
    for parameter, kind, help_text in declared:
        assert f"{parameter}: {kind} (default" in flat
        assert " ".join(help_text.split()) in flat


@pytest.mark.parametrize("name", sorted(RUNBOOK_PARAMETERS))
def test_runbooks_are_saved_without_outputs_and_start_with_what_they_do(name):
    notebook = nbformat.read(str(RUNBOOKS / f"{name}.ipynb"), as_version=4)
    assert notebook.metadata.kernelspec.name == "python3"
    assert notebook.cells[0].cell_type == "markdown" and "## Parameters" in notebook.cells[0].source
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert code[-1].source == "runbook.record(result)"


# ---------------------------------------------------------------- the phases


def test_preflight_passes_on_the_healthy_lab_and_changes_nothing(seeded, tmp_path, audit_log):
    before = versions(seeded)
    result = ok_result(execute("preflight", tmp_path, audit_log, baseline_window="20s"))
    decision = result.decision
    assert decision["verdict"] == "PASS", decision["reason"]
    assert {j["judge"] for j in decision["judgements"]} == {
        "istio-objects", "rollout", "subsets", "prometheus", "baseline-success-rate"}
    baseline = next(j for j in decision["judgements"] if j["judge"] == "baseline-success-rate")
    # Prometheus's extrapolated increase() sums may leave float noise (99.99999999999999).
    assert baseline["values"]["requests"] > 100
    assert baseline["values"]["success_rate"] == pytest.approx(100, abs=1e-9)
    assert result.weights == {"v1": 100, "v2": 0}
    assert {row["version"] for row in result.metrics} == {"v1"}
    assert result.changes == [] and versions(seeded) == before


def test_internal_canary_sends_only_header_and_cookie_users_to_the_canary(seeded, tmp_path,
                                                                           audit_log):
    result = ok_result(execute("internal-canary", tmp_path, audit_log))
    assert [c["operation"] for c in result.changes] == [
        "begin_rollout", "add_match_route", "add_match_route"]
    vs, _ = objects(seeded)
    assert routes(vs) == ["canary-internal-header", "canary-internal-cookie", "primary"]
    assert ROLLOUT_ANNOTATION in vs["metadata"]["annotations"]
    assert result.weights == {"v1": 100, "v2": 0}
    assert chain_verifies(audit_log, vs)
    fresh_load_counts(seeded)
    time.sleep(3)
    seen = lab.load_stats(seeded).by_kind_version
    assert set(seen["header"]) == {"v2"} and set(seen["cookie"]) == {"v2"}
    assert set(seen["plain"]) == {"v1"}


def test_shadow_judges_mirrored_traffic_without_users_seeing_the_canary(seeded, tmp_path,
                                                                        audit_log):
    fresh_load_counts(seeded)
    result = ok_result(execute("shadow", tmp_path, audit_log, percentage=50.0, window="15s",
                               interval="5s"))
    stats = lab.load_stats(seeded)
    assert set(stats.by_version) == {"v1"}, stats.by_kind_version  # users got stable answers
    assert result.decision["verdict"] == "PASS", result.decision["reason"]
    assert [c["operation"] for c in result.changes] == [
        "begin_rollout", "set_mirror", "clear_mirror"]
    mirrored = [row for row in result.metrics
                if row["version"] == "v2" and row["metric"] == "request-rate"]
    assert mirrored and max(row["value"] for row in mirrored) > 5
    vs, _ = objects(seeded)
    assert "mirror" not in vs["spec"]["http"][0]
    assert result.weights == {"v1": 100, "v2": 0}


def test_shift_traffic_sets_the_weight_and_audits_it(seeded, tmp_path, audit_log):
    result = ok_result(execute("shift-traffic", tmp_path, audit_log, canary_weight=25))
    assert result.weights == {"v1": 75, "v2": 25}
    vs, _ = objects(seeded)
    assert istio.subset_weights(vs["spec"]["http"][0]) == {"v1": 75, "v2": 25}
    change = result.changes[-1]
    assert change["operation"] == "set_canary_weight" and change["changed"]
    assert change["auditHash"] == audit.read_records(audit_log)[-1]["hash"]
    assert chain_verifies(audit_log, vs)


def test_analyze_passes_a_healthy_canary_chaining_evidence_across_weights(seeded, tmp_path,
                                                                          audit_log):
    target = in_process(seeded, audit_log)
    scene(target, "shift-traffic", phases.shift_traffic, canary_weight=10)
    time.sleep(9)
    scene(target, "shift-traffic", phases.shift_traffic, canary_weight=25)
    before = versions(seeded)
    result = ok_result(execute("analyze", tmp_path, audit_log, window="15s", interval="5s",
                               until_verdict=True, max_duration="60s", check_every="3s"))
    decision = result.decision
    assert decision["verdict"] == "PASS", decision["reason"]
    evidence = result.evidence
    assert [p["weight"] for p in evidence["weight_periods"]] == [0, 10, 25]
    assert [s["canary_share"] for s in evidence["segments"]] == [0.1]
    assert evidence["segments"][0]["canary_requests"] > 0
    sequential = next(j for j in decision["judgements"] if j["judge"] == "error-rate-sequential")
    assert [s["canary_share"] for s in sequential["evidence"]["segments"]] == [0.1, 0.25]
    assert evidence["checks"][-1]["window_covered"] and evidence["window"]["seconds"] >= 14.5
    shares = [row["value"] for row in result.metrics
              if row["version"] == "v2" and row["metric"] == "traffic-share"]
    assert shares and 0.1 < sorted(shares)[len(shares) // 2] < 0.4
    assert result.weights == {"v1": 75, "v2": 25}
    assert result.changes == [] and versions(seeded) == before


def test_analyze_fails_a_canary_that_turned_bad_behind_internal_routes(seeded, tmp_path,
                                                                        audit_log):
    target = in_process(seeded, audit_log)
    scene(target, "internal-canary", phases.internal_canary)
    lab.set_behaviour(seeded, "v2", error_rate=0.5)
    scene(target, "shift-traffic", phases.shift_traffic, canary_weight=25)
    result = ok_result(execute("analyze", tmp_path, audit_log, window="15s", interval="5s",
                               until_verdict=True, max_duration="60s", check_every="3s",
                               canary_weight=25.0))
    decision = result.decision
    assert decision["verdict"] == "FAIL", decision["reason"]
    assert any("not taken as the canary's share" in note for note in result.notes)
    failed = {j["judge"] for j in decision["judgements"] if j["verdict"] == "FAIL"}
    assert "success-rate" in failed
    errors = [row["value"] for row in result.metrics
              if row["version"] == "v2" and row["metric"] == "error-rate"]
    assert errors and max(errors) > 0


def test_analyze_without_canary_traffic_is_inconclusive_never_pass(seeded, tmp_path, audit_log):
    time.sleep(8)  # earlier tests' canary traffic leaves the window
    result = ok_result(execute("analyze", tmp_path, audit_log, window="6s", interval="2s"))
    assert result.decision["verdict"] == "INCONCLUSIVE", result.decision["reason"]
    assert not [j for j in result.decision["judgements"] if j["verdict"] == "FAIL"]
    assert any("evidence restarted" in note for note in result.notes)


def test_promote_makes_the_canary_stable_in_one_audited_write(seeded, tmp_path, audit_log):
    target = in_process(seeded, audit_log)
    scene(target, "internal-canary", phases.internal_canary)
    scene(target, "shift-traffic", phases.shift_traffic, canary_weight=50)
    cluster.change_virtual_service(target.cluster, seeded.service, lambda vs: traffic.set_mirror(
        vs, percentage=5), audit_log=audit_log)
    result = ok_result(execute("promote", tmp_path, audit_log))
    assert [c["operation"] for c in result.changes] == ["promote"]
    assert result.changes[0]["params"]["removed_routes"] == [
        "canary-internal-header", "canary-internal-cookie"]
    vs, _ = objects(seeded)
    assert routes(vs) == ["primary"]
    assert vs["spec"]["http"][0]["route"] == [{"destination": {"host": "reviews",
                                                               "subset": "v2"}}]
    assert ROLLOUT_ANNOTATION not in vs["metadata"]["annotations"]
    assert result.weights == {"v1": 0, "v2": 100}
    assert chain_verifies(audit_log, vs)


def test_rollback_restores_the_snapshot_and_a_second_one_changes_nothing(seeded, tmp_path,
                                                                         audit_log):
    seed_vs, seed_dr = objects(seeded)
    target = in_process(seeded, audit_log)
    scene(target, "internal-canary", phases.internal_canary)
    scene(target, "shift-traffic", phases.shift_traffic, canary_weight=25)
    result = ok_result(execute("rollback", tmp_path, audit_log, reason="analyze-25 FAIL"))
    assert [c["operation"] for c in result.changes] == ["rollback", "end_rollout"]
    assert "reason: analyze-25 FAIL" in result.notes
    vs, dr = objects(seeded)
    assert istio.managed_fields(vs) == istio.managed_fields(seed_vs)
    assert istio.managed_fields(dr) == istio.managed_fields(seed_dr)
    assert ROLLOUT_ANNOTATION not in (vs["metadata"].get("annotations") or {})
    assert result.weights == {"v1": 100, "v2": 0}
    assert chain_verifies(audit_log, vs)
    before = versions(seeded)
    again = ok_result(execute("rollback", tmp_path, audit_log))
    assert again.changes == [] and versions(seeded) == before
    assert any("nothing to roll back" in note for note in again.notes)


def test_blue_green_switch_moves_all_traffic_and_can_be_rolled_back(seeded, tmp_path,
                                                                    audit_log):
    seed_vs, _ = objects(seeded)
    result = ok_result(execute("blue-green", tmp_path, audit_log, to_subset="v2"))
    assert result.weights == {"v1": 0, "v2": 100}
    assert [c["operation"] for c in result.changes] == ["begin_rollout",
                                                           "switch_all_traffic"]
    vs, _ = objects(seeded)
    assert istio.route_subsets(vs["spec"]["http"][0]) == ["v2"]
    judged = ok_result(execute("analyze", tmp_path, audit_log, window="6s", interval="2s"))
    assert judged.decision["verdict"] == "PASS", judged.decision["reason"]
    assert {j["judge"] for j in judged.decision["judgements"]} == {"success-rate",
                                                                      "latency-p99"}
    scene(in_process(seeded, audit_log), "rollback", phases.rollback)
    assert istio.managed_fields(objects(seeded)[0]) == istio.managed_fields(seed_vs)


def test_post_rollout_analysis_loads_the_newest_release_and_plots_it(tmp_path):
    reports = tmp_path / "reports"
    release_fixture.write_release(reports / "reviews" / "reviews-20240501-1200")
    executed = execute("post-rollout-analysis", tmp_path, tmp_path / "unused",
                       reports=str(reports))
    result = ok_result(executed)
    assert "reviews-20240501-1200" in result.notes[0]
    notebook = nbformat.read(str(executed), as_version=4)
    charts = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(charts) == 3


# ---------------------------------------------------------------- bad parameters


@pytest.mark.parametrize(("name", "parameters", "field", "shown"), [
    ("shift-traffic", {"canary_weight": 130}, "canary_weight", "130"),
    ("blue-green", {"to_subset": "v9"}, "to_subset", "'v9'"),
    ("analyze", {"window": "abc"}, "window", "'abc'"),
    ("shadow", {"percentage": 150.0}, "percentage", "150.0"),
    ("internal-canary", {"header": "Bad Header"}, "header", "'Bad Header'"),
    ("shift-traffic", {"canary_wieght": 5}, "canary_wieght", "5"),
    ("shift-traffic", {"prometheus_bearer_token": "abc"}, "prometheus_bearer_token",
     "'<hidden>'"),
    ("preflight", {"prometheus_url": "http://127.0.0.1:9"}, "prometheus_url",
     "'http://127.0.0.1:9'"),
])
def test_bad_parameters_fail_with_one_clear_error_and_change_nothing(
        name, parameters, field, shown, seeded, tmp_path, audit_log):
    before = versions(seeded)
    executed = tmp_path / "failed.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(str(RUNBOOKS / f"{name}.ipynb"), str(executed),
                                   parameters={"audit_log": str(audit_log), **parameters},
                                   cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    notebook = nbformat.read(str(executed), as_version=4)
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert len(errors) == 1
    message = runbook.read_notebook(executed)[1]
    assert message.startswith(f"BadInput: {field}: ") and message.endswith(f"(got {shown})")
    assert "abc" not in message or field == "window"
    result = runbook.read_result(executed)
    assert result is None or (result.outcome == "error" and result.changes == [])
    assert versions(seeded) == before
    assert not audit_log.exists() or audit.read_records(audit_log) == []
