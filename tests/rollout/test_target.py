"""Where a runbook acts: only where it is told. A leftover local lab never redirects it.

Each test leaves a lab folder in the current directory (and names it in $CANARYKIT_LAB_DIR,
which older versions read), whose kubeconfig and Prometheus point at nothing that answers: a
target that used them would fail differently from what is asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.lab.apiserver import kubeconfig_text
from canarykit.rollout import driver, runbook
from canarykit.rollout import target as rollout_target
from canarykit.rollout.target import PROMETHEUS_URL_ENV
from tests.apiserver_fixture import ApiServerProcess

pytestmark = pytest.mark.lab  # a local API server and a kernel

LAB_PROMETHEUS = "http://127.0.0.1:9"  # the leftover lab's: nothing listens there
COMMON = {"service": "reviews", "namespace": "default", "stable": "v1", "canary": "v2"}


@pytest.fixture
def leftover_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory holds a lab folder with a state file, also named by the old
    environment variable; $KUBECONFIG and $CANARYKIT_PROMETHEUS_URL are unset."""
    work = tmp_path / "work"
    folder = work / ".canarykit-lab"
    folder.mkdir(parents=True)
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text("http://127.0.0.1:9", "lab-token"))
    state = {"data_dir": str(folder), "service": "reviews", "namespace": "default",
             "kubeconfig": str(kubeconfig), "prometheus_url": LAB_PROMETHEUS, "ready": True,
             "parts": []}
    (folder / "lab.json").write_text(json.dumps(state))
    monkeypatch.chdir(work)
    monkeypatch.setenv("CANARYKIT_LAB_DIR", str(folder))
    for name in ("KUBECONFIG", PROMETHEUS_URL_ENV, "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    return work


def test_empty_kubeconfig_is_kubeconfig_env_and_empty_prometheus_is_none(
        leftover_lab, apiserver: ApiServerProcess, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    target = rollout_target.connect_target(**COMMON)
    assert target.cluster.server == apiserver.url
    assert target.prometheus is None
    with pytest.raises(BadInput) as refused:
        rollout_target.prometheus_client(target)
    assert refused.value.field == "prometheus_url"
    assert PROMETHEUS_URL_ENV in refused.value.problem and "required" in refused.value.problem


def test_without_kubeconfig_env_the_default_file_is_used_never_the_lab(leftover_lab,
                                                                       monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(BadInput) as refused:
        rollout_target.connect_target(**COMMON)
    assert refused.value.field == "kubeconfig"
    assert refused.value.value == str(tmp_path / "home" / ".kube" / "config")


def test_the_prometheus_env_variable_is_used_when_the_parameter_is_empty(
        leftover_lab, apiserver: ApiServerProcess, monkeypatch):
    monkeypatch.setenv(PROMETHEUS_URL_ENV, "http://127.0.0.1:19090")
    target = rollout_target.connect_target(**COMMON, kubeconfig=str(apiserver.kubeconfig))
    assert target.prometheus.url == "http://127.0.0.1:19090"
    given = rollout_target.connect_target(**COMMON, kubeconfig=str(apiserver.kubeconfig),
                                          prometheus_url="http://127.0.0.1:29090")
    assert given.prometheus.url == "http://127.0.0.1:29090"


def test_the_preflight_runbook_with_empty_parameters_refuses_instead_of_using_the_lab(
        leftover_lab, apiserver: ApiServerProcess, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    executed = leftover_lab / "preflight.ipynb"
    with pytest.raises(papermill.PapermillExecutionError):
        papermill.execute_notebook(
            str(driver.packaged_runbooks() / "preflight.ipynb"), str(executed),
            parameters={"audit_log": str(leftover_lab / "audit.jsonl")}, cwd=str(leftover_lab),
            progress_bar=False, kernel_name="python3")
    message = runbook.read_notebook(executed)[1]
    assert message.startswith("BadInput: prometheus_url: is required"), message
    assert LAB_PROMETHEUS not in message


def test_rollout_run_of_a_plan_without_prometheus_exits_2_and_changes_nothing(
        leftover_lab, apiserver: ApiServerProcess, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    plan = leftover_lab / "plan.yaml"
    plan.write_text(yaml.safe_dump({"service": "reviews",
                                    "steps": [{"weight": 25}, {"promote": {}}]}))
    done = subprocess.run([sys.executable, "-m", "canarykit.rollout.driver", "run", str(plan)],
                          cwd=leftover_lab, env=dict(os.environ), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "prometheus.url: is required (phases preflight, analyze-25" in done.stderr
    assert PROMETHEUS_URL_ENV in done.stderr
    assert not (leftover_lab / "reports").exists()
