"""A service given as a short name with its namespace, or as an FQDN: the same service."""

from __future__ import annotations

import pytest

from canarykit.analysis import metrics as m
from canarykit.analysis.settings import AnalysisSettings
from canarykit.core import names
from canarykit.core.errors import BadInput
from canarykit.mesh import versions
from canarykit.rollout import plan as plans

STEPS = [{"weight": 10}]


@pytest.mark.parametrize(("given", "namespace", "wanted"), [
    ("reviews", "prod", ("reviews", "prod")),
    ("reviews", None, ("reviews", None)),
    ("reviews.prod", None, ("reviews", "prod")),
    ("reviews.prod.svc", None, ("reviews", "prod")),
    ("reviews.prod.svc.cluster.local", None, ("reviews", "prod")),
    ("reviews.prod.svc.cluster.local.", None, ("reviews", "prod")),
    ("reviews.prod.svc.corp.example", None, ("reviews", "prod")),
    ("reviews.prod.svc.cluster.local", "prod", ("reviews", "prod")),
])
def test_a_service_name_or_fqdn_gives_its_short_name_and_namespace(given, namespace, wanted):
    assert names.split_service("service", given, namespace) == wanted


def test_an_fqdn_contradicting_the_namespace_given_is_one_refusal_naming_both():
    with pytest.raises(BadInput) as refused:
        names.split_service("service", "reviews.prod.svc.cluster.local", "staging")
    assert refused.value.field == "service"
    assert "'prod'" in refused.value.problem and "'staging'" in refused.value.problem


@pytest.mark.parametrize("given", ["api.example.com", "Reviews", "reviews..prod", "", "a_b"])
def test_what_is_not_a_kubernetes_service_is_refused(given):
    with pytest.raises(BadInput):
        names.split_service("service", given, "prod")


def test_the_namespace_of_hosts_inside_and_outside_the_cluster():
    assert names.host_namespace("reviews") is None
    assert names.host_namespace("api.example.com") is None
    assert names.host_namespace("reviews.prod.svc.cluster.local") == "prod"
    assert names.host_domain("reviews.prod.svc.corp.example") == "svc.corp.example"
    assert names.host_domain("reviews.prod") is None


def test_label_keys():
    for key in ("version", "app.kubernetes.io/version", "service.istio.io/canonical-revision"):
        assert names.is_label_key(key)
    for key in ("", "/version", "bad key", "a/b/c", "x/" + "v" * 64):
        assert not names.is_label_key(key)


def test_the_metrics_selector_takes_an_fqdn_and_keeps_the_short_name():
    selector = m.MetricsSelector("reviews.prod.svc.cluster.local", "").validate()
    assert (selector.service, selector.namespace) == ("reviews", "prod")
    assert 'destination_service_name="reviews"' in selector.matchers()
    assert 'destination_workload_namespace="prod"' in selector.matchers()
    fqdn = m.MetricsSelector("reviews.prod.svc.corp.example", "", use_fqdn=True).validate()
    assert 'destination_service="reviews.prod.svc.corp.example"' in fqdn.matchers()
    with pytest.raises(BadInput, match="'prod'.*'shop'"):
        m.MetricsSelector("reviews.prod", "shop").validate()
    with pytest.raises(BadInput, match="namespace"):
        m.MetricsSelector("reviews", "").validate()


def test_a_plan_takes_an_fqdn_and_keeps_the_short_name_for_what_is_named_after_it():
    plan = plans.parse_plan({"service": "reviews.prod.svc.cluster.local", "steps": STEPS})
    assert (plan.service, plan.namespace) == ("reviews", "prod")
    same = plans.parse_plan({"service": "reviews.prod", "namespace": "prod", "steps": STEPS})
    assert (same.service, same.namespace) == ("reviews", "prod")
    short = plans.parse_plan({"service": "reviews", "steps": STEPS})
    assert (short.service, short.namespace) == ("reviews", "default")
    with pytest.raises(BadInput) as refused:
        plans.parse_plan({"service": "reviews.prod.svc.cluster.local", "namespace": "staging",
                          "steps": STEPS})
    assert refused.value.field == "service" and "staging" in refused.value.problem


def test_the_plan_passes_its_version_label_key_to_preflight_and_the_analyses():
    plan = plans.parse_plan({"service": "reviews", "steps": STEPS,
                             "analysis": {"version_label_key": "app.kubernetes.io/version"}})
    phases = plans.expand(plan)
    assert phases[0].parameters["version_label_key"] == "app.kubernetes.io/version"
    analyze = next(p for p in phases if p.runbook == "analyze")
    assert analyze.parameters["version_label_key"] == "app.kubernetes.io/version"
    with pytest.raises(BadInput, match=r"steps\[0\].analysis.version_label_key"):
        plans.parse_plan({"service": "reviews", "steps": [
            {"weight": 10, "analysis": {"version_label_key": "version"}}]})
    with pytest.raises(BadInput, match="version_label_key"):
        plans.parse_plan({"service": "reviews", "steps": STEPS,
                          "analysis": {"version_label_key": "not a key"}})


def _dr(**subsets: dict[str, str]) -> dict:
    return {"kind": "DestinationRule", "metadata": {"name": "reviews", "namespace": "prod"},
            "spec": {"host": "reviews", "subsets": [{"name": name, "labels": labels}
                                                    for name, labels in subsets.items()]}}


def test_a_subsets_version_comes_from_its_labels_by_istios_precedence():
    dr = _dr(stable={"app": "reviews", "version": "v1"},
             canary={"version": "v2", "app.kubernetes.io/version": "2.0",
                     "service.istio.io/canonical-revision": "rev-2"},
             both={"version": "v3", "app.kubernetes.io/version": "3.0"})
    assert versions.subset_version(dr, "stable") == versions.SubsetVersion("stable", "v1",
                                                                           "version")
    assert versions.subset_version(dr, "canary").version == "rev-2"
    assert versions.subset_version(dr, "both").version == "3.0"
    assert versions.subset_version(dr, "canary", "version").version == "v2"


def test_a_subset_without_a_version_label_falls_back_to_its_name_and_says_so():
    dr = _dr(stable={"track": "stable"}, canary={"version": "v2"})
    stable, canary = versions.subset_versions(dr, "stable", "canary")
    assert (stable.version, stable.label) == ("stable", "")
    assert "its name stands in" in stable.describe("stable")
    assert canary.describe("canary") == "canary subset `canary` (version v2)"


def test_subsets_whose_pods_report_the_same_version_are_refused():
    dr = _dr(stable={"version": "v1", "track": "a"}, canary={"version": "v1", "track": "b"})
    with pytest.raises(BadInput, match="same version"):
        versions.subset_versions(dr, "stable", "canary")


def test_the_version_label_key_is_one_setting_with_its_default_defined_once():
    assert AnalysisSettings().version_label_key == ""
    with pytest.raises(BadInput, match="version_label_key"):
        AnalysisSettings(version_label_key="a b").validate()
