"""Fixtures that start real processes (the local Kubernetes API server, Prometheus, Chromium,
the lab), and the `lab` marker on every test that uses one, so `pytest -m "not lab"` runs
the fast part alone."""

import pytest

from tests.apiserver_fixture import apiserver  # noqa: F401
from tests.chromium_fixture import chromium  # noqa: F401
from tests.lab_fixture import shared_lab  # noqa: F401 - one instance for the whole session
from tests.prometheus_fixture import *  # noqa: F401,F403

# Fixtures whose use means the test starts (or shares) a real process.
PROCESS_FIXTURES = {"apiserver", "chromium", "prometheus_url", "lab_state", "fresh_lab", "lab",
                    "shared_lab"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
