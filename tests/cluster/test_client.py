"""The cluster module against the local API server, through the official client only."""

import copy
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

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
from canarykit.core import times
from canarykit.core.errors import BadInput, ClusterError, ConcurrentChangeError
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
        "router": "istio",
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
        "lastPromotion": None,
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


# --- the audit record and the change are inseparable ----------------------------------------


def _raw_records(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_a_change_is_recorded_before_and_after_it_and_verified_against_the_cluster(lab):
    kube, log = lab
    applied = cluster.set_weight(kube, "reviews", 25, audit_log=log)
    raw = _raw_records(log)
    assert [(r.get("type"), r.get("operation") or r.get("result")) for r in raw] == [
        ("intent", "begin_rollout"), ("outcome", "applied"),
        ("intent", "set_canary_weight"), ("outcome", "applied")]
    head = _read(kube)["metadata"]["annotations"][AUDIT_HEAD_ANNOTATION]
    assert head == raw[2]["hash"] == applied.audit_record["hash"]
    assert raw[2]["baseAuditHead"] == raw[0]["hash"]
    assert raw[3]["intent"] == head and raw[3]["resourceVersion"]
    check = cluster.verify_log(kube, log)
    assert check.ok and check.checked == 1 and check.server == kube.server


def test_a_refused_change_records_why_and_is_not_a_change(lab):
    kube, log = lab
    before = _read(kube)
    _other_writer(kube).replace_namespaced_custom_object(
        "networking.istio.io", "v1", "default", "virtualservices", "reviews",
        traffic.set_canary_weight(before, 50).after)
    with pytest.raises(ConcurrentChangeError):
        cluster.apply_change(kube, traffic.set_canary_weight(before, 10), audit_log=log)
    outcome = _raw_records(log)[-1]
    assert (outcome["type"], outcome["result"]) == ("outcome", "conflict")
    assert "changed by someone else" in outcome["error"]
    assert audit.read_records(log) == []
    assert audit.verify_chain(log).ok


KILL_AFTER_PUT = """
import os, signal, sys
from canarykit.cluster import client as cluster

kubeconfig, log, weight, moment = sys.argv[1:]
real = cluster._replace

def replace(kube, body, dry_run):
    if moment == "before" and dry_run:
        os.kill(os.getpid(), signal.SIGKILL)  # the intent is recorded, nothing sent yet
    result = real(kube, body, dry_run)
    if moment == "after" and not dry_run:
        os.kill(os.getpid(), signal.SIGKILL)  # the PUT reached the server, no outcome yet
    return result

cluster._replace = replace
cluster.set_weight(cluster.connect(kubeconfig), "reviews", int(weight), audit_log=log)
"""


def _killed_while_changing(apiserver, log, weight, moment):
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_PUT, str(apiserver.kubeconfig),
                           str(log), str(weight), moment], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_change_killed_after_its_put_is_found_and_settled_by_the_next_change(
    apiserver, lab
):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 10, audit_log=log)

    _killed_while_changing(apiserver, log, 30, "after")

    assert _weights(_read(kube)) == {"v1": 70, "v2": 30}  # the change happened
    dying = _raw_records(log)[-1]
    assert dying["type"] == "intent" and dying["params"]["canary_weight"] == 30
    offline = audit.verify_chain(log)
    assert offline.status == audit.INCOMPLETE and "has no outcome" in offline.problem
    check = cluster.verify_log(kube, log)
    assert check.status == audit.INCOMPLETE
    assert "line 5: the change to VirtualService default/reviews was applied" in check.problem

    cluster.set_weight(kube, "reviews", 40, audit_log=log)

    settled = [r for r in _raw_records(log) if r.get("intent") == dying["hash"]]
    assert [(r["result"], r["reconciled"]) for r in settled] == [("applied", True)]
    assert cluster.verify_log(kube, log).ok


def test_a_change_killed_before_its_put_was_not_applied(apiserver, lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 10, audit_log=log)

    _killed_while_changing(apiserver, log, 30, "before")

    assert _weights(_read(kube)) == {"v1": 90, "v2": 10}
    check = cluster.verify_log(kube, log)
    assert check.status == audit.INCOMPLETE and "still in flight" in check.problem
    later = audit.verify_chain(log, cluster_heads=lambda t: cluster.object_heads(kube, t),
                               server=kube.server, now=times.utc_now() + timedelta(days=1))
    assert later.ok and "was not applied" in later.notes[0]


def test_records_cut_from_the_end_are_found_against_the_cluster(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 20, audit_log=log)
    cluster.set_weight(kube, "reviews", 30, audit_log=log)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:-2]))  # the last change cut off, intent and outcome
    assert audit.verify_chain(log).ok  # the file alone cannot tell
    check = cluster.verify_log(kube, log)
    assert check.status == audit.BROKEN and "which is not in the log" in check.problem


def _rewrite_chain(log, edit):
    """A forger with write access to the file: edit records, recompute every hash and link."""
    prev, out, renamed = audit.GENESIS, [], {}
    for record in _raw_records(log):
        edit(record)
        for link in ("intent", "baseAuditHead"):
            if record.get(link) in renamed:
                record[link] = renamed[record[link]]
        record["prev"] = prev
        old = record.pop("hash")
        record["hash"] = renamed[old] = audit.record_hash(record)
        prev = record["hash"]
        out.append(json.dumps(record, sort_keys=True))
    log.write_text("\n".join(out) + "\n")


def _claim_actor(record):
    record["actor"] = "someone-else"


def test_a_whole_chain_rewrite_is_found_against_the_cluster(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 20, audit_log=log)
    _rewrite_chain(log, _claim_actor)
    assert audit.verify_chain(log).ok
    check = cluster.verify_log(kube, log)
    assert check.status == audit.BROKEN and "not in the log" in check.problem


def test_a_whole_chain_rewrite_is_found_by_the_hmac_without_the_cluster(lab, monkeypatch):
    kube, log = lab
    monkeypatch.setenv(audit.HMAC_KEY_ENV, "an audit key of 32 bytes or so..")
    cluster.set_weight(kube, "reviews", 20, audit_log=log)
    key = audit.hmac_key()
    assert audit.verify_chain(log, key=key).ok
    _rewrite_chain(log, _claim_actor)
    check = audit.verify_chain(log, key=key)
    assert check.status == audit.BROKEN and "HMAC does not match" in check.problem


def test_a_torn_last_line_does_not_block_the_next_change(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 20, audit_log=log)
    with open(log, "ab") as out:
        out.write(b'{"actor": "canarykit-admin", "after": {"http": [{"na')
    assert audit.verify_chain(log).status == audit.INCOMPLETE

    cluster.set_weight(kube, "reviews", 30, audit_log=log)

    assert _weights(_read(kube))["v2"] == 30
    check = cluster.verify_log(kube, log)
    assert check.ok and "not a whole record" in check.notes[0]


def test_changes_on_other_clusters_sharing_the_log_are_left_alone(lab):
    kube, log = lab
    cluster.set_weight(kube, "reviews", 20, audit_log=log)
    elsewhere = replace(kube, server="https://elsewhere.example:6443")
    with audit.locked_log(log) as held:  # another cluster's change, unfinished
        held.append({"type": audit.INTENT, "server": elsewhere.server,
                     "target": "VirtualService default/reviews", "deadline": "2000-01-01T00Z"})
    cluster.set_weight(kube, "reviews", 30, audit_log=log)
    assert len(audit.unfinished(_raw_records(log))) == 1  # not settled from here
    check = cluster.verify_log(kube, log)
    assert check.ok and "1 changes were made on other clusters" in check.notes[0]


# --- no request without a timeout; no lock across one --------------------------------------


class _Hung:
    """A TCP server that accepts connections and never answers, stopped by the test."""

    def __init__(self):
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held, self.stop = [], threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        self.socket.settimeout(0.1)
        while not self.stop.is_set():
            try:
                self.held.append(self.socket.accept()[0])
            except OSError:
                continue

    def close(self):
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.socket.close()


def write_kubeconfig(path, server, token="t0ken"):
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "tester"}}]}))
    return path


@pytest.fixture
def hung(tmp_path):
    server = _Hung()
    yield server, write_kubeconfig(tmp_path / "hung.yaml", server.url)
    server.close()


def test_a_hung_api_server_times_out(hung, monkeypatch):
    _, kubeconfig = hung
    started = time.monotonic()
    with pytest.raises(cluster.ClusterError, match="no answer within 1 s"):
        cluster.connect(kubeconfig=str(kubeconfig), timeout=1)
    monkeypatch.setenv(cluster.KUBE_TIMEOUT_ENV, "0.5")
    with pytest.raises(cluster.ClusterError, match="no answer within 0.5 s"):
        cluster.connect(kubeconfig=str(kubeconfig))
    assert time.monotonic() - started < 6


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon", "1e9"])
def test_a_timeout_that_is_not_a_sensible_number_of_seconds_is_refused(value, monkeypatch):
    with pytest.raises(BadInput, match="--timeout: must be a number of seconds"):
        cluster.request_timeout(value)
    monkeypatch.setenv(cluster.KUBE_TIMEOUT_ENV, value)
    with pytest.raises(BadInput, match="CANARYKIT_KUBE_TIMEOUT: must be a number"):
        cluster.request_timeout()
    assert cluster.request_timeout("2.5") == 2.5


class _StubApi(http.server.BaseHTTPRequestHandler):
    """Just enough of an API server for `set_weight`, whose real (not dry-run) PUTs hang."""

    protocol_version = "HTTP/1.1"
    objects = {"virtualservices": VS, "destinationrules": DR}

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/").split("/")
        if path[-1] == "apis":
            version = {"groupVersion": "networking.istio.io/v1", "version": "v1"}
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": "networking.istio.io", "versions": [version],
                 "preferredVersion": version}]})
        if path[-1] in self.objects:
            return self._send(200, {"items": [self._object(path[-1])]})
        if path[-2] in self.objects:
            return self._send(200, self._object(path[-2]))
        return self._send(404, {"kind": "Status", "code": 404, "message": "not found"})

    def _object(self, plural):
        obj = copy.deepcopy(self.objects[plural])
        obj["metadata"]["resourceVersion"] = "1"
        return obj

    def do_POST(self):  # noqa: N802 (SelfSubjectReview: not served here)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(404, {"kind": "Status", "code": 404, "message": "not found"})

    def do_PUT(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if "dryRun=All" in self.path:
            return self._send(200, json.loads(body))
        self.server.hanging.set()
        self.server.release.wait(60)  # the write never answers

    def log_message(self, *args):
        pass


@pytest.fixture
def stub_api(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubApi)
    server.daemon_threads = True
    server.hanging, server.release = threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server, write_kubeconfig(tmp_path / "stub.yaml", url)
    server.release.set()
    server.shutdown()
    server.server_close()


def test_the_audit_log_is_not_locked_while_a_write_hangs(stub_api, tmp_path):
    server, kubeconfig = stub_api
    log = tmp_path / "audit.jsonl"
    kube = cluster.connect(kubeconfig=str(kubeconfig), timeout=2)
    failure = []

    def change():
        try:
            cluster.set_weight(kube, "reviews", 10, audit_log=log)
        except cluster.ClusterError as exc:
            failure.append(str(exc))

    writer = threading.Thread(target=change)
    writer.start()
    assert server.hanging.wait(10)
    with audit.locked_log(log, wait=0.5) as held:  # another writer gets the log meanwhile
        assert held.records()[-1]["type"] == "intent"
    writer.join(10)
    assert failure and "no answer within 2 s" in failure[0]
    outcome = _raw_records(log)[-1]
    assert (outcome["type"], outcome["result"]) == ("outcome", "unknown")  # it may have landed


# --- secrets and hostile input --------------------------------------------------------------


def test_credentials_in_the_server_url_are_neither_shown_nor_recorded(apiserver, tmp_path):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    loaded = yaml.safe_load(apiserver.kubeconfig.read_text())
    server = loaded["clusters"][0]["cluster"]["server"]
    loaded["clusters"][0]["cluster"]["server"] = server.replace("://", "://bob:hunter2@")
    kubeconfig = tmp_path / "userinfo.yaml"
    kubeconfig.write_text(yaml.safe_dump(loaded))
    kube = cluster.connect(kubeconfig=str(kubeconfig))
    log = tmp_path / "audit.jsonl"
    cluster.set_weight(kube, "reviews", 10, audit_log=log)
    assert kube.server == server
    assert "hunter2" not in json.dumps(cluster.status(kube, "reviews").to_dict())
    assert "hunter2" not in log.read_text() and server in log.read_text()


@pytest.mark.parametrize("content, problem", [
    ("/etc/passwd", "not a YAML mapping"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8 text"),
    ("folder", "is not a valid kubeconfig: a folder"),
    ("/dev/zero", "not a regular file"),
    ("clusters: []\nclusters: []\n", "duplicate key"),
    ("current-context: [a]\ncontexts: []\n", "current-context is not a name"),
    ("clusters: [unclosed\n", "not valid YAML"),
])
def test_a_kubeconfig_that_is_not_one_is_refused_in_one_line(home, tmp_path, content, problem):
    if content == "folder":
        path = tmp_path / "folder"
        path.mkdir()
    elif isinstance(content, str) and content.startswith("/"):
        path = Path(content)
    else:
        path = tmp_path / "kubeconfig"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.monotonic()
    with pytest.raises(BadInput, match=re.escape(problem)) as refused:
        cluster.connect(kubeconfig=str(path))
    assert "\n" not in str(refused.value) and time.monotonic() - started < 5


def test_a_fifo_as_kubeconfig_is_refused_without_waiting(home, tmp_path):
    fifo = tmp_path / "kubeconfig"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match="not a regular file"):
        cluster.connect(kubeconfig=str(fifo))


def test_a_change_whose_dry_run_lost_a_field_it_sent_is_refused_naming_the_field():
    """An older Istio CRD prunes a field it does not know without an error: the write would
    "succeed" without the setting."""
    sent = copy.deepcopy(DR)
    sent["spec"]["trafficPolicy"]["connectionPool"] = {"tcp": {"maxConnections": 5,
                                                               "idleTimeout": "1h"}}
    kept = copy.deepcopy(sent)
    del kept["spec"]["trafficPolicy"]["connectionPool"]["tcp"]["idleTimeout"]
    kept["spec"]["trafficPolicy"]["loadBalancer"]["warmupDurationSecs"] = "0s"  # added: fine
    with pytest.raises(ClusterError, match=r"dropped spec.trafficPolicy.connectionPool.tcp"
                                           r".idleTimeout .*Istio's CRDs"):
        cluster._refuse_dropped_fields(sent, kept)
    cluster._refuse_dropped_fields(sent, sent)
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "reviews", "namespace": "default"},
             "spec": {"rules": [{"name": "primary", "filters": [
                 {"type": "RequestMirror", "requestMirror": {
                     "backendRef": {"name": "reviews-v2"}, "percent": 10}}]}]}}
    kept = copy.deepcopy(route)
    del kept["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"]
    with pytest.raises(ClusterError, match=r"requestMirror.percent .*Gateway API CRDs"):
        cluster._refuse_dropped_fields(route, kept)
