"""The local API server as a real process, for tests that talk to it through the official client.

tests/conftest.py imports `apiserver` from here; `kube_client` and `seed` are plain helpers.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

START_SECONDS = 30


@dataclass
class ApiServerProcess:
    """A running `python -m canarykit.lab.apiserver` and what a client needs to reach it."""

    url: str
    kubeconfig: Path
    token: str
    data_dir: Path
    process: subprocess.Popen
    log: Path


def start_apiserver(work_dir: Path, data_dir: Path | None = None, args: tuple[str, ...] = (),
                    file_size_limit: int | None = None) -> ApiServerProcess:
    """Start the server on a free port and wait until its kubeconfig appears. `args` are more
    of its options (e.g. `--max-body-bytes`); `file_size_limit` caps every file it writes
    (RLIMIT_FSIZE), which is how a disk that fills up looks to it."""
    work_dir.mkdir(parents=True, exist_ok=True)
    data_dir = data_dir or work_dir / "data"
    kubeconfig = work_dir / "kubeconfig"
    kubeconfig.unlink(missing_ok=True)
    log = work_dir / "apiserver.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "canarykit.lab.apiserver", "--port", "0",
             "--data", str(data_dir), "--kubeconfig", str(kubeconfig), *args],
            cwd=work_dir, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=None if file_size_limit is None else _limit_file_size(file_size_limit))
    deadline = time.monotonic() + START_SECONDS
    while not kubeconfig.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_apiserver_process(process)
            raise RuntimeError(f"apiserver did not start:\n{log.read_text()}")
        time.sleep(0.05)
    loaded = yaml.safe_load(kubeconfig.read_text())
    return ApiServerProcess(url=loaded["clusters"][0]["cluster"]["server"], kubeconfig=kubeconfig,
                            token=loaded["users"][0]["user"]["token"], data_dir=data_dir,
                            process=process, log=log)


def _limit_file_size(limit: int):
    def limit_in_child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


def stop_apiserver_process(process: subprocess.Popen, timeout: float = 15) -> int:
    """SIGTERM by PID, wait; kill only if it will not stop. Returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@pytest.fixture
def apiserver(tmp_path: Path):
    """A fresh local API server per test, stopped (by PID) afterwards."""
    server = start_apiserver(tmp_path / "apiserver")
    try:
        yield server
    finally:
        stop_apiserver_process(server.process)


def kube_client(server: ApiServerProcess) -> client.ApiClient:
    """An official-client ApiClient built from the server's kubeconfig, as production does."""
    return config.new_client_from_config(config_file=str(server.kubeconfig))


def _plural(kind: str) -> str:
    return kind.lower() + "s"


def seed(server: ApiServerProcess, *objects: dict) -> list[dict]:
    """Create objects through the official client, creating missing namespaces first."""
    api = kube_client(server)
    core = client.CoreV1Api(api)
    created = []
    try:
        for obj in objects:
            namespace = obj.get("metadata", {}).get("namespace", "default")
            _ensure_namespace(core, namespace)
            group, _, version = obj["apiVersion"].rpartition("/")
            kind = obj["kind"]
            if kind == "Service":
                result = api.sanitize_for_serialization(
                    core.create_namespaced_service(namespace, obj))
            elif kind == "Deployment":
                result = api.sanitize_for_serialization(
                    client.AppsV1Api(api).create_namespaced_deployment(namespace, obj))
            else:
                result = client.CustomObjectsApi(api).create_namespaced_custom_object(
                    group, version, namespace, _plural(kind), obj)
            created.append(result)
    finally:
        api.close()
    return created


def _ensure_namespace(core: client.CoreV1Api, namespace: str) -> None:
    try:
        core.read_namespace(namespace)
    except client.ApiException as err:
        if err.status != 404:
            raise
        core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": namespace}})
