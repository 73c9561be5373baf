"""`canarykit deploy render`: manifests that validate, least privilege, a deadline that fits."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from canarykit.core.errors import BadInput
from canarykit.deploy import manifests

ROOT = Path(__file__).resolve().parents[2]
# scripts/setup.sh installs kubernetes-validate beside the environment, off its path (the
# kubernetes client would import it, and jsonschema, at every start).
sys.path.insert(0, str(Path(sys.prefix) / "kubernetes-validate"))
import kubernetes_validate  # noqa: E402

CLUSTER_PLAN = ROOT / "examples" / "plans" / "reviews-cluster.yaml"
KUBERNETES = "1.35.0"  # a current release whose schemas kubernetes-validate ships
RENDER = {"secret": "reviews-canarykit", "reports_claim": "canarykit-reports"}


def rendered(**changes) -> dict[str, dict]:
    objects = manifests.render(CLUSTER_PLAN, **{**RENDER, **changes})
    return {obj["kind"]: obj for obj in objects}


def plan_file(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(CLUSTER_PLAN.read_text())
    data.update(changes)
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def refused(path: Path, **changes) -> BadInput:
    with pytest.raises(BadInput) as caught:
        manifests.render(path, **{**RENDER, **changes})
    return caught.value


def test_every_rendered_manifest_validates_against_the_kubernetes_schemas_strictly():
    for obj in rendered().values():
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def test_the_role_holds_only_the_verbs_canarykit_uses_and_nothing_on_secrets():
    role = rendered()["Role"]
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {
        ("networking.istio.io", "virtualservices", "get"),
        ("networking.istio.io", "virtualservices", "list"),
        ("networking.istio.io", "virtualservices", "update"),
        ("networking.istio.io", "destinationrules", "get"),
        ("networking.istio.io", "destinationrules", "list"),
        ("", "services", "get"),
        ("apps", "deployments", "list"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
    assert "*" not in str(role["rules"])
    binding = rendered()["RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "canarykit-reviews",
                                    "namespace": "default"}]


def test_the_cron_job_runs_one_step_at_a_time_and_ends_before_the_next_is_due():
    cron_job = rendered()["CronJob"]
    spec, job = cron_job["spec"], cron_job["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["schedule"] == "*/5 * * * *"
    assert job["backoffLimit"] == 0 and job["ttlSecondsAfterFinished"] > 0
    assert spec["startingDeadlineSeconds"] + job["activeDeadlineSeconds"] <= 300
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "canarykit-reviews"
    (container,) = pod["containers"]
    assert container["args"] == ["rollout", "step", "/etc/canarykit/plan.yaml"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security["allowPrivilegeEscalation"]
    assert set(container["resources"]) == {"requests", "limits"}


def test_every_writable_path_is_a_volume_and_the_plan_is_the_config_map():
    kinds = rendered()
    pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/scratch"]]
    assert volumes[mounts["/scratch/reports"]]["persistentVolumeClaim"]["claimName"] == \
        "canarykit-reports"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert all(value.startswith("/scratch") for key, value in env.items()
               if key not in ("PYTHONDONTWRITEBYTECODE",))
    assert kinds["ConfigMap"]["data"]["plan.yaml"] == CLUSTER_PLAN.read_text()


def test_credentials_come_from_the_named_secret_never_from_arguments():
    pod = rendered()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "reviews-canarykit"}}]
    assert {"name": "credentials", "secret": {"secretName": "reviews-canarykit",
                                              "defaultMode": 0o440}} in pod["volumes"]
    assert "reviews-canarykit" not in " ".join(container["args"])
    without = rendered(secret="")["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "envFrom" not in without["containers"][0]


def test_a_plan_that_cannot_fit_the_schedule_is_refused_naming_what_to_change(tmp_path):
    error = refused(CLUSTER_PLAN, schedule="*/2 * * * *")
    assert error.field == "--schedule"
    assert "analysis.max_duration" in error.problem and "schedule less often" in error.problem
    slow = plan_file(tmp_path, steps=[{"weight": 5, "analysis": {"max_duration": "10m"}}])
    assert "steps[0].analysis.max_duration" in refused(slow).problem
    assert manifests.render(slow, schedule="*/15 * * * *", **RENDER)  # fits every 15 minutes
    repeated = plan_file(tmp_path, steps=[{"weight": 5, "analysis": {"iterations": 5}}])
    assert "times its 5 iterations" in refused(repeated).problem


@pytest.mark.parametrize(("changes", "field"), [
    ({"kubeconfig": "/home/me/.kube/config"}, "kubeconfig"),
    ({"reports": "/var/reports"}, "reports"),
])
def test_a_plan_that_cannot_run_in_a_pod_is_refused(tmp_path, changes, field):
    assert refused(plan_file(tmp_path, **changes)).field == field


def test_release_folders_need_a_volume_and_names_are_checked():
    assert refused(CLUSTER_PLAN, reports_claim="").field == "--reports-claim"
    assert refused(CLUSTER_PLAN, secret="Bad_Name").field == "--secret"
    assert refused(CLUSTER_PLAN, image="two words").field == "--image"


@pytest.mark.parametrize(("folder", "argo"), [("base", False), ("argo", True)])
def test_the_kustomize_bases_in_the_repository_are_the_render_of_the_cluster_plan(
        tmp_path, folder, argo):
    written = manifests.write(manifests.render(CLUSTER_PLAN, **RENDER, argo=argo), tmp_path)
    command = ("canarykit deploy render examples/plans/reviews-cluster.yaml --secret "
               "reviews-canarykit --reports-claim canarykit-reports"
               f"{' --argo' if argo else ''} --output deploy/{folder}")
    for path in written:
        assert (ROOT / "deploy" / folder / path.name).read_text() == path.read_text(), (
            f"deploy/{folder}/{path.name} is stale: {command}")
    assert sorted(p.name for p in (ROOT / "deploy" / folder).iterdir()) == sorted(
        p.name for p in written)


def test_the_cli_writes_a_yaml_stream_or_a_folder_and_exits_2_on_bad_input(tmp_path):
    command = [sys.executable, "-m", "canarykit", "deploy", "render", str(CLUSTER_PLAN),
               "--reports-claim", "canarykit-reports"]
    stream = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert stream.returncode == 0, stream.stderr
    assert [d["kind"] for d in yaml.safe_load_all(stream.stdout)] == [
        "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"]
    bad = subprocess.run([*command, "--schedule", "*/1 * * * *"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--schedule" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_containerfile_builds_a_non_root_image_from_a_pinned_base():
    text = (ROOT / "Containerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=\S+@sha256:\S+$", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert f"--uid {manifests.RUN_AS}" in text
    assert 'ENTRYPOINT ["canarykit"]' in text
    assert "ipykernel install" in text
    for key, value in manifests.SCRATCH_ENV.items():  # the pod and the image agree
        assert f"{key}={value}" in text


def test_rendering_does_not_change_the_plan_objects_it_shares():
    before = copy.deepcopy(manifests.ROLE_RULES)
    rendered()["Role"]["rules"][0]["verbs"].append("delete")
    assert manifests.ROLE_RULES == before


def test_a_plan_with_reports_in_object_storage_needs_no_volume_for_them(tmp_path):
    path = plan_file(tmp_path, reports="s3://releases-bucket/canarykit")
    objects = {o["kind"]: o for o in manifests.render(path, secret="reviews-canarykit")}
    pod = objects["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "persistentVolumeClaim" not in str(pod["volumes"])
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts == {manifests.PLAN_DIR, manifests.SCRATCH, manifests.SECRETS_DIR}
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "reviews-canarykit"}}]
    for obj in objects.values():
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert refused(path).field == "--reports-claim"  # a claim nothing would use


def test_a_folder_for_reports_still_needs_a_claim_and_says_a_url_would_do(tmp_path):
    error = refused(plan_file(tmp_path), reports_claim="")
    assert error.field == "--reports-claim" and "s3://" in error.problem


@pytest.mark.parametrize(("router", "has_istio", "has_routes"), [
    ("istio", True, False), ("gateway-api", False, True), ("", True, True)])
def test_the_role_holds_the_rules_of_the_plans_router(router, has_istio, has_routes):
    """A plan that names its router gets exactly that router's rules; one that leaves it to
    be detected gets both (detection reads both APIs, and either may be the one)."""
    rules = manifests.role_rules(router)
    groups = {group for rule in rules for group in rule["apiGroups"]}
    assert ("networking.istio.io" in groups) == has_istio
    assert ("gateway.networking.k8s.io" in groups) == has_routes
    if has_routes:
        routes = next(r for r in rules if "httproutes" in r["resources"])
        assert routes["verbs"] == ["get", "list", "update"]
    assert not any("secrets" in rule["resources"] for rule in rules)
