"""The main job: a rollout rehearsal of the bundled `reviews` example.

It starts the local Kubernetes API server, loads examples/reviews.yaml into it, and
drives a canary through canarykit exactly as against a real cluster: validate, shift
traffic step by step (each step dry-run first), add an internal-users route, roll back,
and verify the audit chain. (Traffic and metrics arrive with the lab.)
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kubernetes import client

from canarykit import audit, cluster, istio, traffic, validate
from canarykit.errors import CanaryKitError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where the run lands")
    parser.add_argument(
        "--examples", type=Path, default=EXAMPLES, help="folder of example YAML files"
    )


def _start_apiserver(data: Path) -> tuple[subprocess.Popen, Path]:
    kubeconfig = data / "kubeconfig"
    log = open(data / "apiserver.log", "w")  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "canarykit",
            "lab",
            "apiserver",
            "--port",
            "0",
            "--data",
            str(data / "etcd"),
            "--kubeconfig",
            str(kubeconfig),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise CanaryKitError(
                f"the local API server did not start; see {data / 'apiserver.log'}"
            )
        time.sleep(0.05)
    return process, kubeconfig


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _weights(kube: cluster.Cluster, service: str) -> str:
    routes = cluster.status(kube, service)["routes"]
    split = routes[-1]["destinations"]
    return " / ".join(f"{d['subset']} {d['weight']}%" for d in split)


def rehearse(kube: cluster.Cluster, service: str, log: Path) -> None:
    for weight in (10, 25, 50):
        preview = cluster.set_weight(kube, service, weight, dry_run=True, audit_log=log)
        _say(f"dry run of {weight}% accepted by the server (changed: {preview.change.changed})")
        cluster.set_weight(kube, service, weight, audit_log=log)
        _say(f"weights now {_weights(kube, service)}")
    cluster.change_virtual_service(
        kube,
        service,
        lambda vs: traffic.add_match_route(
            vs, name="internal-users", header="x-canary-user", value="true", canary="v2"
        ),
        audit_log=log,
    )
    _say("internal users (x-canary-user: true) now always reach v2")
    for applied in cluster.rollback(kube, service, audit_log=log):
        if applied.change.changed:
            _say(f"rolled back {istio.object_ref(applied.result)}")
    _say(f"weights after rollback {_weights(kube, service)}")


def run(args: argparse.Namespace) -> int:
    files = sorted(args.examples.glob("*.yaml"))
    good = [f for f in files if f.name != "broken.yaml"]
    messages = validate.analyze([obj for f in good for obj in istio.load_file(f)])
    for message in messages:
        _say(message.format())
    if validate.has_errors(messages):
        return 1
    _say(f"{len(good)} example files validate cleanly")

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = args.reports / "demo" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "audit.jsonl"
    with tempfile.TemporaryDirectory(prefix="canarykit-demo-") as tmp:
        process, kubeconfig = _start_apiserver(Path(tmp))
        try:
            kube = cluster.connect(str(kubeconfig))
            _say(f"local Kubernetes API at {kube.server}, Istio API {kube.istio_version}")
            custom = client.CustomObjectsApi(kube.api)
            for obj in istio.load_file(args.examples / "reviews.yaml"):
                if obj.get("kind") in cluster.PLURALS:
                    custom.create_namespaced_custom_object(
                        istio.ISTIO_GROUP,
                        kube.istio_version,
                        kube.namespace,
                        cluster.PLURALS[obj["kind"]],
                        obj,
                    )
            rehearse(kube, "reviews", log)
        finally:
            _stop(process)
    check = audit.verify_chain(log)
    _say(f"audit chain: {'intact' if check.ok else 'BROKEN'}, {check.records} records")
    print(f"audit: {log}")
    return 0 if check.ok else 1
