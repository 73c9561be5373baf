"""`canarykit deploy render --argo`: the step from Argo Workflows, checked against Argo's schema,
and the approval that composes with canarykit's own approve gate.

The schema is Argo's OpenAPI spec as the `hera` package generates it into Pydantic models
(hera 7.1.0: Argo v4.0.5). Validated with `strict=True` (no coercion: "10001" is not an int),
`extra="forbid"` (an unknown or misspelled field anywhere is an error) and `by_name=False` (the
YAML names only, not hera's Python names). scripts/setup.sh installs hera beside the
environment, off its path, as it does kubernetes-validate: nothing the product imports sees it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pydantic
import pytest
import yaml
from kubernetes import client

from canarykit.cli.main import main as cli_main
from canarykit.cluster import client as cluster
from canarykit.core import names, times
from canarykit.core.errors import BadInput
from canarykit.deploy import argo, manifests
from canarykit.rollout import driver as rollout
from canarykit.rollout import gates
from canarykit.rollout.plan import expand, load_plan
from tests.apiserver_fixture import kube_client, seed, start_apiserver, stop_apiserver_process
from tests.cluster.test_client import VS
from tests.deploy.test_manifests import CLUSTER_PLAN, KUBERNETES, RENDER, kubernetes_validate


def _yaml_dumpers() -> dict[type, dict | None]:
    """Each PyYAML class that dumps: a copy of its own representer table (None: inherited)."""
    modules = (yaml, yaml.representer, yaml.dumper)
    classes = {c for m in modules for c in vars(m).values()
               if isinstance(c, type) and hasattr(c, "yaml_representers")}
    return {c: dict(c.__dict__["yaml_representers"]) if "yaml_representers" in c.__dict__
            else None for c in classes}


def _import_schema() -> tuple[type, type]:
    """hera's models. Importing hera re-registers PyYAML's str representer for every dumper
    (multi-line strings as `|` blocks, hera/_yaml.py); that is undone here, so every other
    test in the run dumps YAML exactly as canarykit does."""
    sys.path.insert(0, str(Path(sys.prefix) / "argo-schema"))
    before = _yaml_dumpers()
    try:
        from hera.workflows.models import CronWorkflow, WorkflowTemplate
    finally:
        for cls, table in before.items():
            if table is not None:
                cls.yaml_representers = table
            elif "yaml_representers" in cls.__dict__:
                delattr(cls, "yaml_representers")
    return WorkflowTemplate, CronWorkflow


WorkflowTemplate, CronWorkflow = _import_schema()
RESUMED_BY_ALICE = {"workflows.argoproj.io/action": "Resume",
                    "workflows.argoproj.io/actor-preferred-username": "alice"}
STRICT = {"strict": True, "extra": "forbid", "by_alias": True, "by_name": False}
SCHEMAS = {"WorkflowTemplate": WorkflowTemplate, "CronWorkflow": CronWorkflow}


def rendered(**changes) -> dict[str, dict]:
    """Kind -> object; the Argo Role as "ArgoRole" (its binding "ArgoRoleBinding")."""
    found: dict[str, dict] = {}
    for obj in manifests.render(CLUSTER_PLAN, **{**RENDER, "argo": True, **changes}):
        key = obj["kind"]
        if obj["metadata"]["name"].endswith("-argo"):
            key = f"Argo{key}"
        found[key] = obj
    return found


def cron_job_pod(**changes) -> dict:
    objects = {o["kind"]: o for o in manifests.render(CLUSTER_PLAN, **{**RENDER, **changes})}
    return objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def templates(**changes) -> dict[str, dict]:
    return {t["name"]: t for t in rendered(**changes)["WorkflowTemplate"]["spec"]["templates"]}


def validate(obj: dict) -> None:
    SCHEMAS[obj["kind"]].model_validate(obj, **STRICT)


# ---------------------------------------------------------------- Argo's schema


def test_every_rendered_object_validates_strictly_against_its_schema():
    objects = rendered()
    assert list(objects) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ArgoRole",
                             "ArgoRoleBinding", "WorkflowTemplate", "CronWorkflow"]
    for obj in objects.values():
        if obj["apiVersion"] == argo.API_VERSION:
            validate(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_importing_the_schema_left_yaml_dumping_as_it_was():
    assert yaml.safe_dump({"a": "x\ny"}) == "a: 'x\n\n  y'\n"  # PyYAML's own style, no `|`
    assert yaml.dump({"a": "x\ny"}) == "a: 'x\n\n  y'\n"


def _set(path: str, value):
    """A change at a dotted path (list indexes as numbers); a key ending in '!' is renamed."""
    def change(obj: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        if last.endswith("!"):
            old, new = last[:-1].split("=")
            obj[new] = obj.pop(old)
        else:
            obj[int(last) if isinstance(obj, list) else last] = value
    return change


@pytest.mark.parametrize(("kind", "change"), [
    ("WorkflowTemplate", _set("spec.synchronization=synchronisation!", None)),  # misspelled
    ("WorkflowTemplate", _set("spec.synchronization", {"mutex": {"name": "x"}})),  # Argo < 3.6
    ("WorkflowTemplate", _set("spec.serviceAccountName=service_account_name!", None)),
    ("WorkflowTemplate", _set("spec.templates.1.container.securityContext.runAsUser", "10001")),
    ("WorkflowTemplate", _set("spec.templates.4.suspend.duration", 180)),  # must be a string
    ("WorkflowTemplate", _set("spec.templates.4.inputs.parameters.0.enum", "approve")),
    ("WorkflowTemplate", _set("spec.volumes.2.persistentVolumeClaim.claimname", "x")),
    ("WorkflowTemplate", _set("spec.templates.0.steps.0", {"name": "a", "template": "b"})),
    ("CronWorkflow", _set("spec.concurrencyPolicy=concurencyPolicy!", None)),
    ("CronWorkflow", _set("spec.schedules", "*/5 * * * *")),  # a list since Argo 3.6
], ids=["misspelled-synchronisation", "singular-mutex", "python-name", "uid-as-string",
        "duration-as-int", "enum-as-string", "misspelled-deep", "steps-not-nested",
        "misspelled-concurrencyPolicy", "schedules-not-a-list"])
def test_the_schema_check_catches_a_misspelled_field_or_a_wrong_type(kind, change):
    obj = copy.deepcopy(rendered()[kind])
    validate(obj)
    change(obj)
    with pytest.raises(pydantic.ValidationError):
        validate(obj)


# ---------------------------------------------------------------- what the objects say


def test_one_run_per_service_at_a_time_on_the_cron_job_s_schedule():
    objects = rendered()
    template, cron = objects["WorkflowTemplate"], objects["CronWorkflow"]
    (mutex,) = template["spec"]["synchronization"]["mutexes"]
    assert mutex == {"name": "canarykit-reviews"} and "reviews" in mutex["name"]
    cron_job = {o["kind"]: o for o in manifests.render(CLUSTER_PLAN, **RENDER)}["CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedules"] == [cron_job["spec"]["schedule"]]
    assert cron["spec"]["startingDeadlineSeconds"] == cron_job["spec"]["startingDeadlineSeconds"]
    assert cron["spec"]["workflowSpec"] == {
        "workflowTemplateRef": {"name": template["metadata"]["name"]}}
    assert template["spec"]["entrypoint"] in {t["name"] for t in template["spec"]["templates"]}
    assert "CronJob" not in objects  # one scheduler of the step, not two


def test_the_step_runs_the_plan_from_the_config_map_in_the_cron_job_s_pod():
    objects, pod = rendered(), cron_job_pod()
    spec = objects["WorkflowTemplate"]["spec"]
    step = templates()["step"]
    assert step["container"]["args"] == ["rollout", "step", "/etc/canarykit/plan.yaml"]
    assert step["container"] == pod["containers"][0]  # image, env, secret, mounts, limits
    assert step["container"]["securityContext"] == pod["containers"][0]["securityContext"]
    assert spec["securityContext"] == pod["securityContext"]
    assert spec["volumes"] == pod["volumes"]
    assert spec["serviceAccountName"] == pod["serviceAccountName"] == \
        objects["ServiceAccount"]["metadata"]["name"]
    (plan_volume,) = [v for v in spec["volumes"] if v["name"] == "plan"]
    assert plan_volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    mounts = {m["name"]: m["mountPath"] for m in step["container"]["volumeMounts"]}
    assert f"{mounts['plan']}/plan.yaml" == step["container"]["args"][2]
    assert "plan.yaml" in objects["ConfigMap"]["data"]
    cron_job = {o["kind"]: o for o in manifests.render(CLUSTER_PLAN, **RENDER)}["CronJob"]
    assert step["activeDeadlineSeconds"] == \
        cron_job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]


def test_the_helper_steps_run_the_same_container_without_credentials_or_release_folders():
    step = templates()["step"]["container"]
    for name, command in (("look", "argo-waiting"), ("decide", "argo-decide")):
        helper = templates()[name]["container"]
        assert helper["args"][:3] == ["deploy", command, "/etc/canarykit/plan.yaml"]
        assert "envFrom" not in helper
        assert [m["name"] for m in helper["volumeMounts"]] == ["plan", "scratch"]
        assert helper["volumeMounts"] == step["volumeMounts"][:2]
        same = {k: v for k, v in step.items() if k not in ("args", "envFrom", "volumeMounts")}
        assert {k: v for k, v in helper.items() if k not in ("args", "volumeMounts")} == same


def test_no_credential_is_written_into_the_objects():
    objects = rendered()
    assert "Secret" not in {o["kind"] for o in objects.values()}

    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    workflow = objects["WorkflowTemplate"]
    assert not [s for s in strings(workflow) if names.looks_like_credential(s)]
    for template in workflow["spec"]["templates"]:
        if "container" in template:
            env = {e["name"]: e for e in template["container"]["env"]}
            assert set(env) == set(manifests.SCRATCH_ENV)  # no value, no secretKeyRef
            assert all(set(e) == {"name", "value"} for e in env.values())
    # the Secret, by name only: the step's envFrom and the volume
    assert yaml.safe_dump(workflow).count("reviews-canarykit") == 2
    assert {"secretRef": {"name": "reviews-canarykit"}} in templates()["step"]["container"][
        "envFrom"]


def test_the_approve_step_is_a_suspend_node_for_the_release_that_waits():
    found = templates()
    steps = [step for group in found["rollout"]["steps"] for step in group]
    assert [s["name"] for s in steps] == ["step", "look", "gate"]
    gate = steps[2]
    assert gate["when"] == "'{{steps.look.outputs.result}}' != 'none'"
    assert gate["arguments"]["parameters"] == [
        {"name": "release", "value": "{{steps.look.outputs.result}}"}]
    inner = [step for group in found["gate"]["steps"] for step in group]
    assert [s["name"] for s in inner] == ["approval", "decide"]
    approval = found["approval"]
    timing = manifests.job_timing(manifests.DEFAULT_SCHEDULE)
    assert approval["suspend"] == {"duration": str(argo.approval_window(timing))}
    (decision,) = approval["inputs"]["parameters"]
    assert decision["enum"] == ["approve", "reject"] and decision["default"] == "approve"
    # the UI sends every input of a suspend node back as an output of that name
    assert [p["name"] for p in approval["outputs"]["parameters"]] == ["decision"]
    assert approval["outputs"]["parameters"][0]["valueFrom"] == {"supplied": {},
                                                                 "default": "approve"}
    passed = {p["name"]: p["value"] for p in inner[1]["arguments"]["parameters"]}
    assert passed == {"release": "{{inputs.parameters.release}}",
                      "decision": "{{steps.approval.outputs.parameters.decision}}",
                      "suspended-at": "{{steps.approval.startedAt}}",
                      "resumed-at": "{{steps.approval.finishedAt}}"}
    args = found["decide"]["container"]["args"]
    assert args[args.index("--window") + 1] == str(argo.approval_window(timing))
    assert args[args.index("--release") + 1] == "{{inputs.parameters.release}}"


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "*/15 * * * *", "0 * * * *"])
def test_the_suspend_node_ends_before_the_next_run_is_due(schedule):
    timing = manifests.job_timing(schedule)
    window = argo.approval_window(timing)
    assert window + 2 * timing["starting"] <= timing["interval"]
    spec = rendered(schedule=schedule)["WorkflowTemplate"]["spec"]
    assert spec["activeDeadlineSeconds"] >= timing["active"] + window


def test_the_argo_role_adds_only_what_argo_needs_to_the_same_service_account():
    objects = rendered()
    assert objects["Role"]["rules"] == manifests.ROLE_RULES  # the step's Role is unchanged
    granted = {(g, r, v) for rule in objects["ArgoRole"]["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {("argoproj.io", "workflowtaskresults", "create"),
                       ("argoproj.io", "workflowtaskresults", "patch"),
                       ("networking.istio.io", "virtualservices", "patch")}
    binding = objects["ArgoRoleBinding"]
    assert binding["roleRef"]["name"] == objects["ArgoRole"]["metadata"]["name"]
    assert binding["subjects"] == objects["RoleBinding"]["subjects"]


def test_a_plan_that_cannot_fit_the_schedule_is_refused_for_argo_too():
    with pytest.raises(BadInput) as caught:
        manifests.render(CLUSTER_PLAN, **RENDER, argo=True, schedule="*/2 * * * *")
    assert caught.value.field == "--schedule"


def test_the_cli_writes_the_argo_objects(tmp_path):
    command = [sys.executable, "-m", "canarykit", "deploy", "render", str(CLUSTER_PLAN),
               "--reports-claim", "canarykit-reports", "--argo", "--output", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert "workflowtemplate-canarykit-reviews.yaml" in kustomization["resources"]
    assert "cronworkflow-canarykit-reviews.yaml" in kustomization["resources"]
    assert "role-canarykit-reviews-argo.yaml" in kustomization["resources"]


# ---------------------------------------------------------------- the decide step's rules


def test_an_expired_suspend_node_decides_nothing_a_resumed_one_does():
    start = "2026-01-01T10:00:00Z"
    assert not argo.expired(start, "2026-01-01T10:01:00Z", 180)
    assert not argo.expired(start, "2026-01-01T10:02:58Z", 180)
    assert argo.expired(start, "2026-01-01T10:02:59Z", 180)  # the last second counts as none
    assert argo.expired(start, "2026-01-01T10:03:00Z", 180)
    assert argo.expired(start, "2026-01-01T10:03:07Z", 180)
    with pytest.raises(BadInput) as caught:
        argo.expired("{{steps.approval.startedAt}}", start, 180)  # never resolved by Argo
    assert caught.value.field == "--suspended-at"


def test_who_resumed_comes_from_argo_s_labels_only_when_the_last_action_was_a_resume():
    labels = {"workflows.argoproj.io/action": "Resume",
              "workflows.argoproj.io/actor": "0a1b2c",
              "workflows.argoproj.io/actor-email": "alice.at.example.com",
              "workflows.argoproj.io/actor-preferred-username": "alice"}
    assert argo.argo_actor(json.dumps(labels)) == "alice"
    del labels["workflows.argoproj.io/actor-preferred-username"]
    assert argo.argo_actor(json.dumps(labels)) == "alice.at.example.com"
    assert argo.argo_actor(json.dumps({**labels, "workflows.argoproj.io/action": "Stop"})) == ""
    assert argo.argo_actor(json.dumps({"app": "x"})) == ""  # an Argo server without SSO
    assert argo.argo_actor("{{workflow.labels.json}}") == ""
    assert argo.argo_actor("[]") == ""


# ---------------------------------------------------------------- against the API server


def approval_plan(folder: Path) -> Path:
    data = {"service": "reviews", "namespace": "default", "router": "istio", "stable": "v1",
            "canary": "v2", "kubeconfig": "", "prometheus": {"url": "http://prometheus.invalid:9090"},
            "reports": "reports", "preflight": {"baseline_window": "10s"},
            "steps": [{"weight": 10, "analysis": False}, {"approve": {}}, {"promote": {}}]}
    path = folder / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def vs_annotations(apiserver) -> dict:
    api = kube_client(apiserver)
    try:
        vs = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "networking.istio.io", "v1", "default", "virtualservices", "reviews")
    finally:
        api.close()
    return vs["metadata"].get("annotations") or {}


@pytest.fixture
def tls_apiserver(tmp_path):
    """The local API server over TLS (as a pod's in-cluster configuration needs), stopped by
    PID afterwards."""
    server = start_apiserver(tmp_path / "apiserver", args=("--tls",))
    try:
        yield server
    finally:
        stop_apiserver_process(server.process)


@pytest.fixture
def waiting(tls_apiserver, tmp_path, monkeypatch):
    """The local API server with the reviews VirtualService and a lease whose release waits at
    the plan's approve step, as `rollout step` leaves it; (apiserver, plan, release)."""
    apiserver = tls_apiserver
    seed(apiserver, copy.deepcopy(VS))
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    plan_path = approval_plan(tmp_path)
    plan = load_plan(plan_path)
    (index,) = [i for i, spec in enumerate(expand(plan)) if spec.gate == "approve"]
    release = "v2-20260101T100000Z"
    state = rollout.DriverState(release=release, folder=str(tmp_path / "reports" / release),
                                plan_digest=plan.digest(), started=times.timestamp(),
                                cursor=index, waiting={"gate": "approve",
                                                       "since": times.timestamp()})
    lease, _ = rollout.acquire_lease(cluster.connect(str(apiserver.kubeconfig)), "reviews",
                                     "test-runner", 60)
    lease.write(state)
    lease.release()
    return apiserver, plan_path, release


def decide(plan: Path, release: str, *, decision: str = "approve", after: int = 40,
           labels: dict | None = None) -> list[str]:
    return ["deploy", "argo-decide", str(plan), "--release", release, "--decision", decision,
            "--suspended-at", "2026-01-01T10:00:00Z",
            "--resumed-at", times.timestamp(times.parse_timestamp("2026-01-01T10:00:00Z")
                                             .timestamp() + after),
            "--window", "180", "--workflow", "canarykit-reviews-abc12",
            "--workflow-labels", json.dumps(RESUMED_BY_ALICE if labels is None else labels)]


@pytest.mark.lab
def test_look_names_the_release_waiting_at_its_approve_step(waiting, capsys):
    apiserver, plan, release = waiting
    assert cli_main(["deploy", "argo-waiting", str(plan)]) == 0
    assert capsys.readouterr().out == f"{release}\n"


@pytest.mark.lab
def test_look_says_none_when_nothing_waits_for_a_person(apiserver, tmp_path, monkeypatch,
                                                        capsys):
    seed(apiserver, copy.deepcopy(VS))
    monkeypatch.setenv("KUBECONFIG", str(apiserver.kubeconfig))
    assert cli_main(["deploy", "argo-waiting", str(approval_plan(tmp_path))]) == 0  # no lease
    assert capsys.readouterr().out == "none\n"


@pytest.mark.lab
def test_a_resume_approves_the_release_it_was_shown_for_whoever_resumed(waiting, capsys):
    apiserver, plan, release = waiting
    assert cli_main(decide(plan, release)) == 0
    annotations = vs_annotations(apiserver)
    assert annotations[gates.APPROVE_ANNOTATION] == release
    assert annotations[gates.APPROVER_ANNOTATION] == "alice"
    assert "canarykit-reviews-abc12" in annotations[gates.APPROVAL_REASON_ANNOTATION]
    # what the runner's next look at the gate finds: approved, by alice, and how
    found = gates.approval({"metadata": {"name": "reviews", "annotations": annotations}},
                           release)
    assert found["decision"] == "approved" and found["by"] == "alice"


@pytest.mark.lab
def test_a_rejection_from_the_suspend_node_is_a_rejection_of_that_release(waiting):
    apiserver, plan, release = waiting
    assert cli_main(decide(plan, release, decision="reject", labels={})) == 0
    annotations = vs_annotations(apiserver)
    assert annotations[gates.REJECT_ANNOTATION] == release
    assert gates.APPROVE_ANNOTATION not in annotations
    assert annotations[gates.APPROVER_ANNOTATION] == "unknown"  # Argo did not say who


@pytest.mark.lab
def test_an_expired_suspend_node_approves_nothing(waiting, capsys):
    apiserver, plan, release = waiting
    assert cli_main(decide(plan, release, after=180)) == 0
    assert "no decision" in capsys.readouterr().out
    assert gates.APPROVE_ANNOTATION not in vs_annotations(apiserver)


@pytest.mark.lab
def test_a_late_resume_never_decides_another_release(waiting, capsys):
    apiserver, plan, release = waiting
    assert cli_main(decide(plan, "v2-an-earlier-release")) == 1
    assert "no longer waits" in capsys.readouterr().err
    assert not {gates.APPROVE_ANNOTATION, gates.REJECT_ANNOTATION} & set(
        vs_annotations(apiserver))


def grant(apiserver, tmp_path: Path, rules: list[dict]) -> Path:
    """The rendered service account with `rules` as its Role: its in-cluster folder (token,
    ca.crt, namespace) as a pod would have it."""
    api = kube_client(apiserver)
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    account = "canarykit-reviews"
    try:
        core.create_namespaced_service_account("default", {"metadata": {"name": account}})
        rbac.create_namespaced_role("default", {"metadata": {"name": account}, "rules": rules})
        rbac.create_namespaced_role_binding("default", {
            "metadata": {"name": account},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": "default"}]})
        token = core.create_namespaced_service_account_token(account, "default",
                                                             {"spec": {}}).status.token
    finally:
        api.close()
    folder = tmp_path / "serviceaccount"
    folder.mkdir()
    (folder / "token").write_text(token)
    loaded = yaml.safe_load(apiserver.kubeconfig.read_text())
    ca = loaded["clusters"][0]["cluster"]["certificate-authority-data"]
    (folder / "ca.crt").write_bytes(base64.b64decode(ca))
    (folder / "namespace").write_text("default")
    return folder


def in_pod(apiserver, tmp_path: Path, account: Path, *args: str) -> subprocess.CompletedProcess:
    """`canarykit ARGS` with only the in-cluster configuration to go by."""
    url = urlsplit(apiserver.url)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env.update(HOME=str(home), KUBERNETES_SERVICE_HOST=url.hostname,
               KUBERNETES_SERVICE_PORT=str(url.port), CANARYKIT_SERVICE_ACCOUNT_DIR=str(account))
    return subprocess.run([sys.executable, "-m", "canarykit", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.lab
@pytest.mark.parametrize("with_argo_role", [True, False], ids=["with", "without"])
def test_as_its_service_account_the_decide_step_needs_the_argo_role(waiting, tmp_path,
                                                                     with_argo_role):
    apiserver, plan, release = waiting
    rules = copy.deepcopy(manifests.ROLE_RULES)
    if with_argo_role:
        rules += copy.deepcopy(argo.ARGO_RULES)
    account = grant(apiserver, tmp_path, rules)
    looked = in_pod(apiserver, tmp_path, account, "deploy", "argo-waiting", str(plan))
    assert (looked.returncode, looked.stdout) == (0, f"{release}\n"), looked.stderr
    decided = in_pod(apiserver, tmp_path, account, *decide(plan, release))
    annotations = vs_annotations(apiserver)
    if with_argo_role:
        assert decided.returncode == 0, decided.stderr
        assert annotations[gates.APPROVE_ANNOTATION] == release
    else:
        assert decided.returncode == 1, decided.stderr
        assert "forbidden" in decided.stderr.lower() and "patch" in decided.stderr.lower()
        assert gates.APPROVE_ANNOTATION not in annotations
