"""The rollout driver's own decisions and checks, without a cluster or kernels: what comes
after a phase, which runbooks and parameters a plan needs, exit codes, the status text."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from canarykit.cli import main as cli
from canarykit.cluster import state as rollout_state
from canarykit.core import times
from canarykit.core.errors import BadInput, ExitCode
from canarykit.rollout import driver as rollout
from canarykit.rollout import plan

REPO = Path(__file__).resolve().parents[2]
CANARY_PLAN = REPO / "examples" / "plans" / "reviews-canary.yaml"


def _driver(runbooks: Path, phases: list[plan.PhaseSpec] | None = None,
            say=print) -> rollout.Driver:
    loaded = plan.load_plan(CANARY_PLAN)
    return rollout.Driver(loaded, plan.expand(loaded) if phases is None else phases, None,
                          runbooks, Path("reports"), "", "", say=say)


# ---------------------------------------------------------------- deciding what comes next


def _state() -> rollout.DriverState:
    return rollout.DriverState(release="r", folder="/tmp/r", plan_digest="d", started="s")


def _spec(name: str, runbook: str, judged: bool) -> plan.PhaseSpec:
    return plan.PhaseSpec(name, runbook, {}, 0, judged=judged, pause=60.0)


AT = datetime(2030, 1, 1, tzinfo=UTC)


def test_a_passing_phase_moves_on_after_its_pause():
    state = _state()
    rollout.settle(state, _spec("analyze-5", "analyze", True),
                   {"outcome": "ok", "verdict": "PASS"}, 2, AT)
    assert state.cursor == 1 and not state.finish
    assert state.next_due == rollout.stamp(AT + timedelta(seconds=60))


def test_a_failing_verdict_or_an_error_makes_rollback_the_next_phase():
    for record in ({"outcome": "ok", "verdict": "FAIL", "reason": "5xx 50%"},
                   {"outcome": "error", "verdict": None, "error": "ClusterError: gone"}):
        state = _state()
        rollout.settle(state, _spec("analyze-25", "analyze", True), record, 2, AT)
        assert state.finish == "rollback" and state.cursor == 0
        assert (record.get("reason") or record.get("error")) in state.finish_reason
        assert state.status == "in-progress"


def test_inconclusive_holds_up_to_hold_steps_then_rolls_back():
    state = _state()
    spec = _spec("analyze-25", "analyze", True)
    for _ in range(2):
        rollout.settle(state, spec, {"outcome": "ok", "verdict": "INCONCLUSIVE"}, 2, AT)
        assert not state.finish and state.cursor == 0
    rollout.settle(state, spec, {"outcome": "ok", "verdict": "INCONCLUSIVE"}, 2, AT)
    assert state.finish == "rollback" and "INCONCLUSIVE 3 times" in state.finish_reason


def test_a_judged_phase_that_recorded_no_decision_is_never_taken_for_a_pass():
    state = _state()
    rollout.settle(state, _spec("analyze-25", "analyze", True),
                   {"outcome": "ok", "verdict": None}, 0, AT)
    assert state.finish == "rollback"


def test_a_preflight_that_does_not_pass_ends_the_release_without_a_rollback():
    state = _state()
    rollout.settle(state, _spec("preflight", "preflight", True),
                   {"outcome": "error", "verdict": None, "error": "no baseline"}, 2, AT)
    assert state.status == "failed" and not state.finish and "no baseline" in state.reason


def test_rollback_and_promote_end_the_release():
    rolled = _state()
    rolled.finish, rolled.finish_reason = "rollback", "analyze-25: FAIL"
    rollout.settle(rolled, rollout.terminal_phase("rollback"), {"outcome": "ok"}, 2, AT)
    assert (rolled.status, rolled.reason) == ("rolled-back", "analyze-25: FAIL")
    aborted = _state()
    aborted.finish, aborted.aborted = "rollback", True
    rollout.settle(aborted, rollout.terminal_phase("rollback"), {"outcome": "ok"}, 2, AT)
    assert aborted.status == "aborted"
    promoted = _state()
    rollout.settle(promoted, rollout.terminal_phase("promote"), {"outcome": "ok"}, 2, AT)
    assert promoted.status == "promoted" and promoted.finished


@pytest.mark.parametrize("name", ["reviews-canary.yaml", "reviews-blue-green.yaml"])
def test_every_phase_passes_only_parameters_its_runbook_declares(name):
    loaded = plan.load_plan(REPO / "examples" / "plans" / name)
    driver = rollout.Driver(loaded, plan.expand(loaded), None, rollout.packaged_runbooks(),
                            Path("reports"), "", "")
    rollout.check_runbooks(driver)  # raises BadInput naming phase.parameter otherwise


def test_the_packaged_runbooks_are_found_from_the_installed_package_not_the_cwd(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = rollout.packaged_runbooks()
    assert found.is_absolute() and found == Path(rollout.__file__).parent.parent / "runbooks"
    assert {"preflight.ipynb", "analyze.ipynb", "rollback.ipynb", "promote.ipynb"} <= {
        p.name for p in found.iterdir()}


def test_kubeconfig_is_the_plans_else_kubeconfig_env_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", "from-env/config")
    assert rollout.absolute_kubeconfig("plan/config") == str(tmp_path / "plan" / "config")
    assert rollout.absolute_kubeconfig("") == str(tmp_path / "from-env" / "config")
    monkeypatch.delenv("KUBECONFIG")
    assert rollout.absolute_kubeconfig("") == ""  # the client's default, as kubectl's


def test_a_bad_plan_exits_2_naming_the_field_and_touches_nothing(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"service": "reviews", "steps": [{"weight": 130}]}))
    done = subprocess.run([sys.executable, "-m", "canarykit.rollout.driver", "run", str(path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "steps[0].weight" in done.stderr and "130" in done.stderr
    assert not (tmp_path / "reports").exists()


def test_the_next_phase_is_the_finish_the_cursor_or_a_hold_of_it():
    driver = _driver(rollout.packaged_runbooks())
    state = _state()
    assert rollout.next_phase(driver, state) == driver.phases[0]
    state.cursor, state.inconclusive = 1, 2
    held = rollout.next_phase(driver, state)
    assert held.name == f"{driver.phases[1].name}-hold-2"
    assert held.runbook == driver.phases[1].runbook
    state.finish, state.finish_reason = "rollback", "analyze-25: FAIL"
    assert rollout.next_phase(driver, state) == plan.PhaseSpec(
        "rollback", "rollback", {"reason": "analyze-25: FAIL"})


def test_a_plan_that_lost_the_phase_due_next_is_refused_naming_the_way_out():
    driver = _driver(rollout.packaged_runbooks())
    state = _state()
    state.cursor = len(driver.phases)
    with pytest.raises(BadInput, match="rollout abort"):
        rollout.next_phase(driver, state)


# ---------------------------------------------------------------- the runbooks a plan needs


def test_the_packaged_runbooks_are_checked_against_their_declaration_without_papermill():
    # `rollout status|abort|promote` open the driver like this: no papermill, nbformat or
    # jsonschema (seconds of imports) for runbooks whose parameters are declared in code.
    code = ("import argparse, sys\n"
            "from canarykit.cluster import client\n"
            "from canarykit.rollout import driver\n"
            "client.connect = lambda *args: None\n"
            "driver.open_driver(argparse.Namespace(plan=sys.argv[1], runbooks=None,\n"
            "                                      lease_seconds=60))\n"
            "print([m for m in ('papermill', 'nbformat', 'jsonschema') if m in sys.modules])\n")
    shown = subprocess.run([sys.executable, "-c", code, str(CANARY_PLAN)], capture_output=True,
                           text=True, check=True, timeout=120).stdout
    assert shown.strip() == "[]"


def test_a_parameter_the_packaged_runbook_does_not_declare_is_refused_naming_it():
    phases = [plan.PhaseSpec("weight-5", "shift-traffic", {"canary_wieght": 5})]
    with pytest.raises(BadInput) as refused:
        rollout.check_runbooks(_driver(rollout.packaged_runbooks(), phases))
    assert refused.value.field == "weight-5.canary_wieght"
    assert "is not a parameter of runbooks/shift-traffic.ipynb" in str(refused.value)


def _with_parameter(notebook: Path, line: str) -> None:
    data = json.loads(notebook.read_text(encoding="utf-8"))
    cell = next(c for c in data["cells"] if "parameters" in c["metadata"].get("tags", []))
    cell["source"] = "".join(cell["source"]).rstrip("\n") + "\n" + line + "\n"
    notebook.write_text(json.dumps(data), encoding="utf-8")


def test_a_custom_runbooks_folder_is_checked_against_its_own_notebooks(tmp_path):
    custom = tmp_path / "runbooks"
    shutil.copytree(rollout.packaged_runbooks(), custom)
    _with_parameter(custom / "shift-traffic.ipynb", 'note: str = ""  # a site-specific one')
    phases = [plan.PhaseSpec("weight-5", "shift-traffic", {"canary_weight": 5, "note": "x"})]
    rollout.check_runbooks(_driver(custom, phases))  # papermill reads `note` from the notebook
    with pytest.raises(BadInput, match="weight-5.note: is not a parameter"):
        rollout.check_runbooks(_driver(rollout.packaged_runbooks(), phases))
    (custom / "rollback.ipynb").unlink()
    with pytest.raises(BadInput, match="has no rollback.ipynb, which phase rollback needs"):
        rollout.check_runbooks(_driver(custom, phases))


# ---------------------------------------------------------------- release names


def test_release_names_carry_the_compact_form_of_their_start(tmp_path):
    driver = _driver(rollout.packaged_runbooks())
    driver.reports = tmp_path
    state = rollout.start_release(driver)
    started = times.parse_timestamp(state.started)
    assert state.release == f"{driver.plan.canary}-{times.compact(started)}"
    assert re.fullmatch(r"v2-\d{8}T\d{6}Z", state.release)
    cluster_state = rollout_state.new_state("v1", "v2", {})
    assert cluster_state.release == \
        f"v2-{times.compact(times.parse_timestamp(cluster_state.started_at))}"


# ---------------------------------------------------------------- exit codes and output


def test_a_lease_shorter_than_a_second_is_bad_input(capsys):
    code = cli.main(["rollout", "status", str(CANARY_PLAN), "--lease-seconds", "0"])
    assert code == ExitCode.BAD_INPUT
    assert "--lease-seconds: must be at least 1 (got 0)" in capsys.readouterr().err


def test_status_text_says_why_the_cluster_could_not_be_read(monkeypatch):
    lines: list[str] = []
    driver = _driver(rollout.packaged_runbooks(), say=lines.append)
    monkeypatch.setattr(rollout, "open_driver", lambda args: driver)
    monkeypatch.setattr(rollout, "status_report", lambda _: {
        "plan": {"phases": ["preflight"]}, "lease": {"name": "canarykit-reviews",
                                                      "holder": None, "expired": True},
        "release": None, "cluster": {"error": "VirtualService reviews not found"}})
    args = argparse.Namespace(plan=CANARY_PLAN, output="text")
    assert rollout.cmd_status(args) == ExitCode.OK
    assert "cluster status unavailable: VirtualService reviews not found" in lines


def test_a_kubeconfig_path_list_keeps_every_path_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join(["a/config", "", "/etc/kube/b"]))
    assert rollout.absolute_kubeconfig("") == os.pathsep.join(
        [str(tmp_path / "a" / "config"), "/etc/kube/b"])
