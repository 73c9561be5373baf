"""Real services' shapes against the local API server: a service named by its FQDN, and
subsets `stable`/`canary` whose pods carry other version labels."""

from __future__ import annotations

import copy

import pytest
import yaml

from canarykit.cli.main import main
from canarykit.core.errors import BadInput, ExitCode
from canarykit.rollout import target as rollout_target
from tests.apiserver_fixture import seed

VS, DR = yaml.safe_load_all("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  http:
  - name: primary
    route:
    - destination: {host: reviews, subset: stable}
      weight: 100
    - destination: {host: reviews, subset: canary}
      weight: 0
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod}
spec:
  host: reviews.prod.svc.cluster.local
  subsets:
  - name: stable
    labels: {app: reviews, version: v1}
  - name: canary
    labels: {app: reviews, version: v2}
""")
FQDN = "reviews.prod.svc.cluster.local"


@pytest.fixture
def kubeconfig(apiserver) -> str:
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return str(apiserver.kubeconfig)


def _connect(kubeconfig: str, service: str = FQDN, namespace: str = ""):
    return rollout_target.connect_target(service=service, namespace=namespace,
                                         stable="stable", canary="canary",
                                         kubeconfig=kubeconfig)


@pytest.mark.parametrize("service", [FQDN, "reviews.prod", "reviews.prod.svc"])
def test_a_runbook_given_an_fqdn_acts_in_its_namespace_on_the_short_name(kubeconfig, service):
    target = _connect(kubeconfig, service)
    assert (target.service, target.namespace) == ("reviews", "prod")
    assert target.cluster.namespace == "prod"
    same = _connect(kubeconfig, "reviews", "prod")
    assert (same.service, same.namespace) == ("reviews", "prod")


def test_a_runbook_given_an_fqdn_and_another_namespace_is_refused_naming_both(kubeconfig):
    with pytest.raises(BadInput) as refused:
        _connect(kubeconfig, FQDN, "default")
    assert refused.value.field == "service"
    assert "'prod'" in refused.value.problem and "'default'" in refused.value.problem


def test_the_subsets_versions_are_read_from_the_destination_rule(kubeconfig):
    target = _connect(kubeconfig)
    stable, canary = rollout_target.subset_versions(target)
    assert (stable.subset, stable.version, stable.label) == ("stable", "v1", "version")
    assert (canary.subset, canary.version, canary.label) == ("canary", "v2", "version")
    selector = rollout_target.metrics_selector(target, (stable, canary))
    assert (selector.stable, selector.canary) == ("v1", "v2")
    assert selector.describe("canary") == "canary subset `canary` (version v2)"
    assert 'destination_service_name="reviews"' in selector.matchers()


def test_the_canonical_revision_label_comes_first_and_a_key_can_be_named(apiserver):
    dr = copy.deepcopy(DR)
    dr["spec"]["subsets"][1]["labels"].update({
        "app.kubernetes.io/version": "2.0.0", "service.istio.io/canonical-revision": "rev-b"})
    dr["spec"]["subsets"][0]["labels"]["app.kubernetes.io/version"] = "1.0.0"
    seed(apiserver, copy.deepcopy(VS), dr)
    target = _connect(str(apiserver.kubeconfig))
    stable, canary = rollout_target.subset_versions(target)
    assert (stable.version, canary.version) == ("1.0.0", "rev-b")
    assert canary.label == "service.istio.io/canonical-revision"
    stable, canary = rollout_target.subset_versions(target, "version")
    assert (stable.version, canary.version) == ("v1", "v2")


def test_status_of_an_fqdn_takes_its_namespace_without_n(kubeconfig, capsys, tmp_path):
    common = ["--kubeconfig", kubeconfig, "--audit-log", str(tmp_path / "audit.jsonl")]
    assert main(["status", FQDN, *common, "--output", "json"]) == ExitCode.OK
    shown = capsys.readouterr().out
    assert '"namespace": "prod"' in shown and '"virtualService": "reviews"' in shown
    assert main(["status", "reviews", "-n", "prod", *common]) == ExitCode.OK
    assert main(["status", FQDN, "-n", "default", *common]) == ExitCode.BAD_INPUT
    error = capsys.readouterr().err
    assert "'prod'" in error and "'default'" in error


def test_weight_and_rollback_of_an_fqdn(kubeconfig, capsys, tmp_path):
    common = ["--kubeconfig", kubeconfig, "--audit-log", str(tmp_path / "audit.jsonl")]
    assert main(["weight", FQDN, "--canary", "20", "--stable-subset", "stable",
                 "--canary-subset", "canary", *common]) == ExitCode.OK
    assert main(["rollback", "reviews.prod", *common]) == ExitCode.OK
    assert "changed" in capsys.readouterr().out


def test_the_metrics_source_of_a_target_reaches_its_queries(kubeconfig):
    """The plan's metrics section (reporter, version label) is what the selector asks for;
    without a version label, the router's (Istio: destination_version)."""
    target = rollout_target.connect_target(
        service=FQDN, stable="stable", canary="canary", kubeconfig=kubeconfig,
        reporter="waypoint", version_label="destination_workload")
    found = rollout_target.subset_versions(target)
    selector = rollout_target.metrics_selector(target, found)
    assert 'reporter="waypoint"' in selector.matchers()
    assert selector.version_label == "destination_workload"
    plain = rollout_target.connect_target(service=FQDN, stable="stable", canary="canary",
                                          kubeconfig=kubeconfig)
    default = rollout_target.metrics_selector(plain, rollout_target.subset_versions(plain))
    assert (default.reporter, default.version_label) == ("destination", "destination_version")
    with pytest.raises(BadInput, match="reporter"):
        rollout_target.connect_target(service=FQDN, stable="stable", canary="canary",
                                      kubeconfig=kubeconfig, reporter="sidecar")


def test_a_cluster_with_its_own_dns_domain_is_found_and_changed(apiserver, tmp_path):
    """hosts written with a custom cluster domain (`svc.corp.example`) are the service."""
    vs, dr = copy.deepcopy(VS), copy.deepcopy(DR)
    vs["spec"]["hosts"] = ["reviews.prod.svc.corp.example"]
    dr["spec"]["host"] = "reviews.prod.svc.corp.example"
    seed(apiserver, vs, dr)
    common = ["--kubeconfig", str(apiserver.kubeconfig), "--audit-log",
              str(tmp_path / "audit.jsonl")]
    assert main(["weight", "reviews.prod.svc.corp.example", *common, "--canary", "20",
                 "--stable-subset", "stable", "--canary-subset", "canary"]) == ExitCode.OK
    assert main(["status", "reviews", "-n", "prod", *common[:2]]) == ExitCode.OK
    assert main(["rollback", "reviews", "-n", "prod", *common]) == ExitCode.OK
