"""A real S3-compatible server for the record-store tests: moto in server mode, started once
per session on a free loopback port and stopped by its PID; each test gets its own bucket and
the AWS environment variables pointing at it (credentials from the environment, as in a pod)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apiserver_fixture import stop_apiserver_process
from tests.prometheus_fixture import free_port

ACCESS_KEY = "AKIACANARYKITTEST"
SECRET_KEY = "canarykit-test-secret-key-0123456789"
_BUCKETS = itertools.count(1)


@dataclass
class S3Server:
    endpoint: str
    process: subprocess.Popen

    def environment(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_S3": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}

    def stop(self) -> None:
        stop_apiserver_process(self.process, timeout=10)  # by its PID, as every fixture


def start_s3(workdir: Path) -> S3Server:
    log_path = workdir / "moto.log"
    for _ in range(3):
        port = free_port()
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        server = S3Server(f"http://127.0.0.1:{port}", process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2):
                    return server
            except OSError:
                time.sleep(0.2)
        server.stop()
    pytest.fail(f"moto did not start: {log_path.read_text()[-2000:]}", pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def bucket(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new, empty bucket, the environment set to reach it; its s3:// URL."""
    import fsspec

    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CANARYKIT_SCRATCH_DIR", str(tmp_path / "scratch"))
    name = f"canarykit-test-{os.getpid()}-{next(_BUCKETS)}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return f"s3://{name}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # a real server process: the slow tier
        if "s3_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.lab)
