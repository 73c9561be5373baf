"""Requests to a busy API server are tried again when that cannot do anything twice.

The local API server is told (POST /debug/faults) to answer the next requests as an
overloaded server does; the cluster module talks to it through the official client only.
"""

import copy
import json
import urllib.request

import pytest

from canarykit.cluster import client as cluster
from canarykit.cluster import retry
from canarykit.core.errors import ClusterError
from canarykit.mesh import istio, traffic
from tests.apiserver_fixture import seed
from tests.cluster.test_client import DR, VS


def _admin_post(server, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        server.url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def inject(server, **fault) -> None:
    _admin_post(server, "/debug/faults", fault)


def served(server, verb: str, resource: str = "virtualservices") -> dict[int, int]:
    """status code -> how many `verb` requests on `resource` the server answered so."""
    request = urllib.request.Request(server.url + "/debug/requests",
                                     headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        counts = json.loads(answer.read())["requests"]
    found: dict[int, int] = {}
    for row in counts:
        if row["verb"] == verb and row["resource"] == resource and not row["dryRun"]:
            found[row["code"]] = found.get(row["code"], 0) + row["count"]
    return found


@pytest.fixture
def kube(apiserver, monkeypatch):
    seed(apiserver, copy.deepcopy(VS), copy.deepcopy(DR))
    pauses: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", pauses.append)  # the pauses, recorded not waited
    connected = cluster.connect(kubeconfig=str(apiserver.kubeconfig), timeout=2)
    connected.pauses = pauses
    return connected


def test_a_read_answered_503_is_tried_again_and_succeeds(apiserver, kube, capsys):
    inject(apiserver, verb="get", resource="virtualservices", code=503, count=2)
    vs = cluster.get_object(kube, "VirtualService", "reviews")
    assert vs["metadata"]["name"] == "reviews"
    assert served(apiserver, "get") == {503: 2, 200: 1}
    assert len(kube.pauses) == 2 and kube.pauses[1] > kube.pauses[0]  # backing off
    err = capsys.readouterr().err
    assert "GET /apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews: " \
           "503 Service Unavailable; trying again" in err
    assert apiserver.url.split("//")[1] not in err  # the path only, never the server's address


def test_retry_after_is_honoured(apiserver, kube):
    inject(apiserver, verb="get", resource="virtualservices", code=429, retryAfter=3)
    cluster.get_object(kube, "VirtualService", "reviews")
    assert kube.pauses == [3.0]


def test_a_read_that_keeps_failing_ends_in_one_error_after_the_last_try(apiserver, kube):
    inject(apiserver, verb="get", resource="virtualservices", code=503, count=10)
    with pytest.raises(ClusterError, match="reading VirtualService default/reviews: 503"):
        cluster.get_object(kube, "VirtualService", "reviews")
    assert served(apiserver, "get") == {503: retry.MAX_ATTEMPTS}


def test_a_read_with_no_answer_in_time_is_tried_again(apiserver, kube):
    inject(apiserver, verb="get", resource="virtualservices", stall=4)  # past the 2 s timeout
    vs = cluster.get_object(kube, "VirtualService", "reviews")
    assert vs["metadata"]["name"] == "reviews"
    assert len(kube.pauses) == 1


def test_a_write_answered_503_is_not_sent_again_even_with_retry_after(apiserver, kube, tmp_path):
    """An etcd timeout answers 503 and the write may still land: only the caller, reading
    the object, can tell."""
    before = cluster.get_object(kube, "VirtualService", "reviews")
    change = traffic.set_canary_weight(before, 30)
    inject(apiserver, verb="update", resource="virtualservices", dryRun=False, code=503,
           retryAfter=1)
    with pytest.raises(ClusterError, match="503"):
        cluster.apply_change(kube, change, audit_log=tmp_path / "audit.jsonl")
    assert served(apiserver, "update") == {503: 1}
    after = cluster.get_object(kube, "VirtualService", "reviews")
    assert istio.managed_fields(after) == istio.managed_fields(before)


def test_a_write_turned_away_with_429_is_sent_again_and_lands_once(apiserver, kube, tmp_path):
    before = cluster.get_object(kube, "VirtualService", "reviews")
    change = traffic.set_canary_weight(before, 30)
    inject(apiserver, verb="update", resource="virtualservices", dryRun=False, code=429,
           retryAfter=1)
    applied = cluster.apply_change(kube, change, audit_log=tmp_path / "audit.jsonl")
    assert served(apiserver, "update") == {429: 1, 200: 1}
    assert applied.result["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]


def test_a_dry_run_answered_502_is_tried_again(apiserver, kube, tmp_path):
    before = cluster.get_object(kube, "VirtualService", "reviews")
    inject(apiserver, verb="update", resource="virtualservices", dryRun=True, code=502)
    cluster.apply_change(kube, traffic.set_canary_weight(before, 30),
                         audit_log=tmp_path / "audit.jsonl")
    assert served(apiserver, "update") == {200: 1}  # the real write, sent once
    assert len(kube.pauses) == 1


def test_a_write_whose_answer_never_came_is_not_sent_again_by_the_transport(
        apiserver, kube, tmp_path):
    """The change landed but its answer was late: the caller finds out, by reading, that its
    own write is there; the transport never re-sends it."""
    before = cluster.get_object(kube, "VirtualService", "reviews")
    inject(apiserver, verb="update", resource="virtualservices", dryRun=False, stall=4)
    with pytest.raises(ClusterError, match="no answer within 2 s"):
        cluster.apply_change(kube, traffic.set_canary_weight(before, 30),
                             audit_log=tmp_path / "audit.jsonl")
    assert sum(served(apiserver, "update").values()) <= 1  # the stalled one, counted when sent
    assert _weights(cluster.get_object(kube, "VirtualService", "reviews")) == [70, 30]


def _weights(vs):
    route = vs["spec"]["http"][istio.find_canary_route(vs, "v1", "v2")]
    return [d.get("weight") for d in route["route"]]
