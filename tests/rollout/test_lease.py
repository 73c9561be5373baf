"""The driver's Lease against the local API server: a write whose answer is lost is not
mistaken for another runner taking the lease over."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes import client

from canarykit.cluster import client as cluster
from canarykit.core.errors import ClusterError
from canarykit.rollout import driver as rollout


def lease_on_server(kube) -> dict:
    return json.loads(client.CoordinationV1Api(kube.api).read_namespaced_lease(
        rollout.lease_name("reviews"), "default", _preload_content=False).data)


def answer_lost(lease: rollout.Lease) -> None:
    """The next write reaches the server, but its answer never comes back (a timeout)."""
    applied = lease.api.replace_namespaced_lease

    def write_then_time_out(*args, **kwargs):
        lease.api.replace_namespaced_lease = applied
        applied(*args, **kwargs)
        raise urllib3.exceptions.ReadTimeoutError(None, None, "Read timed out.")

    lease.api.replace_namespaced_lease = write_then_time_out


def test_a_write_whose_answer_was_lost_keeps_the_lease_and_the_next_write_lands(apiserver):
    kube = cluster.connect(str(apiserver.kubeconfig), None, "default")
    lease, _ = rollout.acquire_lease(kube, "reviews", "runner-a", 60)
    answer_lost(lease)
    with pytest.raises(ClusterError, match="Read timed out"):
        lease.write()  # what the renewal thread sees, and tries again after
    state = rollout.DriverState(release="r1", folder="f", plan_digest="d", started="s")
    lease.write(state)
    assert not lease.lost
    on_server = lease_on_server(kube)
    assert on_server["spec"]["holderIdentity"] == "runner-a"
    assert json.loads(on_server["metadata"]["annotations"][rollout.DRIVER_ANNOTATION])[
        "release"] == "r1"
    lease.release()
    assert "holderIdentity" not in lease_on_server(kube)["spec"]


def test_a_lease_another_runner_took_is_still_lost(apiserver):
    kube = cluster.connect(str(apiserver.kubeconfig), None, "default")
    lease, _ = rollout.acquire_lease(kube, "reviews", "runner-a", 1)
    taken = lease_on_server(kube)
    taken["spec"]["holderIdentity"] = "runner-b"
    client.CoordinationV1Api(kube.api).replace_namespaced_lease(
        rollout.lease_name("reviews"), "default", taken)
    with pytest.raises(rollout.LeaseLost):
        lease.write()
    assert lease.lost and lease_on_server(kube)["spec"]["holderIdentity"] == "runner-b"
