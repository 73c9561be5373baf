"""A release whose record lives in object storage, run as CronJobs run it: each `rollout step`
is a new process with an empty scratch folder (a new pod), against the lab and a real
S3-compatible server; the report, the audit check and the post-rollout notebook work from the
URL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import yaml
from kubernetes import client

from canarykit.cluster import client as cluster
from canarykit.lab import processes as lab
from canarykit.rollout import driver as rollout
from canarykit.rollout import runbook
from tests.lab_fixture import kube
from tests.rollout.test_driver import loaded_lab  # noqa: F401 (the module's loaded lab)
from tests.storage.conftest import SECRET_KEY

pytestmark = pytest.mark.lab


def write_plan(folder: Path, state, reports: str, **changes) -> Path:
    plan = {"service": state.service, "namespace": state.namespace,
            "kubeconfig": state.kubeconfig, "prometheus": {"url": state.prometheus_url},
            "reports": reports, "preflight": {"baseline_window": "10s"},
            "inconclusive": {"hold_steps": 0},
            "steps": [{"weight": 50, "analysis": False}, {"promote": {}}], **changes}
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def in_new_pod(tmp_path: Path, number: int, *args: str) -> subprocess.CompletedProcess:
    """`canarykit ARGS` in a fresh working and scratch folder, as a new pod has."""
    pod = tmp_path / f"pod-{number}"
    pod.mkdir()
    env = {**os.environ, "CANARYKIT_SCRATCH_DIR": str(pod / "scratch"), "HOME": str(pod)}
    return subprocess.run([sys.executable, "-m", "canarykit", *args], cwd=pod,
                          env=env, capture_output=True, text=True, timeout=240)


def stored_files(url: str) -> dict[str, bytes]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    return {info["name"].rsplit("/", 1)[-1]: fs.cat_file(info["name"])
            for info in fs.ls(url.removeprefix("s3://"), detail=True, refresh=True)
            if info["type"] == "file"}


def release_urls(reports: str, service: str) -> list[str]:
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    root = f"{reports.removeprefix('s3://')}/{service}"
    if not fs.exists(root):
        return []
    return [f"s3://{info['name']}" for info in fs.ls(root, detail=True, refresh=True)
            if info["type"] == "directory"]


@pytest.fixture
def lab_at_seed(loaded_lab):  # noqa: F811
    lab.reset(loaded_lab)
    lab.set_rate(loaded_lab, 100)
    try:
        client.CoordinationV1Api(kube(loaded_lab).api).delete_namespaced_lease(
            rollout.lease_name(loaded_lab.service), loaded_lab.namespace)
    except client.ApiException as exc:
        assert exc.status == 404
    return loaded_lab


def test_a_release_runs_step_by_step_from_fresh_pods_with_its_record_in_object_storage(
        tmp_path, bucket, lab_at_seed):
    state = lab_at_seed
    reports = f"{bucket}/releases"
    plan = str(write_plan(tmp_path, state, reports))
    output, summary, pods = "", {}, 0
    while summary.get("status") in (None, "in-progress") and pods < 8:
        pods += 1
        done = in_new_pod(tmp_path, pods, "rollout", "step", plan, "--lease-seconds", "3")
        output += done.stdout + done.stderr
        assert done.returncode == 0, output
        found = release_urls(reports, state.service)
        assert len(found) == 1, output
        url = found[0]
        summary = json.loads(stored_files(url)["release.json"])
    assert summary["status"] == "promoted", output
    assert pods >= 3  # preflight, the 50 % step and promote each ran in a pod of its own
    files = stored_files(url)
    assert {"plan.yaml", "audit.jsonl", "report.html", "01-preflight.ipynb",
            "03-promote.ipynb"} <= set(files)
    assert f"report: {url}/report.html" in output
    assert all(SECRET_KEY.encode() not in text for text in files.values())
    assert len(files["audit.jsonl"].splitlines()) >= 4  # each change: intent and outcome

    report = in_new_pod(tmp_path, 100, "report", "build", url)
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip() == f"report: {url}/report.html"
    check = in_new_pod(tmp_path, 101, "audit", "verify", url, "--kubeconfig", state.kubeconfig)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{url}/audit.jsonl: audit chain intact" in check.stdout
    assert "checked against the cluster" in check.stdout


def test_the_post_rollout_notebook_loads_the_newest_stored_release_and_stores_its_export(
        tmp_path, bucket, lab_at_seed):
    import papermill

    state = lab_at_seed
    reports = f"{bucket}/releases"
    plan = write_plan(tmp_path, state, reports, analysis={"interval": "5s", "window": "10s"},
                      steps=[{"weight": 50, "analysis": False, "pause": "12s"},
                             {"promote": {}}])  # long enough to export intervals for replay
    done = in_new_pod(tmp_path, 1, "rollout", "run", str(plan), "--lease-seconds", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    (url,) = release_urls(reports, state.service)
    notebook = tmp_path / "post.ipynb"
    papermill.execute_notebook(
        str(rollout.packaged_runbooks() / "post-rollout-analysis.ipynb"), str(notebook),
        parameters={"service": state.service, "reports": reports}, kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False)
    result, error = runbook.read_notebook(notebook)
    assert error is None and result.outcome == runbook.Outcome.OK
    assert any(note.startswith("release folder") for note in result.notes)
    assert "replay.csv" in stored_files(url), result.notes


def test_a_step_that_cannot_write_its_record_changes_nothing(tmp_path, bucket, lab_at_seed):
    state = lab_at_seed
    vs = cluster.find_virtual_service(kube(state), state.service)
    plan = str(write_plan(tmp_path, state, "s3://no-such-bucket-for-canarykit/releases"))
    done = in_new_pod(tmp_path, 1, "rollout", "step", plan)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "reports: cannot be written, so nothing was changed" in done.stderr
    assert "s3://no-such-bucket-for-canarykit/releases" in done.stderr
    after = cluster.find_virtual_service(kube(state), state.service)
    assert after["metadata"]["resourceVersion"] == vs["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as caught:  # no lease taken, no release started
        client.CoordinationV1Api(kube(state).api).read_namespaced_lease(
            rollout.lease_name(state.service), state.namespace)
    assert caught.value.status == 404
