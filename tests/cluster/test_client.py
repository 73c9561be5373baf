"""The cluster module against the local API server, through the official client only."""

import copy
import re
import threading

import pytest
import yaml
from kubernetes import client

from canarykit.cluster import audit
from canarykit.cluster import client as cluster
from canarykit.cluster.state import (
    AUDIT_HEAD_ANNOTATION,
    ROLLOUT_ANNOTATION,
    read_state,
    with_state,
)
from canarykit.core.errors import BadInput, ConcurrentChangeError
from canarykit.mesh import istio, traffic
from tests.apiserver_fixture import seed

REVIEWS = yaml.safe_load_all(
    """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
  labels: {app: reviews}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v1}
  - name: primary
    route:
    - destination: {host: reviews, subset: v1}
      weight: 100
    - destination: {host: reviews, subset: v2}
      weight: 0
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: default
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
"""
)
VS, DR = list(REVIEWS)


@pytest.fixture
def lab(apiserver, tmp_path):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    return cluster.connect(kubeconfig=str(apiserver.kubeconfig)), tmp_path / "audit.jsonl"


def _weights(vs):
    route = vs["spec"]["http"][istio.find_canary_route(vs, "v1", "v2")]
    return {d["destination"]["subset"]: d.get("weight") for d in route["route"]}


def _read(kube, kind="VirtualService", name="reviews"):
    return cluster.get_object(kube, kind, name)


def _records(log):
    return audit.read_records(log) if log.exists() else []


def _other_writer(kube):
    """A second client, as a person with kubectl or a GitOps controller would be."""
    return client.CustomObjectsApi(kube.api)


def test_connect_finds_istio_v1_the_namespace_and_who_we_are(lab):
    kube, _ = lab
    assert kube.istio_version == "v1"
    assert kube.namespace == "default"
    assert kube.actor == "canarykit-admin"


def test_connect_refuses_an_unknown_context_naming_it(apiserver):
    with pytest.raises(BadInput, match="--context.*'nope'"):
        cluster.connect(kubeconfig=str(apiserver.kubeconfig), context="nope")


def test_set_weight_starts_a_rollout_and_audits_every_write(lab):
    kube, log = lab
    applied = cluster.set_weight(kube, "reviews", 25, audit_log=log)
    vs = _read(kube)
    assert _weights(vs) == {"v1": 75, "v2": 25}
    state = read_state(vs)
    assert (state.stable, state.canary) == ("v1", "v2")
    assert state.snapshot["virtualService"] == istio.managed_fields(VS)
    records = audit.read_records(log)
    assert [r["operation"] for r in records] == ["begin_rollout", "set_canary_weight"]
    assert records[-1]["actor"] == "canarykit-admin"
    assert records[-1]["target"] == "VirtualService default/reviews"
    assert vs["metadata"]["annotations"][AUDIT_HEAD_ANNOTATION] == records[-1]["hash"]
    assert applied.audit_record == records[-1]
    assert audit.verify_chain(log, {records[-1]["hash"]}).ok


def test_the_same_weight_twice_writes_nothing_the_second_time(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 25, audit_log=log)
    version = _read(kube)["metadata"]["resourceVersion"]
    again = cluster.set_weight(kube, "reviews", 25, audit_log=log)
    assert not again.change.changed
    assert _read(kube)["metadata"]["resourceVersion"] == version
    assert len(audit.read_records(log)) == 2


def test_dry_run_changes_nothing_and_records_nothing(lab):
    kube, log = lab
    before = _read(kube)
    applied = cluster.set_weight(kube, "reviews", 40, dry_run=True, audit_log=log)
    assert applied.dry_run and _weights(applied.result) == {"v1": 60, "v2": 40}
    after = _read(kube)
    assert after == before
    assert _records(log) == []


def test_bad_weight_is_refused_before_anything_is_written(lab):
    kube, log = lab
    before = _read(kube)
    with pytest.raises(BadInput, match="130"):
        cluster.set_weight(kube, "reviews", 130, audit_log=log)
    with pytest.raises(BadInput, match="v9"):
        cluster.set_weight(kube, "reviews", 10, canary="v9", audit_log=log)
    assert _read(kube) == before
    assert _records(log) == []


def test_an_invalid_change_is_rejected_before_anything_is_written(lab):
    kube, log = lab
    before = _read(kube)
    broken = copy.deepcopy(before)
    broken["spec"]["http"][1]["route"][0]["weight"] = -5
    change = traffic.Change("hand_edit", {}, before, broken)
    with pytest.raises(cluster.InvalidChange, match="weight"):
        cluster.apply_change(kube, change, audit_log=log)
    assert _read(kube) == before
    assert _records(log) == []


def test_a_concurrent_change_to_unmanaged_fields_is_kept_and_ours_reapplied(lab):
    kube, log = lab
    before = _read(kube)
    change = traffic.set_canary_weight(before, 10)
    other = copy.deepcopy(before)
    other["metadata"]["labels"]["team"] = "payments"
    _other_writer(kube).replace_namespaced_custom_object(
        "networking.istio.io", "v1", "default", "virtualservices", "reviews", other
    )
    applied = cluster.apply_change(kube, change, audit_log=log)
    assert applied.attempts == 2
    vs = _read(kube)
    assert _weights(vs) == {"v1": 90, "v2": 10}
    assert vs["metadata"]["labels"]["team"] == "payments"


def test_a_concurrent_change_to_managed_fields_stops_with_a_clear_error(lab):
    kube, log = lab
    before = _read(kube)
    change = traffic.set_canary_weight(before, 10)
    reverted = traffic.set_canary_weight(before, 50).after  # e.g. a GitOps controller
    _other_writer(kube).replace_namespaced_custom_object(
        "networking.istio.io", "v1", "default", "virtualservices", "reviews", reverted
    )
    with pytest.raises(ConcurrentChangeError, match="changed by someone else.*spec.http"):
        cluster.apply_change(kube, change, audit_log=log)
    assert _weights(_read(kube)) == {"v1": 50, "v2": 50}
    assert _records(log) == []


def test_two_writers_racing_lose_no_update(lab):
    kube, log = lab
    before = _read(kube)
    outcomes = []

    def write(weight):
        try:
            cluster.apply_change(kube, traffic.set_canary_weight(before, weight), audit_log=log)
            outcomes.append(("applied", weight))
        except ConcurrentChangeError:
            outcomes.append(("refused", weight))

    threads = [threading.Thread(target=write, args=(w,)) for w in (20, 30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    applied = [w for what, w in outcomes if what == "applied"]
    assert len(applied) == 1, outcomes
    assert _weights(_read(kube))["v2"] == applied[0]
    assert len(audit.read_records(log)) == 1


def test_rollback_restores_the_exact_pre_rollout_managed_fields(lab):
    kube, log = lab
    original_vs, original_dr = _read(kube), _read(kube, "DestinationRule")
    cluster.set_weight(kube, "reviews", 30, audit_log=log)
    cluster.change_virtual_service(
        kube,
        "reviews",
        lambda vs: traffic.add_match_route(
            vs, name="internal", header="x-canary-user", value="true", canary="v2"
        ),
        audit_log=log,
    )
    cluster.change_virtual_service(
        kube, "reviews", lambda vs: traffic.set_mirror(vs, percentage=20), audit_log=log
    )
    dr = cluster.find_destination_rule(kube, "reviews")
    cluster.apply_change(kube, traffic.set_session_affinity(dr, header="session-id"), audit_log=log)
    dr = cluster.find_destination_rule(kube, "reviews")
    cluster.apply_change(kube, traffic.ensure_subset(dr, "v3"), audit_log=log)
    assert istio.managed_fields(_read(kube)) != istio.managed_fields(original_vs)
    assert istio.managed_fields(_read(kube, "DestinationRule")) != istio.managed_fields(original_dr)

    cluster.rollback(kube, "reviews", audit_log=log)

    vs, dr = _read(kube), _read(kube, "DestinationRule")
    assert istio.managed_fields(vs) == istio.managed_fields(original_vs)
    assert istio.managed_fields(dr) == istio.managed_fields(original_dr)
    assert ROLLOUT_ANNOTATION not in vs["metadata"].get("annotations", {})
    assert vs["metadata"]["labels"] == original_vs["metadata"]["labels"]
    assert audit.verify_chain(log).ok
    operations = [r["operation"] for r in audit.read_records(log)]
    assert operations[-3:] == ["rollback", "rollback", "end_rollout"]


def test_a_rollback_killed_half_way_is_finished_by_the_next_one(lab):
    kube, log = lab
    original_dr = _read(kube, "DestinationRule")
    cluster.set_weight(kube, "reviews", 30, audit_log=log)
    dr = cluster.find_destination_rule(kube, "reviews")
    cluster.apply_change(kube, traffic.ensure_subset(dr, "v3"), audit_log=log)
    state = read_state(_read(kube))
    # As if killed after the VirtualService was restored: state kept, DR not yet restored.
    vs = _read(kube)
    restored = traffic.restore_managed_fields(vs, state.snapshot["virtualService"])
    state.phase = "rolling-back"
    half = traffic.Change("rollback", {}, vs, with_state(restored.after, state))
    cluster.apply_change(kube, half, audit_log=log)

    cluster.rollback(kube, "reviews", audit_log=log)

    assert istio.managed_fields(_read(kube, "DestinationRule")) == istio.managed_fields(original_dr)
    assert read_state(_read(kube)) is None


def test_rollback_without_a_rollout_says_there_is_nothing_to_roll_back(lab):
    kube, log = lab
    with pytest.raises(cluster.ClusterError, match="nothing to roll back"):
        cluster.rollback(kube, "reviews", audit_log=log)


def test_a_second_rollout_of_another_canary_is_refused(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 10, audit_log=log)
    with pytest.raises(BadInput, match="already in progress"):
        cluster.begin_rollout(kube, "reviews", canary="v3", audit_log=log)


def test_status_shows_routes_weights_subsets_and_the_rollout(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 5, audit_log=log)
    report = cluster.status(kube, "reviews")
    assert [r.name for r in report.routes] == ["jason", "primary"]
    assert report.routes[1].destinations == [
        cluster.DestinationStatus("v1", 95),
        cluster.DestinationStatus("v2", 5),
    ]
    assert report.routes[0].destinations == [cluster.DestinationStatus("v1", None)]
    assert [s.name for s in report.subsets] == ["v1", "v2"]
    assert (report.rollout.stable, report.rollout.canary) == ("v1", "v2")


def test_status_as_json_has_the_keys_and_values_scripts_read(lab):
    kube, log = lab
    change = cluster.set_weight(kube, "reviews", 5, audit_log=log)
    report = cluster.status(kube, "reviews")
    rollout = report.rollout.to_dict()
    del rollout["snapshot"]
    assert report.to_dict() == {
        "service": "reviews",
        "namespace": "default",
        "server": kube.server,
        "virtualService": "reviews",
        "virtualServiceResourceVersion": change.result["metadata"]["resourceVersion"],
        "destinationRule": "reviews",
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}},
        ],
        "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
        "routes": [
            {"index": 0, "name": "jason", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
             "destinations": [{"subset": "v1", "weight": None}]},
            {"index": 1, "name": "primary", "match": [],
             "destinations": [{"subset": "v1", "weight": 95}, {"subset": "v2", "weight": 5}]},
        ],
        "rollout": rollout,
    }
    assert list(report.to_dict()["rollout"]) == ["stable", "canary", "release", "started_at",
                                                 "step", "phase", "history"]


def test_status_shows_the_route_settings_it_finds(lab):
    kube, log = lab
    vs = cluster.find_virtual_service(kube, "reviews")
    cluster.apply_change(kube, traffic.set_mirror(vs, percentage=20), audit_log=log)
    route = cluster.status(kube, "reviews").to_dict()["routes"][1]
    assert list(route) == ["index", "name", "match", "destinations", "mirror", "mirrorPercentage"]
    assert route["mirror"] == {"host": "reviews", "subset": "v2"}


@pytest.mark.parametrize("host", ["reviews.default.svc.cluster.local", "reviews.default"])
def test_a_service_given_as_a_kubectl_style_host_is_found(lab, host):
    kube, log = lab
    assert cluster.find_virtual_service(kube, host)["metadata"]["name"] == "reviews"
    assert cluster.status(kube, host).destination_rule == "reviews"
    cluster.set_weight(kube, host, 10, audit_log=log)
    assert cluster.status(kube, "reviews").routes[1].destinations[1].weight == 10
    cluster.rollback(kube, host, audit_log=log)
    assert cluster.status(kube, "reviews").rollout is None


def test_a_service_name_that_is_not_a_dns_label_is_refused(lab):
    kube, _ = lab
    with pytest.raises(BadInput, match="SERVICE.*Reviews!"):
        cluster.find_virtual_service(kube, "Reviews!")


# --- finding the kubeconfig as kubectl does -------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME of its own, outside any pod, so ~/.kube/config is the test's to write."""
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return home


def test_an_empty_kubeconfig_variable_means_unset_so_the_home_kubeconfig_is_used(
    apiserver, home, monkeypatch
):
    (home / ".kube" / "config").write_text(apiserver.kubeconfig.read_text())
    monkeypatch.setenv("KUBECONFIG", "")
    assert cluster.connect().server == apiserver.url


def test_a_kubeconfig_path_list_skips_missing_files(apiserver, home, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing.yaml'}:{apiserver.kubeconfig}")
    kube = cluster.connect()
    assert (kube.server, kube.actor) == (apiserver.url, "canarykit-admin")


def test_a_kubeconfig_path_list_is_merged_the_first_current_context_winning(
    apiserver, home, tmp_path, monkeypatch
):
    other = yaml.safe_load(apiserver.kubeconfig.read_text())
    other["current-context"] = "elsewhere"
    other["contexts"] = [{"name": "elsewhere", "context": {"cluster": "nowhere", "user": "x"}}]
    other["clusters"] = [{"name": "nowhere", "cluster": {"server": "https://192.0.2.1:1"}}]
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(other))
    monkeypatch.setenv("KUBECONFIG", f"{apiserver.kubeconfig}:{second}")
    assert cluster.connect().server == apiserver.url


def test_a_kubeconfig_path_list_with_no_existing_file_is_refused(home, tmp_path, monkeypatch):
    listed = f"{tmp_path / 'a.yaml'}:{tmp_path / 'b.yaml'}"
    monkeypatch.setenv("KUBECONFIG", listed)
    with pytest.raises(BadInput, match="KUBECONFIG: none of these kubeconfig files exists"):
        cluster.connect()


@pytest.mark.parametrize("text", ["clusters: [\n  - {name: x", "just a string\n",
                                  "contexts: {name: x}\n"])
def test_a_malformed_kubeconfig_is_refused_naming_its_path(home, tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    named = re.escape(str(path))
    with pytest.raises(BadInput, match=f"--kubeconfig: is not a valid kubeconfig.*{named}"):
        cluster.connect(kubeconfig=str(path))


def test_a_kubeconfig_missing_the_cluster_it_names_is_refused_naming_its_path(
    apiserver, home, tmp_path
):
    loaded = yaml.safe_load(apiserver.kubeconfig.read_text())
    loaded["clusters"] = []
    path = tmp_path / "no-cluster.yaml"
    path.write_text(yaml.safe_dump(loaded))
    named = re.escape(str(path))
    with pytest.raises(BadInput, match=f"--kubeconfig: is not a usable kubeconfig.*{named}"):
        cluster.connect(kubeconfig=str(path))


def test_in_a_pod_an_existing_home_kubeconfig_wins_over_the_in_cluster_config(
    apiserver, home, monkeypatch
):
    (home / ".kube" / "config").write_text(apiserver.kubeconfig.read_text())
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "192.0.2.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert cluster.connect().server == apiserver.url


def test_in_a_pod_without_any_kubeconfig_the_in_cluster_config_is_used(home, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "192.0.2.1")
    assert cluster.kubeconfig_source() is None
    monkeypatch.setenv("KUBECONFIG", "/nowhere/config")
    assert cluster.kubeconfig_source() == ("KUBECONFIG", "/nowhere/config")
