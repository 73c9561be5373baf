"""`rollout step` as the rendered CronJob runs it: in-cluster configuration, its own service
account, and the rendered Role, exactly enough.

The lab's API server issues the service-account token and enforces RBAC like Kubernetes; the
runner is a subprocess with the in-cluster environment (KUBERNETES_SERVICE_HOST/PORT and a
service-account folder with token, ca.crt and namespace, its location overridden for the test)
and no kubeconfig anywhere.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client

from canarykit.cluster import audit
from canarykit.deploy import manifests
from canarykit.lab import processes as lab
from canarykit.rollout import driver as rollout
from tests.lab_fixture import kube
from tests.rollout.test_driver import loaded_lab  # noqa: F401 (the session lab, loaded here)

pytestmark = pytest.mark.lab
ACCOUNT = "canarykit-reviews"
USERNAME = f"system:serviceaccount:default:{ACCOUNT}"
SERVICE_ACCOUNT_DIR_ENV = "CANARYKIT_SERVICE_ACCOUNT_DIR"


def write_plan(folder: Path, state) -> Path:
    """A plan the cluster could run: no kubeconfig, relative reports."""
    # no `router:`: detected, with a Role for the Istio router only (Gateway API reads are
    # forbidden, and count as no HTTPRoute beside the VirtualService)
    plan = {"service": state.service, "namespace": state.namespace, "kubeconfig": "",
            "prometheus": {"url": state.prometheus_url}, "reports": "reports",
            "preflight": {"baseline_window": "10s"}, "inconclusive": {"hold_steps": 0},
            "steps": [{"weight": 50, "analysis": False}, {"promote": {}}]}
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def grant(state, rules: list[dict]) -> Path:
    """The service account with `rules` as its Role, and its in-cluster folder."""
    api = kube(state).api
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    for delete in (lambda: rbac.delete_namespaced_role_binding(ACCOUNT, "default"),
                   lambda: rbac.delete_namespaced_role(ACCOUNT, "default"),
                   lambda: core.delete_namespaced_service_account(ACCOUNT, "default")):
        try:
            delete()
        except client.ApiException as exc:
            assert exc.status == 404
    core.create_namespaced_service_account("default", {"metadata": {"name": ACCOUNT}})
    objects = {o["kind"]: o for o in manifests.render(
        Path(write_plan(Path(state.data_dir), state)), reports_claim="reports")}
    role = copy.deepcopy(objects["Role"])
    role["rules"] = rules
    rbac.create_namespaced_role("default", role)
    rbac.create_namespaced_role_binding("default", objects["RoleBinding"])
    token = core.create_namespaced_service_account_token(ACCOUNT, "default",
                                                         {"spec": {}}).status.token
    folder = Path(state.data_dir) / "serviceaccount"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "token").write_text(token)
    shutil.copyfile(state.ca_file, folder / "ca.crt")
    (folder / "namespace").write_text("default")
    return folder


def in_pod(tmp_path: Path, state, account_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`canarykit rollout ...` with only the in-cluster configuration to go by."""
    url = urlsplit(state.apiserver_url)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("KUBECONFIG", "CANARYKIT_PROMETHEUS_URL")}
    env.update(HOME=str(home), KUBERNETES_SERVICE_HOST=url.hostname,
               KUBERNETES_SERVICE_PORT=str(url.port), **{SERVICE_ACCOUNT_DIR_ENV: str(account_dir)})
    return subprocess.run([sys.executable, "-m", "canarykit.rollout.driver", *args,
                           "--lease-seconds", "3"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)


def run_to_the_end(tmp_path: Path, state, account_dir: Path) -> tuple[dict, str]:
    plan = str(write_plan(tmp_path, state))
    output = ""
    for _ in range(8):
        done = in_pod(tmp_path, state, account_dir, "step", plan)
        output += done.stdout + done.stderr
        folders = list((tmp_path / "reports" / state.service).glob("*/release.json"))
        summary = json.loads(folders[0].read_text()) if folders else {}
        if done.returncode != 0 or summary.get("status") not in (None, "in-progress"):
            return summary, output
    return summary, output


def all_on_stable(state) -> bool:
    """The lab's seed routing, and no rollout in progress."""
    from canarykit.cluster import client as cluster
    from canarykit.cluster import state as rollout_state

    vs = cluster.find_virtual_service(kube(state), state.service)
    routes = cluster.status(kube(state), state.service).routes
    split = {d.subset: d.weight for d in routes[0].destinations}
    return split == {"v1": 100, "v2": 0} and rollout_state.read_state(vs) is None


def reset(state) -> None:
    lab.reset(state)
    try:
        client.CoordinationV1Api(kube(state).api).delete_namespaced_lease(
            rollout.lease_name(state.service), state.namespace)
    except client.ApiException as exc:
        assert exc.status == 404


def test_a_whole_rollout_runs_in_cluster_as_its_service_account_with_the_rendered_role(
        tmp_path, loaded_lab):  # noqa: F811
    reset(loaded_lab)
    account_dir = grant(loaded_lab, copy.deepcopy(manifests.ROLE_RULES))
    summary, output = run_to_the_end(tmp_path, loaded_lab, account_dir)
    assert summary.get("status") == "promoted", output
    folder = next((tmp_path / "reports" / loaded_lab.service).iterdir())
    actors = {r["actor"] for r in audit.read_records(folder / "audit.jsonl")}
    assert actors == {USERNAME}
    assert {p["actor"] for p in summary["phases"]} == {USERNAME}


@pytest.mark.parametrize("missing", range(len(manifests.ROLE_RULES)),
                         ids=lambda i: "-".join(manifests.ROLE_RULES[i]["resources"]))
def test_without_any_one_rule_the_rollout_stops_cleanly_saying_what_was_forbidden(
        tmp_path, loaded_lab, missing):  # noqa: F811
    reset(loaded_lab)
    rules = copy.deepcopy(manifests.ROLE_RULES)
    (resource,) = rules.pop(missing)["resources"]
    account_dir = grant(loaded_lab, rules)
    summary, output = run_to_the_end(tmp_path, loaded_lab, account_dir)
    assert summary.get("status") != "promoted", output
    assert "forbidden" in output.lower(), output
    assert resource in output.lower(), output
    assert "Traceback" not in output.split("papermill")[0]
    assert all_on_stable(loaded_lab)  # nothing half-applied: stable still serves everything
